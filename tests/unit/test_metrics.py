"""worker.ops.metrics: the observer's samples in multiprocess mode, the scrape-time store gauges,
the /healthz and /metrics WSGI app. No servers: the service runs on the in-memory twin or
on fakeredis, and the WSGI app is called directly."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import httpx
import pytest
from prometheus_client import CollectorRegistry, multiprocess, values
from prometheus_client.parser import text_string_to_metric_families

from statemachine import BackendStep
from tests.factories import provision
from worker import bootstrap
from worker.backends import Backends
from worker.emulators import Emulator
from worker.keys import Keys
from worker.ops import metrics
from worker.ops.heartbeat import write_heartbeat
from worker.service import Service, submit_events
from worker.settings import BackendSettings, Settings
from worker.store.failed import MemoryFailedStore, RedisFailedStore
from worker.store.memory import MemoryStateStore
from worker.store.redis import RedisStateStore

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

SETTINGS = Settings(
    backends=BackendSettings(
        provisioner_url="http://backends.test", gatekeeper_url="http://backends.test",
        calling_test_url="http://backends.test", backoff_base=0.0, backoff_cap=0.0,
        max_tries=3),
    retry_base_seconds=0.0, retry_cap_seconds=0.0, max_retries=2,
)


@pytest.fixture
def metrics_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """metrics.prepare() on a directory of this test; everything it changed is restored."""
    directory = tmp_path / "metrics"
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)
    monkeypatch.setattr(metrics, "_metrics", None)
    metrics.prepare(Settings(metrics_dir=str(directory)))
    try:
        yield directory
    finally:
        metrics.release()


def collected(directory: Path) -> Samples:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in registry.collect() for s in family.samples}


def service_with(observer: metrics.PrometheusObserver, emulator: Emulator) -> Service:
    client = httpx.Client(transport=emulator.transport())
    backends = Backends(SETTINGS.backends, client, sleep=lambda _: None)
    return Service(SETTINGS, MemoryStateStore(), MemoryFailedStore(), backends,
                   observer=observer)




def drain_all(service: Service, events: list[dict[str, Any]]) -> None:
    report = submit_events(service, enumerate(events, start=1))
    assert not report.refused
    for record_id in dict.fromkeys(e["subject"] for e in events):
        service.drain(record_id)


# -- the observer --------------------------------------------------------------------------


def test_applied_events_steps_and_backend_calls_are_counted(metrics_dir: Path) -> None:
    service = service_with(metrics.PrometheusObserver(), Emulator(seed=1))
    drain_all(service, [provision(str(uuid.uuid4()), str(uuid.uuid4())) for _ in range(3)])

    samples = collected(metrics_dir)
    applied = (("outcome", "applied"), ("type", "provision.requested"))
    assert samples[("provisioning_events_total", applied)] == 6  # create + provision
    step = (("outcome", "applied"), ("type", "step.provision"))
    assert samples[("provisioning_events_total", step)] == 3
    assert samples[("provisioning_transition_seconds_count", (("trigger", "provision"),))] == 3
    for call in ("provision_channel", "activate_gate"):
        assert samples[("provisioning_backend_call_seconds_count", (("step", call),))] == 3
        assert samples[("provisioning_backend_tries_total", (("step", call),))] == 3
    assert not any(name == "provisioning_backend_failures_total" for name, _ in samples)


def test_failures_retries_and_failed_tasks_are_counted_by_class(metrics_dir: Path) -> None:
    emulator = Emulator(seed=1)
    channel = str(uuid.uuid4())
    emulator.script(channel, BackendStep.PROVISION_CHANNEL, [503, 503, 503])
    service = service_with(metrics.PrometheusObserver(), emulator)
    record_id = str(uuid.uuid4())
    drain_all(service, [provision(record_id, channel, kind="teams")])
    service.handle_message({"specversion": "1.0"}, drain=False)  # fails validation

    samples = collected(metrics_dir)
    failure = (("error_class", "HTTP 503"), ("step", "provision_channel"))
    assert samples[("provisioning_backend_failures_total", failure)] == 1
    assert samples[("provisioning_backend_tries_total", (("step", "provision_channel"),))] == 3
    assert samples[("provisioning_retries_scheduled_total", (("attempt", "1"),))] == 1
    failed = (("outcome", "applied"), ("type", "step.provision"))
    assert samples[("provisioning_events_total", failed)] == 1  # the `fail` transition
    invalid = (("exception", "InvalidEvent"), ("task", "provisioning.handle_event"))
    assert samples[("provisioning_task_failures_total", invalid)] == 1


def test_every_outcome_is_a_label_value(metrics_dir: Path) -> None:
    """A duplicate delivery and a rejection are counted under their own outcome."""
    service = service_with(metrics.PrometheusObserver(), Emulator(seed=1))
    record_id = str(uuid.uuid4())
    drain_all(service, [provision(record_id, str(uuid.uuid4()))])
    gate = {"specversion": "1.0", "id": "evt-gate", "source": "tests",
            "type": "gatekeeper.reported", "subject": record_id,
            "data": {"status": "Inactive", "reason": "Deprovisioned"}}
    drain_all(service, [gate])
    outcomes = {dict(labels)["outcome"] for name, labels in collected(metrics_dir)
                if name == "provisioning_events_total"}
    assert outcomes == {"applied", "rejected"}


def test_samples_of_several_processes_are_summed(metrics_dir: Path) -> None:
    """What prefork needs: a child process's counts land in the same sums."""
    metrics.PrometheusObserver().task_failed("provisioning.handle_event", "InvalidEvent")
    child = textwrap.dedent("""
        from worker.ops import metrics
        metrics.PrometheusObserver().task_failed("provisioning.handle_event", "InvalidEvent")
    """)
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", child], env=env, check=True,
                   cwd=Path(__file__).parents[2], timeout=60)
    labels = (("exception", "InvalidEvent"), ("task", "provisioning.handle_event"))
    assert collected(metrics_dir)[("provisioning_task_failures_total", labels)] == 2
    assert len(list(metrics_dir.glob("counter_*.db"))) == 2
    metrics.process_exited(12345)  # no live gauges of that pid: nothing to remove, no error


