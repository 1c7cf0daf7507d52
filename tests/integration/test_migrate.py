"""``provisioning migrate`` on the v1 store the v1 code wrote (tests/fixtures/v1-store.json,
made by tests/fixtures/make_v1_store.py with main's v1 code): every record, history entry,
inbox event, dedupe key, index entry, retry, outbox entry, failed-task entry, API token and
audit line is accounted for; an interrupted migration resumes; a dry run writes nothing."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from statemachine import HistoryEntry, StatusReason
from statemachine.table import LOOKUP_COLUMNS
from tests.integration.workers import FAST_SETTINGS, CeleryProcess
from worker.errors import ConfigurationError
from worker.http.auth.tokens import RedisTokenStore
from worker.keys import Keys, decode_record
from worker.ops.health import run_checks
from worker.settings import Settings
from worker.store import migrate as migration
from worker.store.failed import FailedTask, RedisFailedStore
from worker.store.migrate import migrate
from worker.store.redis import RedisStateStore

pytestmark = pytest.mark.integration

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "v1-store.json"
P = "provisioning"


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url, decode_responses=True)
    yield connection
    connection.close()


def restore(client: redis.Redis) -> dict[str, Any]:
    """Write the v1 dump; returns it by key."""
    rows = json.loads(FIXTURE.read_text(encoding="utf-8"))
    for row in rows:
        key, kind, value = row["key"], row["type"], row["value"]
        if kind == "hash":
            client.hset(key, mapping=value)
        elif kind == "list":
            client.rpush(key, *value)
        elif kind == "set":
            client.sadd(key, *value)
        elif kind == "zset":
            client.zadd(key, dict(value))
        else:
            client.set(key, value)
    return {row["key"]: row["value"] for row in rows}


def dump(client: redis.Redis) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in sorted(client.scan_iter(count=1000)):
        kind = client.type(key)
        out[key] = (kind, client.dump(key))
    return out


def v1_ids(v1: dict[str, Any], kind: str) -> dict[str, Any]:
    head = f"{P}:{kind}:"
    return {key[len(head):]: value for key, value in v1.items() if key.startswith(head)}


def check_nothing_lost(client: redis.Redis, v1: dict[str, Any]) -> None:
    keys = Keys(P)
    store = RedisStateStore(client, keys=keys)
    store.ensure_format()  # stamped format 2 with 16 shards: workers may start
    failed = RedisFailedStore(client, keys)
    records = {rid: decode_record(v["json"]) for rid, v in v1_ids(v1, "record").items()}
    for rid, record in records.items():
        assert store.load(rid) == record
    histories = v1_ids(v1, "history")
    assert histories
    for rid, rows in histories.items():
        assert store.history(rid) == [HistoryEntry.from_json(json.loads(r)) for r in rows]
    for rid, items in v1_ids(v1, "inbox").items():
        assert [(i.event_id, json.loads(i.payload)) for i in store.heads([rid], 100)[0]] == [
            (eid, json.loads(payload)) for eid, payload in map(json.loads, items)]
    for rid, keys_applied in v1_ids(v1, "applied").items():
        assert all(store.is_applied(rid, key) for key in keys_applied), rid
    for rid, accepted in v1_ids(v1, "accepted").items():
        for event_id in accepted:  # refused: still in the dedupe window
            assert not store.accept(rid, event_id, "{}", now=1.0), (rid, event_id)
    assert sorted(store.pending()) == sorted(m for m, _ in v1[f"{P}:pending"])
    assert store.due_retries(1e12) == sorted(
        ((m, s) for m, s in v1[f"{P}:retries"]), key=lambda row: (row[1], row[0]))
    listed = [r.id for r in store.list_records()]
    assert listed == sorted(v1[f"{P}:idx:all"])
    for status in StatusReason:
        assert [r.id for r in store.list_records(status=status)] == sorted(
            v1.get(f"{P}:idx:status:{int(status)}", []))
    for kind in ("whatsapp", "facebook", "teams", "line", "voice"):
        assert [r.id for r in store.list_records(kind=kind)] == sorted(
            v1.get(f"{P}:idx:kind:{kind}", []))
    assert [r.id for r in store.list_records(testing=True)] == sorted(
        v1[f"{P}:idx:calling:inprogress"])
    links = [(key, value) for key, value in v1.items() if key.startswith(f"{P}:idx:link:")]
    assert links
    for key, members in links:
        column, value = key.split(":")[3:5]
        assert column in LOOKUP_COLUMNS
        assert store.records_linking(column, value) == sorted(members)
    # The cascade-deleted record: a tombstone dated by its delete entry, history kept.
    deleted = [rid for rid, rows in histories.items() if rid not in records]
    assert deleted
    for rid in deleted:
        last = HistoryEntry.from_json(json.loads(histories[rid][-1]))
        assert last.trigger == "delete"
        assert store.deletion(rid).deleted_at == int(last.at.timestamp())
    # The outbox: every entry once, each record's in commit order.
    got: list[str] = []
    while batch := store.outbox_peek(7):
        for entry in batch:
            got.append(entry)
            store.outbox_ack(1)
    assert sorted(got) == sorted(v1[f"{P}:outbox"])
    for rid in records:
        mine = [e for e in v1[f"{P}:outbox"] if json.loads(e)["record_id"] == rid]
        assert [e for e in got if json.loads(e)["record_id"] == rid] == mine
    expected_failed = [FailedTask.from_json(json.loads(v1[f"{P}:failed:{entry_id}"]))
                       for entry_id, _ in v1[f"{P}:failed"]]
    assert failed.all() == expected_failed
    assert failed.audit() == [json.loads(line) for line in v1[f"{P}:audit"]]
    # The API tokens: each entry under its {api} name, the secret's digest unchanged.
    tokens = RedisTokenStore(client, keys).entries()
    assert [(t.name, t.token_id, t.digest) for t in tokens] == sorted(
        (name, token_id, v1[f"{P}:api:token:{token_id}"]["hash"])
        for name, token_id in v1[f"{P}:api:tokens"].items())
    assert tokens
    # No v1 key is left (audit, deliveries and the mirror's keys keep their names).
    left = [key for key in client.scan_iter(match=f"{P}:*")
            if not key.startswith(f"{P}:{{") and key not in (f"{P}:audit", f"{P}:meta")]
    assert left == []


def test_a_v1_store_migrates_with_nothing_lost(client: redis.Redis) -> None:
    v1 = restore(client)
    with pytest.raises(ConfigurationError, match="format 1"):
        RedisStateStore(client, keys=Keys(P)).ensure_format()
    report = migrate(client, Keys(P))
    assert report.records == len({key.split(":")[2] for key in v1 if key.split(":")[1] in
                                  ("record", "history", "inbox", "accepted", "applied")})
    assert report.history_entries == sum(len(rows) for rows in v1_ids(v1, "history").values())
    assert report.outbox_entries == len(v1[f"{P}:outbox"])
    assert report.failed_entries == len(v1[f"{P}:failed"])
    assert report.audit_lines == len(v1[f"{P}:audit"])
    assert report.api_tokens == len(v1[f"{P}:api:tokens"])
    assert report.deleted_records == 1
    assert report.problems == []
    check_nothing_lost(client, v1)
    assert migrate(client, Keys(P)).already_v2


def test_an_interrupted_migration_resumes(client: redis.Redis,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    v1 = restore(client)
    moved: list[str] = []
    real = migration._move_record

    def stop_after_four(*args: Any, **kwargs: Any) -> None:
        if len(moved) == 4:
            raise KeyboardInterrupt
        moved.append(args[3])
        real(*args, **kwargs)

    monkeypatch.setattr(migration, "_move_record", stop_after_four)
    with pytest.raises(KeyboardInterrupt):
        migrate(client, Keys(P))
    monkeypatch.undo()
    with pytest.raises(ConfigurationError, match="format 1"):
        RedisStateStore(client, keys=Keys(P)).ensure_format()  # workers still refuse
    report = migrate(client, Keys(P))
    assert report.records == len(v1_ids(v1, "history")) + 1 - 4  # + the inbox-only record
    check_nothing_lost(client, v1)


def test_a_dry_run_writes_nothing(client: redis.Redis) -> None:
    restore(client)
    before = dump(client)
    report = migrate(client, Keys(P), dry_run=True)
    assert report.records > 0 and report.dry_run
    assert dump(client) == before


def test_migrate_refuses_while_workers_hold_leases(client: redis.Redis) -> None:
    restore(client)
    client.set(f"{P}:lease:6f1c0000-0000-4000-8000-000000000001", "host:1", px=30000)
    with pytest.raises(ConfigurationError, match="stop every worker"):
        migrate(client, Keys(P))


def test_the_cli_migrates(client: redis.Redis, redis_url: str,
                          monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> None:
    from worker import bootstrap
    from worker.cli import main

    v1 = restore(client)
    monkeypatch.setenv("PROVISIONING_REDIS_URL", redis_url)
    bootstrap.reset()
    try:
        assert main(["migrate", "--dry-run", "--json"]) == 0
        dry = json.loads(capsys.readouterr().out)
        assert dry["dry_run"] and dry["records"] == 10
        assert main(["migrate"]) == 0
        assert "moved 10 records (1 deleted)" in capsys.readouterr().out
        check_nothing_lost(client, v1)
    finally:
        bootstrap.reset()
        # main logs warnings only from then on; later tests read info lines.
        from worker.logs import configure
        from worker.settings import Settings

        configure(Settings(log_format="console", log_level="INFO"))


def test_a_worker_refuses_an_unmigrated_store_at_start(
        client: redis.Redis, redis_url: str, tmp_path: Path) -> None:
    """A v1 store stops a worker at start (exit 2, ``store_refused`` naming the migrate
    command), and health's store check fails with the same reason, instead of a worker
    that runs with every drain failing."""
    restore(client)
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("PROVISIONING_")}
    env.update(FAST_SETTINGS)
    env.update({"PROVISIONING_REDIS_URL": redis_url, "PROVISIONING_BROKER_URL": redis_url})
    process = CeleryProcess("refused", ["worker", "--pool", "solo", "--without-gossip",
                                        "--without-mingle", "--loglevel", "WARNING"],
                            env, tmp_path / "worker.log")
    try:
        assert process.process.wait(timeout=60) == 2, process.tail()
    finally:
        process.stop()
    log = process.log.read_text(encoding="utf-8")
    assert "store_refused" in log and "provisioning migrate" in log, log
    assert not client.exists(f"{P}:meta")  # nothing stamped, nothing written

    settings = Settings.from_env({"PROVISIONING_REDIS_URL": redis_url})
    checks = {check.name: check for check in run_checks(
        settings, client, ["store", "failed_tasks"])}
    assert not checks["store"].ok and "provisioning migrate" in checks["store"].detail
    assert "unreachable" not in checks["failed_tasks"].detail  # it was reached
