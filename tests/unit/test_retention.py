"""Beat's retention sweep (worker/store/retention.py) and what ``history`` says about it."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from statemachine import format_time
from tests.factories import run_cli_on
from tests.store_v2_contract import Wall
from worker.cli import main
from worker.cli.render import describe_deletion
from worker.service import Service
from worker.settings import Settings
from worker.store.failed import MemoryFailedStore
from worker.store.memory import MemoryStateStore
from worker.store.retention import outbox_full, sweep_retention

DAY = 86400.0


def provision(record_id: str, channel: str) -> dict[str, Any]:
    return {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "t",
            "type": "provision.requested", "subject": record_id,
            "data": {"name": "Contoso", "channel": {"kind": "whatsapp", "id": channel}}}


def cascade(channel: str) -> dict[str, Any]:
    return {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "t",
            "type": "parent.deleted",
            "data": {"table": "msdyn_ocwhatsappchannelaccount", "id": channel}}


@pytest.fixture
def wall() -> Wall:
    return Wall()


@pytest.fixture
def service(memory_service: Service, wall: Wall) -> Service:
    memory_service.store = MemoryStateStore(wall=wall)
    return memory_service


def test_a_deleted_record_goes_after_the_retention_and_history_says_when(
    service: Service, wall: Wall, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_cli_on(monkeypatch, service)
    kept, gone, channel = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    service.handle_message(provision(kept, str(uuid.uuid4())))
    service.handle_message(provision(gone, channel))
    service.handle_message(cascade(channel))
    deleted_at = wall()
    assert main(["history", gone]) == 0
    out = capsys.readouterr().out
    purge_at = format_time(datetime.fromtimestamp(deleted_at + 30 * DAY, UTC))
    assert f"its history will be purged after {purge_at}" in out
    assert main(["history", gone, "--json"]) == 0
    captured = capsys.readouterr()
    assert [e["trigger"] for e in json.loads(captured.out)][-1] == "delete"
    assert "will be purged after" in captured.err

    settings = service.settings
    assert sweep_retention(settings, service.store, service.failed,
                           now=wall() + 29 * DAY).purged == []
    wall.advance(30 * DAY + 1)
    report = sweep_retention(settings, service.store, service.failed, now=wall())
    assert report.purged == [gone]
    assert service.store.history(kept)
    assert main(["history", gone]) == 1
    err = capsys.readouterr().err
    assert f"record {gone} has no history (the record was deleted and its history was " \
           "purged at" in err


def test_audit_lines_past_retention_or_the_cap_go(service: Service) -> None:
    failed = service.failed
    assert isinstance(failed, MemoryFailedStore)
    now = datetime(2026, 11, 27, tzinfo=UTC)
    for days in (400, 200, 10, 1):
        failed.append_audit({"at": format_time(now - timedelta(days=days)), "days": days})
    settings = replace(service.settings, audit_retention_seconds=365 * DAY,
                       audit_max_entries=2)
    report = sweep_retention(settings, service.store, failed, now=now.timestamp())
    assert report.audit_trimmed == 2
    assert [line["days"] for line in failed.audit()] == [10, 1]


def test_the_outbox_is_capped_only_when_the_mirror_is_off(service: Service) -> None:
    store = service.store
    assert isinstance(store, MemoryStateStore)
    store._data.outbox.extend(json.dumps({"n": n}) for n in range(5))
    on = replace(service.settings, dataverse_url="https://contoso.crm.dynamics.com",
                 outbox_max_entries=3)
    assert sweep_retention(on, store, service.failed).outbox_trimmed == 0
    assert store.outbox_size() == 5
    assert outbox_full(on, store.outbox_size())
    from worker.dataverse.status import format_status, mirror_status

    status = mirror_status(store, None, None, datetime.now(UTC), outbox_max=3)
    assert status["outbox"]["full"] and status["outbox"]["max_entries"] == 3
    assert "5 entries waiting, FULL (cap 3)" in format_status(status)
    off = replace(on, dataverse_url=None)
    assert sweep_retention(off, store, service.failed).outbox_trimmed == 2
    assert [json.loads(e)["n"] for e in store.outbox_peek(10)] == [2, 3, 4]


def test_describe_deletion() -> None:
    assert describe_deletion(None, None, DAY) is None
    assert describe_deletion(0.0, None, DAY) == (
        "the record was deleted at 1970-01-01T00:00:00Z; its history will be purged after "
        "1970-01-02T00:00:00Z")
    assert describe_deletion(None, DAY, DAY) == (
        "the record was deleted and its history was purged at 1970-01-02T00:00:00Z")


def test_the_retention_sweep_is_on_beats_schedule() -> None:
    from worker.app import celery_config

    schedule = celery_config(Settings())["beat_schedule"]
    assert schedule["retention"]["task"] == "provisioning.sweep_retention"