def test_a_failing_metric_never_fails_the_work(metrics_dir: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    observer = metrics.PrometheusObserver()

    def broken(*_: object, **__: object) -> None:
        raise OSError("No space left on device")

    monkeypatch.setattr(observer.metrics.retries, "labels", broken)
    observer.retry_scheduled(1)
    assert "metrics_failed" in capsys.readouterr().err


def test_observer_only_in_a_worker_that_serves_metrics(metrics_dir: Path) -> None:
    assert isinstance(metrics.observer(Settings()), metrics.PrometheusObserver)
    assert metrics.observer(Settings(metrics_port=0)) is None
    metrics.release()
    assert metrics.observer(Settings()) is None  # the CLI: never prepared


def test_prepare_empties_the_directory_and_release_keeps_a_configured_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "unused")
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)
    stale = tmp_path / "counter_1.db"
    stale.write_bytes(b"old run")
    assert metrics.prepare(Settings(metrics_dir=str(tmp_path))) == str(tmp_path)
    assert not stale.exists()
    metrics.release()
    assert tmp_path.is_dir()
    temporary = Path(metrics.prepare(Settings()))
    assert temporary.is_dir()
    metrics.release()
    assert not temporary.exists()


# -- read at scrape time ---------------------------------------------------------------------


@pytest.fixture
def redis_service() -> Iterator[Service]:
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    keys = Keys("provisioning")
    http = httpx.Client(transport=Emulator(seed=1).transport())
    backends = Backends(SETTINGS.backends, http, sleep=lambda _: None)
    yield Service(SETTINGS, RedisStateStore(client, keys=keys), RedisFailedStore(client, keys),
                  backends)
    client.close()


def test_store_gauges_count_records_by_status_and_failed_tasks(redis_service: Service) -> None:
    emulator_channel = str(uuid.uuid4())
    drain_all(redis_service, [provision(str(uuid.uuid4()), str(uuid.uuid4())),
                              provision(str(uuid.uuid4()), emulator_channel)])
    redis_service.handle_message({"specversion": "1.0"}, drain=False)
    client = redis_service.store.client  # type: ignore[attr-defined]
    write_heartbeat(client, Keys("provisioning"), max_age=60)

    collector = metrics.StoreCollector(SETTINGS, client)
    families = {f.name: f for f in collector.collect()}
    records = {s.labels["status"]: s.value for s in families["provisioning_records"].samples}
    assert records == {"Draft": 0, "Processing": 0, "Running": 2, "Error": 0,
                       "Deprovisioning": 0, "Deprovisioned": 0}
    assert families["provisioning_failed_tasks"].samples[0].value == 1
    assert families["provisioning_store_up"].samples[0].value == 1
    age = families["provisioning_beat_heartbeat_age_seconds"].samples[0].value
    assert 0 <= age < 5


