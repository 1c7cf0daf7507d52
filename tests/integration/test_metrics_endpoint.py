"""A real worker's Prometheus endpoint, ``provisioning health`` against real processes, and
the password of the Redis URL kept out of every log line and output (docs/deploy.md).

The worker and beat reach Redis as an ACL user with a password, so the password is in every
URL they are given.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.factories import new_id, provision
from tests.integration.workers import Cluster, running_cluster
from worker.emulators import Emulator, free_port

pytestmark = pytest.mark.integration

PASSWORD = "Pr0v-s3cret-Passw0rd"
USER = "provisioning-metrics-test"


@pytest.fixture
def password_url(redis_url: str) -> Iterator[str]:
    """``redis_url`` as an ACL user with a password (the default user stays as it was)."""
    admin = redis.Redis.from_url(redis_url)
    admin.acl_setuser(USER, enabled=True, reset=True, passwords=[f"+{PASSWORD}"],
                      keys=["*"], channels=["*"], categories=["+@all"])
    parts = urlsplit(redis_url)
    try:
        yield urlunsplit(parts._replace(netloc=f"{USER}:{PASSWORD}@{parts.netloc}"))
    finally:
        admin.acl_deluser(USER)
        admin.close()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the endpoint: (name, sorted labels) -> value."""
    reply = httpx.get(url, timeout=10)
    reply.raise_for_status()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(reply.text)
        for sample in family.samples
    }


def health(cluster: Cluster, *args: str) -> tuple[int, dict[str, bool], str]:
    done = cluster.provisioning("health", "--json", *args)
    report = json.loads(done.stdout)
    return done.returncode, {c["name"]: c["ok"] for c in report["checks"]}, done.stderr


def test_endpoint_health_and_logs_of_a_real_worker_and_beat(
    password_url: str, tmp_path: Path, request: pytest.FixtureRequest,
) -> None:
    port = free_port()
    settings = {
        "PROVISIONING_METRICS_PORT": str(port),
        "PROVISIONING_METRICS_ADDRESS": "127.0.0.1",
        "PROVISIONING_METRICS_DIR": str(tmp_path / "metrics"),
        "PROVISIONING_HEALTH_BEAT_MAX_AGE": "3",
        "PROVISIONING_HEALTH_FAILED_MAX": "0",
        "PROVISIONING_LOG_LEVEL": "INFO",
    }
    base = f"http://127.0.0.1:{port}"
    with running_cluster(password_url, tmp_path, request, emulator=Emulator(),
                         settings=settings) as cluster:
        worker = cluster.start_worker(concurrency=2)
        beat = cluster.start_beat()
        cluster.wait_for(lambda: _get(f"{base}/healthz") == 200, "/healthz to answer 200")

        records = [new_id() for _ in range(20)]
        report = cluster.submit([provision(r, new_id()) for r in records])
        assert report.accepted == len(records)
        for record_id in records:
            cluster.wait_status(record_id, "Running")
        cluster.wait_for(cluster.settled, "no queued work")

        samples = scrape(f"{base}/metrics")
        events = (("outcome", "applied"), ("type", "provision.requested"))
        assert samples[("provisioning_events_total", events)] == 40  # create + provision
        step = (("outcome", "applied"), ("type", "step.provision"))
        assert samples[("provisioning_events_total", step)] == 20
        for call in ("provision_channel", "activate_gate"):
            assert samples[("provisioning_backend_call_seconds_count", (("step", call),))] == 20
            assert samples[("provisioning_backend_tries_total", (("step", call),))] == 20
        assert samples[("provisioning_transition_seconds_count",
                        (("trigger", "provision"),))] == 20
        running = (("status", "Running"), ("statuscode", "192350003"))
        assert samples[("provisioning_records", running)] == 20
        assert samples[("provisioning_failed_tasks", ())] == 0
        assert samples[("provisioning_store_up", ())] == 1
        cluster.wait_for(lambda: ("provisioning_beat_heartbeat_age_seconds", ())
                         in scrape(f"{base}/metrics"), "beat's heartbeat in the metrics")

        code, checks, _ = health(cluster)
        assert (code, checks) == (0, dict.fromkeys(("store", "broker", "beat",
                                                    "failed_tasks", "circuits",
                                                    "outbox"), True))
        for backend in ("provisioner", "gatekeeper", "calling_test"):  # all closed
            assert samples[("provisioning_backend_circuit_state",
                            (("backend", backend),))] == 0

        # A message that fails validation: one failed-task entry, counted and checked.
        cluster.send({"specversion": "1.0", "type": "provision.requested"})
        cluster.wait_for(lambda: len(cluster.failed()) == 1, "the failed-task entry")
        samples = scrape(f"{base}/metrics")
        assert samples[("provisioning_failed_tasks", ())] == 1
        failure = (("exception", "InvalidEvent"), ("task", "provisioning.handle_event"))
        assert samples[("provisioning_task_failures_total", failure)] == 1
        code, checks, stderr = health(cluster)
        assert code == 1
        assert checks == {"store": True, "broker": True, "beat": True, "failed_tasks": False,
                          "circuits": True, "outbox": True}
        assert stderr.splitlines() == [
            "provisioning: health: failed_tasks: 1 entry, more than 0 "
            "(see: provisioning failed list)"]

        # beat stopped: its heartbeat expires within PROVISIONING_HEALTH_BEAT_MAX_AGE.
        beat.stop()
        deadline = time.monotonic() + 10
        while (checks := health(cluster, "--check", "beat")[1]) != {"beat": False}:
            assert time.monotonic() < deadline, "beat's heartbeat outlived beat"
            time.sleep(0.5)
        worker.stop()

        logs = cluster.logs(lines=10_000)
        assert "worker_settings" in logs  # the startup line with every setting, redacted
        assert f"{USER}:***@" in logs
        assert PASSWORD not in logs
        for args in (("health",), ("list",), ("failed", "list")):
            done = cluster.provisioning(*args)
            assert PASSWORD not in done.stdout + done.stderr


def _get(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.TransportError:
        return 0


def test_an_unreachable_store_is_a_scrape_not_an_error(tmp_path: Path) -> None:
    """The endpoint keeps answering with provisioning_store_up 0 while Redis is away."""
    from worker import bootstrap
    from worker.ops.metrics import MetricsEndpoint, StoreCollector, prepare, release
    from worker.settings import Settings

    closed = free_port()
    settings = Settings(redis_url=f"redis://:{PASSWORD}@127.0.0.1:{closed}/0",
                        metrics_port=free_port(), metrics_dir=str(tmp_path / "m"),
                        health_timeout=0.5)
    monkeypatch = pytest.MonkeyPatch()
    try:
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "m"))
        from prometheus_client import values

        monkeypatch.setattr(values, "ValueClass", values.ValueClass)
        endpoint = MetricsEndpoint(settings, prepare(settings), StoreCollector(
            settings, bootstrap.redis_client(settings, probe=True))).start()
        try:
            samples = scrape(f"http://127.0.0.1:{endpoint.port}/metrics")
            assert samples == {("provisioning_store_up", ()): 0.0}
            assert _get(f"http://127.0.0.1:{endpoint.port}/healthz") == 503  # never ticked
            endpoint.tick()
            assert _get(f"http://127.0.0.1:{endpoint.port}/healthz") == 200
        finally:
            endpoint.stop()
            release()
    finally:
        monkeypatch.undo()

