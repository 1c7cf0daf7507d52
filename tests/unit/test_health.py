"""worker.ops.health and ``provisioning health``: beat's heartbeat, each check's verdict, the
CLI's lines, JSON and exit codes. fakeredis stands in for the store; an unreachable store
is a closed loopback port."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import fakeredis
import pytest
import redis
from celery.beat import PersistentScheduler

from worker import beat, bootstrap
from worker.cli import health as cli_health
from worker.cli.console import main
from worker.cli.parser import HEALTH_CHECKS
from worker.emulators import free_port
from worker.keys import Keys
from worker.ops import health, heartbeat
from worker.settings import BackendSettings, Settings
from worker.store.failed import FailedTask, RedisFailedStore

KEYS = Keys("provisioning")


@pytest.fixture
def client() -> Iterator[fakeredis.FakeRedis]:
    fake = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    yield fake
    fake.close()


def broker_ok(settings: Settings) -> str:
    return "connected (stub)"


def check(settings: Settings, client: redis.Redis, *names: str) -> dict[str, health.Check]:
    results = health.run_checks(settings, client, names or health.CHECKS,
                                broker_check=broker_ok)
    return {c.name: c for c in results}


def add_failed_tasks(client: redis.Redis, count: int) -> None:
    store = RedisFailedStore(client, KEYS)
    for number in range(count):
        store.record(FailedTask(
            id=f"entry{number}", task="provisioning.handle_event", event_id=f"e{number}",
            event_type="provision.requested", record_id=None, exception="InvalidEvent",
            message="bad", traceback="", attempts=1, first_failed_at="2026-11-27T10:00:00Z",
            last_failed_at="2026-11-27T10:00:00Z", hostname="test", reasons=("bad",),
            body={"args": [], "kwargs": {}}))


# -- beat's heartbeat ------------------------------------------------------------------------


def test_heartbeat_is_read_back_with_its_age_and_expires(client: fakeredis.FakeRedis) -> None:
    assert heartbeat.read_heartbeat(client, KEYS, 60) is None
    heartbeat.write_heartbeat(client, KEYS, max_age=60)
    beat = heartbeat.read_heartbeat(client, KEYS, 60)
    assert beat is not None
    assert beat.pid > 0
    assert 0 <= beat.age < 5
    assert 59_000 < client.pttl(KEYS.beat_heartbeat) <= 60_000
    client.pexpire(KEYS.beat_heartbeat, 10_000)  # 50 s later
    beat = heartbeat.read_heartbeat(client, KEYS, 60)
    assert beat is not None
    assert 49 < beat.age < 51
    client.delete(KEYS.beat_heartbeat)
    assert heartbeat.read_heartbeat(client, KEYS, 60) is None


def test_a_garbled_heartbeat_still_counts_as_one(client: fakeredis.FakeRedis) -> None:
    client.set(KEYS.beat_heartbeat, "not json", px=30_000)
    beat = heartbeat.read_heartbeat(client, KEYS, 60)
    assert beat is not None
    assert (beat.host, beat.pid) == ("?", 0)


def test_beat_writes_at_most_once_per_interval(client: fakeredis.FakeRedis) -> None:
    settings = Settings(health_beat_max_age=20)
    beats = heartbeat.BeatHeartbeat(KEYS, settings.health_beat_max_age, connect=lambda: client)
    assert beats.interval == 5.0
    assert 4.9 < beats() <= 5.0  # written now; the next one in 5 s
    client.delete(KEYS.beat_heartbeat)
    assert 0 < beats() <= 5.0  # not due: nothing written
    assert heartbeat.read_heartbeat(client, KEYS, 20) is None
    beats._next = time.monotonic() - 1
    beats()
    assert heartbeat.read_heartbeat(client, KEYS, 20) is not None


def test_heartbeat_interval_stays_between_half_a_second_and_ten() -> None:
    assert heartbeat.heartbeat_interval(60) == 10.0
    assert heartbeat.heartbeat_interval(8) == 2.0
    assert heartbeat.heartbeat_interval(1) == 0.5


def test_beat_goes_on_when_redis_is_away(capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(redis_url=f"redis://:s3cret@127.0.0.1:{free_port()}/0",
                        health_timeout=0.5)
    beats = heartbeat.BeatHeartbeat(KEYS, settings.health_beat_max_age,
                                    connect=lambda: bootstrap.redis_client(settings, probe=True))
    assert beats() > 0
    beats.close()
    err = capsys.readouterr().err
    assert "beat_heartbeat_failed" in err
    assert "s3cret" not in err


def test_beat_uses_the_heartbeat_scheduler() -> None:
    from worker.app import celery_config

    assert celery_config(Settings())["beat_scheduler"] == "worker.beat:HeartbeatScheduler"
    assert issubclass(beat.HeartbeatScheduler, PersistentScheduler)


# -- the checks ----------------------------------------------------------------------------


def test_all_checks_pass_on_a_healthy_store(client: fakeredis.FakeRedis) -> None:
    heartbeat.write_heartbeat(client, KEYS, max_age=60)
    add_failed_tasks(client, 2)
    results = check(Settings(), client)
    assert list(results) == ["store", "broker", "beat", "failed_tasks", "circuits", "outbox"]
    assert all(c.ok for c in results.values())
    assert results["failed_tasks"].detail == "2 entries (at most 100)"
    assert results["beat"].detail.startswith("heartbeat ")
    assert results["store"].line().startswith("store        ok    PING ")


def test_no_heartbeat_fails_the_beat_check(client: fakeredis.FakeRedis) -> None:
    results = check(Settings(health_beat_max_age=30), client, "beat")
    assert list(results) == ["beat"]
    assert not results["beat"].ok
    assert results["beat"].detail == ("no heartbeat in the last 30 s "
                                      "(is one celery beat running?)")
    assert results["beat"].line().startswith("beat         FAIL  no heartbeat")


def test_more_failed_tasks_than_the_threshold_fails(client: fakeredis.FakeRedis) -> None:
    add_failed_tasks(client, 3)
    assert check(Settings(health_failed_max=3), client, "failed_tasks")["failed_tasks"].ok
    verdict = check(Settings(health_failed_max=2), client, "failed_tasks")["failed_tasks"]
    assert not verdict.ok
    assert verdict.detail == "3 entries, more than 2 (see: provisioning failed list)"


def test_an_unreachable_store_fails_every_check_that_reads_it() -> None:
    port = free_port()
    settings = Settings(redis_url=f"redis://:s3cret@127.0.0.1:{port}/0", health_timeout=0.5)
    probe = bootstrap.redis_client(settings, probe=True)
    results = {c.name: c for c in health.run_checks(settings, probe)}
    assert not any(c.ok for c in results.values())
    assert results["store"].detail.startswith("ConnectionError: ")
    assert results["store"].detail.endswith(f"(redis://:***@127.0.0.1:{port}/0)")
    assert results["beat"].detail.startswith("store unreachable: ConnectionError")
    assert results["broker"].detail.startswith("OperationalError: ")
    assert all("s3cret" not in c.detail for c in results.values())


def test_a_broken_check_is_a_failing_line(client: fakeredis.FakeRedis) -> None:
    def broken(settings: Settings) -> str:
        raise RuntimeError("kaput")

    [result] = health.run_checks(Settings(), client, ["broker"], broker_check=broken)
    assert (result.ok, result.detail) == (False, "RuntimeError: kaput (redis://localhost:6379/0)")


def test_scrub_removes_every_configured_password() -> None:
    settings = Settings(redis_url="redis://u:p%40ss@h:1/0",
                        broker_url="amqp://guest:brokerpw@mq:5672//",
                        backends=BackendSettings(
                            provisioner_url="https://svc:backendpw@prov.example"))
    text = ("redis://u:p%40ss@h:1/0 failed, p@ss, amqp://guest:brokerpw@mq:5672// "
            "and backendpw")
    scrubbed = health.scrub(text, settings)
    for secret in ("p%40ss", "p@ss", "brokerpw", "backendpw"):
        assert secret not in scrubbed
    assert "redis://u:***@h:1/0" in scrubbed


def test_summary_is_the_json_form() -> None:
    checks = [health.Check("store", True, "PING 1.0 ms", 0.001),
              health.Check("beat", False, "no heartbeat", 0.002)]
    assert health.summary(checks) == {"ok": False, "checks": [
        {"name": "store", "ok": True, "detail": "PING 1.0 ms", "seconds": 0.001},
        {"name": "beat", "ok": False, "detail": "no heartbeat", "seconds": 0.002}]}


# -- the CLI -------------------------------------------------------------------------------


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """PROVISIONING_REDIS_URL at a closed loopback port, with a password in it."""
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    monkeypatch.setenv("PROVISIONING_REDIS_URL", url)
    monkeypatch.setenv("PROVISIONING_HEALTH_TIMEOUT", "0.5")
    bootstrap.reset()
    yield url
    bootstrap.reset()


def test_cli_health_prints_one_line_per_check_and_exits_1(
    cli_env: str, capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["health"]) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == list(HEALTH_CHECKS)
    assert all(line.split()[1] == "FAIL" for line in lines)
    assert [line.split(":")[:3] for line in err.splitlines()] == [
        ["provisioning", " health", f" {name}"] for name in HEALTH_CHECKS]
    assert "s3cret" not in out + err
    assert "Traceback" not in err


def test_cli_health_json_and_selected_checks(
    cli_env: str, capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["health", "--json", "--check", "store", "--check", "failed_tasks"]) == 1
    report: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    assert [c["name"] for c in report["checks"]] == ["store", "failed_tasks"]


def test_cli_health_exits_0_when_every_check_passes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    client: fakeredis.FakeRedis,
) -> None:
    heartbeat.write_heartbeat(client, KEYS, max_age=60)
    real = health.run_checks

    def on_fake_redis(settings: Settings, _: Any, names: Any) -> list[health.Check]:
        return real(settings, client, names, broker_check=broker_ok)

    monkeypatch.setattr(cli_health, "run_checks", on_fake_redis)
    assert main(["health"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 6
    assert err == ""


def test_an_open_circuit_fails_the_circuits_check_until_it_closes(
    client: fakeredis.FakeRedis,
) -> None:
    from worker.store.circuits import CircuitBoard

    board = CircuitBoard(client, KEYS)
    assert check(Settings(), client, "circuits")["circuits"].ok
    board.publish("provisioner", "host-a:11", "open", 20, "HTTP 503", ttl=25)
    board.publish("provisioner", "host-b:12", "half-open", 21, "HTTP 503", ttl=25)
    verdict = check(Settings(), client, "circuits")["circuits"]
    assert not verdict.ok
    assert verdict.detail.startswith("provisioner half-open/open in 2 processes for ")
    assert "HTTP 503" in verdict.detail and "steps calling it wait" in verdict.detail
    board.clear("provisioner", "host-a:11")
    board.clear("provisioner", "host-b:12")
    assert check(Settings(), client, "circuits")["circuits"].ok
    assert client.zcard(KEYS.circuits) == 0


def test_circuits_are_read_from_their_index_and_expired_ones_leave_it(
    client: fakeredis.FakeRedis,
) -> None:
    from worker.store.circuits import CircuitBoard

    board = CircuitBoard(client, KEYS)
    board.publish("gatekeeper", "host-a:1", "open", 5, "timeout", ttl=25)
    board.publish("provisioner", "host-b:2", "open", 5, "HTTP 503", ttl=25)
    client.delete(KEYS.circuit("provisioner", "host-b:2"))  # expired: its key went first
    client.zadd(KEYS.circuits, {"calling_test:host-c:3": time.time() - 1})  # past its expiry
    [entry] = board.read()
    assert (entry.backend, entry.holder, entry.state) == ("gatekeeper", "host-a:1", "open")
    assert client.zrange(KEYS.circuits, 0, -1) == ["gatekeeper:host-a:1",
                                                   "provisioner:host-b:2"]


def test_cli_health_names_unknown_checks_as_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["health", "--check", "disk"])
    assert exit_.value.code == 2
    assert "invalid choice: 'disk'" in capsys.readouterr().err


def test_the_cli_knows_every_check() -> None:
    assert HEALTH_CHECKS == health.CHECKS


def test_a_full_outbox_fails_with_the_mirror_on_and_is_fine_with_it_off(
    client: fakeredis.FakeRedis,
) -> None:
    for shard in (0, 5, 9):
        client.rpush(KEYS.outbox(shard), '{"op": "update"}')
    on = Settings(dataverse_url="https://contoso.crm.dynamics.com", outbox_max_entries=3)
    verdict = check(on, client, "outbox")["outbox"]
    assert not verdict.ok
    assert "3 entries, the cap PROVISIONING_OUTBOX_MAX_ENTRIES=3" in verdict.detail
    assert check(replace(on, outbox_max_entries=4), client, "outbox")["outbox"].ok
    off = check(Settings(outbox_max_entries=3), client, "outbox")["outbox"]
    assert off.ok
    assert off.detail == "mirror off; 3 entries (trimmed to 3 by beat)"