def backlog_gauges(collector: metrics.StoreCollector) -> dict[str, float]:
    names = {"provisioning_pending_records", "provisioning_inbox_oldest_age_seconds",
             "provisioning_mirror_outbox_entries", "provisioning_mirror_lag_seconds"}
    return {f.name: f.samples[0].value for f in collector.collect() if f.name in names}


def test_backlog_gauges_age_the_oldest_waiting_record_and_the_mirror_outbox() -> None:
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    settings = dataclasses.replace(SETTINGS, dataverse_url="https://contoso.crm.dynamics.com")
    backends = Backends(settings.backends, httpx.Client(transport=Emulator(seed=1).transport()),
                        sleep=lambda _: None)
    service = Service(settings, RedisStateStore(client), RedisFailedStore(client, Keys()),
                      backends)
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    accepted_at = time.time()
    report = submit_events(service, enumerate(
        [provision(first, str(uuid.uuid4())), provision(second, str(uuid.uuid4()))], start=1))
    assert not report.refused
    # Accepted, not drained: both wait; the mirror has nothing yet.
    later = metrics.StoreCollector(settings, client, clock=lambda: accepted_at + 100)
    gauges = backlog_gauges(later)
    assert gauges["provisioning_pending_records"] == 2
    assert 99 <= gauges["provisioning_inbox_oldest_age_seconds"] <= 101
    assert (gauges["provisioning_mirror_outbox_entries"],
            gauges["provisioning_mirror_lag_seconds"]) == (0, 0)

    committed_at = time.time()
    service.drain(first)  # two commits (create+provision, the step): an entry each
    gauges = backlog_gauges(later)
    assert gauges["provisioning_pending_records"] == 1
    assert gauges["provisioning_mirror_outbox_entries"] == 2
    lag = gauges["provisioning_mirror_lag_seconds"]
    assert accepted_at + 100 - time.time() - 1 <= lag <= accepted_at + 100 - committed_at + 1
    # The scraping host's clock behind the committing one: no negative ages.
    behind = metrics.StoreCollector(settings, client, clock=lambda: accepted_at - 100)
    gauges = backlog_gauges(behind)
    assert (gauges["provisioning_inbox_oldest_age_seconds"],
            gauges["provisioning_mirror_lag_seconds"]) == (0, 0)


def test_an_idle_store_has_no_backlog_and_an_unreadable_outbox_head_no_lag() -> None:
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    collector = metrics.StoreCollector(SETTINGS, client)
    assert backlog_gauges(collector) == {
        "provisioning_pending_records": 0, "provisioning_inbox_oldest_age_seconds": 0,
        "provisioning_mirror_outbox_entries": 0, "provisioning_mirror_lag_seconds": 0}
    client.rpush(Keys().outbox(3), "not json")
    gauges = backlog_gauges(collector)
    assert gauges["provisioning_mirror_outbox_entries"] == 1
    assert "provisioning_mirror_lag_seconds" not in gauges


def test_an_unreachable_store_scrapes_as_store_up_zero(tmp_path: Path) -> None:
    from worker.emulators import free_port

    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", health_timeout=0.5)
    collector = metrics.StoreCollector(settings, bootstrap.redis_client(settings, probe=True))
    families = list(collector.collect())
    collector.close()
    assert [(f.name, f.samples[0].value) for f in families] == [("provisioning_store_up", 0)]


# -- the WSGI app -----------------------------------------------------------------------------


def call(app: metrics.MetricsEndpoint, path: str) -> tuple[str, str]:
    replies: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        replies.append(status)

    body = b"".join(app({"PATH_INFO": path, "REQUEST_METHOD": "GET", "QUERY_STRING": ""},
                        start_response))
    return replies[0], body.decode()


def test_healthz_follows_the_event_loop(metrics_dir: Path) -> None:
    settings = Settings()
    endpoint = metrics.MetricsEndpoint(settings, str(metrics_dir), metrics.StoreCollector(
        settings, bootstrap.redis_client(settings, probe=True)))
    try:
        assert call(endpoint, "/healthz")[0].startswith("503")  # before the first tick
        endpoint.tick()
        status, text = call(endpoint, "/healthz")
        assert status == "200 OK"
        assert text.startswith("ok")
        assert endpoint.last_tick is not None
        endpoint.last_tick = time.monotonic() - metrics.LIVENESS_MAX_AGE - 1
        status, text = call(endpoint, "/healthz")
        assert status.startswith("503")
        assert text.startswith("stalled")
    finally:
        endpoint.stop()


def test_metrics_serves_every_family(metrics_dir: Path, redis_service: Service) -> None:
    emulator = Emulator(seed=1)
    channel = str(uuid.uuid4())
    emulator.script(channel, BackendStep.PROVISION_CHANNEL, [503, 503, 503])
    service = service_with(metrics.PrometheusObserver(), emulator)
    drain_all(service, [provision(str(uuid.uuid4()), channel)])
    service.handle_message({"specversion": "1.0"}, drain=False)
    client = redis_service.store.client  # type: ignore[attr-defined]
    write_heartbeat(client, Keys("provisioning"), max_age=60)
    store = metrics.StoreCollector(SETTINGS, client)
    endpoint = metrics.MetricsEndpoint(SETTINGS, str(metrics_dir), store)

    status, text = call(endpoint, "/metrics")
    assert status == "200 OK"
    names = {f.name for f in text_string_to_metric_families(text)}
    # A counter's family is named without its _total suffix.
    expected = {name.removesuffix("_total") for name in metrics.COUNTERS}
    assert expected | set(metrics.HISTOGRAMS) | set(metrics.GAUGES) == names
    endpoint.stop()


def test_the_endpoint_is_not_started_when_its_port_is_taken(
    metrics_dir: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = Settings(metrics_port=port)
        assert metrics.serve(settings, bootstrap.redis_client(settings, probe=True)) is None
    assert "metrics_endpoint_unavailable" in capsys.readouterr().err


def test_serve_needs_prepare() -> None:
    metrics.release()
    with pytest.raises(RuntimeError, match="prepare"):
        metrics.serve(Settings(), bootstrap.redis_client(Settings(), probe=True))


def test_a_killed_workers_temporary_directory_is_removed_by_the_next_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "unused")
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True, timeout=60)
    orphan = tmp_path / f"{metrics.TEMPORARY_PREFIX}{gone.stdout.strip()}-abc"
    living = tmp_path / f"{metrics.TEMPORARY_PREFIX}1-abc"  # pid 1 is always alive
    other = tmp_path / f"{metrics.TEMPORARY_PREFIX}not-a-pid"
    for path in (orphan, living, other):
        path.mkdir()
    mine = Path(metrics.prepare(Settings()))
    try:
        assert mine.parent == tmp_path
        assert not orphan.exists()
        assert living.exists()
        assert other.exists()
    finally:
        metrics.release()


# -- the worker bootstep (worker/app.py), driven by hand ------------------------------------


class FakeTimer:
    """What a bootstep sees of the worker's timer: call_repeatedly, and cancel."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, Any]] = []
        self.cancelled = 0

    def call_repeatedly(self, interval: float, function: Any, priority: int = 0) -> Any:
        self.calls.append((interval, function))
        return self

    def cancel(self) -> None:
        self.cancelled += 1


def test_the_bootstep_prepares_serves_ticks_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    from types import SimpleNamespace

    from worker import app, bootstrap
    from worker.emulators import free_port

    settings = Settings(metrics_port=free_port(), health_timeout=0.5,
                        redis_url=f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.setattr(bootstrap, "current_settings", lambda: settings)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "unused")
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)
    parent = SimpleNamespace(timer=FakeTimer())

    step = app.Metrics(parent)
    assert step.enabled
    assert metrics.enabled()
    step.start(parent)
    [(interval, tick)] = parent.timer.calls
    assert interval == metrics.LIVENESS_TICK
    base = f"http://127.0.0.1:{settings.metrics_port}"
    assert httpx.get(f"{base}/healthz", timeout=5).status_code == 503
    tick()
    assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
    assert "provisioning_store_up 0.0" in httpx.get(f"{base}/metrics", timeout=5).text
    app._process_gone(pid=12345)
    app._log_settings(sender="celery@test")
    step.terminate(parent)
    assert parent.timer.cancelled == 1
    assert not metrics.enabled()
    assert list(tmp_path.iterdir()) == []  # the temporary directory is gone
    assert "worker_settings" in capsys.readouterr().err

    off = Settings(metrics_port=0)
    monkeypatch.setattr(bootstrap, "current_settings", lambda: off)
    assert not app.Metrics(parent).enabled

