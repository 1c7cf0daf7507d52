"""The service functions on the in-memory stores with the emulator as backends."""

from __future__ import annotations

import dataclasses
import logging
import time
from datetime import timedelta
from typing import Any

import httpx
import pytest
import structlog

from statemachine import (
    AutomatedCallingStatus,
    BackendStep,
    GateKeeperReason,
    GateKeeperStatus,
    Result,
    StatusReason,
)
from tests.factories import event, new_id, provision
from worker.backends import Backends
from worker.emulators import Emulator
from worker.envelope import Envelope
from worker.logs import configure
from worker.service import Service, submit_events
from worker.settings import Settings


def handle(service: Service, raw: Any) -> Any:
    return service.handle_message(raw, task_id="task-1")


def test_provision_request_runs_both_calls_and_ends_running(
    memory_service: Service, emulator: Emulator
) -> None:
    record_id, channel = new_id(), new_id()
    handle(memory_service, provision(record_id, channel))
    record = memory_service.store.load(record_id)
    assert record is not None
    assert record.status is StatusReason.RUNNING
    assert record.gatekeeper == (GateKeeperStatus.ACTIVE, GateKeeperReason.RUNNING)
    assert record.version == 3
    assert record.provisioning_response
    assert [(r.method, r.idempotency_key) for r in emulator.requests] == [
        ("PUT", f"{record_id}:2:provision_channel"),
        ("PUT", f"{record_id}:2:activate_gate"),
    ]
    history = memory_service.store.history(record_id)
    assert [(e.version, e.trigger, e.task_id) for e in history] == [
        (1, "create", "task-1"), (2, "provision", "task-1"), (3, "provisioned", "task-1")]
    assert history[2].event_id == history[0].event_id  # steps carry the starting event's id


def test_the_same_event_delivered_three_times_is_applied_once(memory_service: Service) -> None:
    record_id = new_id()
    raw = provision(record_id, new_id())
    for _ in range(3):
        handle(memory_service, raw)
    record = memory_service.store.load(record_id)
    assert record is not None
    assert record.version == 3
    assert len(memory_service.store.history(record_id)) == 3


def test_invalid_event_goes_to_failed_store_with_field_paths(memory_service: Service) -> None:
    raw = provision(new_id(), "not-a-uuid", kind="fax")
    result = handle(memory_service, raw)
    [entry] = memory_service.failed.all()
    assert entry.id == result.id
    assert entry.exception == "InvalidEvent"
    assert entry.event_id == raw["id"]
    assert any(r.startswith("data.channel.kind: must be one of") for r in entry.reasons)
    assert any(r.startswith("data.channel.id: must be a UUID") for r in entry.reasons)
    assert entry.body["args"] == [raw]
    assert memory_service.store.pending() == []


def test_a_name_too_long_in_utf16_units_goes_to_failed_store_by_celery(
        memory_service: Service) -> None:
    raw = provision(new_id(), new_id())
    raw["data"]["name"] = "\U00020BB7" * 51  # 51 characters outside the BMP: 102 units
    handle(memory_service, raw)
    [entry] = memory_service.failed.all()
    assert list(entry.reasons) == [
        "data.name: must be at most 100 UTF-16 code units (as Dataverse counts: a character "
        "outside the Basic Multilingual Plane, such as most emoji, counts 2), not 102"]
    assert memory_service.store.pending() == []


def test_garbage_that_is_not_an_object_is_kept_not_crashed_on(memory_service: Service) -> None:
    handle(memory_service, ["not", "an", "event"])
    [entry] = memory_service.failed.all()
    assert entry.reasons == ("an event must be a JSON object, not an array",)


def test_event_for_unknown_record_is_failed_and_can_be_replayed_later(
    memory_service: Service,
) -> None:
    record_id = new_id()
    early = event("deprovision.requested", record_id)
    handle(memory_service, early)
    [entry] = memory_service.failed.all()
    assert entry.exception == "UnknownRecord"
    assert entry.record_id == record_id
    assert memory_service.store.inbox_size(record_id) == 0
    # Once the record exists, the same event (same id) is accepted and applied.
    handle(memory_service, provision(record_id, new_id()))
    handle(memory_service, early)
    record = memory_service.store.load(record_id)
    assert record is not None
    assert record.status is StatusReason.DEPROVISIONED


def test_transient_failures_go_to_error_then_the_retry_sweep_recovers(
    memory_service: Service, emulator: Emulator, kicks: Any
) -> None:
    record_id, channel = new_id(), new_id()
    emulator.script(channel, BackendStep.PROVISION_CHANNEL, [503] * 4)
    handle(memory_service, provision(record_id, channel))
    record = memory_service.store.load(record_id)
    assert record is not None
    assert record.status is StatusReason.ERROR
    assert "provision_channel" in record.exception_details
    assert "503" in (record.error_message or "")
    keys = {r.idempotency_key for r in emulator.requests}
    assert keys == {f"{record_id}:2:provision_channel"}  # one key for all four tries
    assert memory_service.sweep_retries() == [record_id]
    assert memory_service.sweep_retries() == []  # a second sweep queues nothing more
    memory_service.drain(record_id)
    record = memory_service.store.load(record_id)
    assert record is not None
    assert record.status is StatusReason.RUNNING
    assert record.exception_details == ""
    assert record.error_message is None
    assert emulator.requests[-1].idempotency_key == f"{record_id}:4:activate_gate"


def test_permanent_failure_past_the_last_retry_asks_an_operator(
    memory_service: Service, emulator: Emulator
) -> None:
    record_id, channel = new_id(), new_id()
    emulator.fail_permanently(channel, BackendStep.PROVISION_CHANNEL, 400, {"error": "no"})
    handle(memory_service, provision(record_id, channel))
    for _ in range(3):
        memory_service.sweep_retries()
        memory_service.drain(record_id)
    record = memory_service.store.load(record_id)
    assert record is not None
    assert record.status is StatusReason.ERROR
    assert "HTTP 400" in (record.error_message or "")
    entries = [e for e in memory_service.failed.all() if e.task == "provisioning.retry"]
    assert len(entries) == 1
    assert entries[0].record_id == record_id
    assert memory_service.store.due_retries(10**12) == []


class Crash(BaseException):
    """Stands for the process dying in the middle of a backend call."""


def test_a_step_cut_short_by_a_crash_is_run_again_with_the_same_key(
    memory_service: Service, emulator: Emulator
) -> None:
    record_id, channel = new_id(), new_id()
    real = memory_service.backends

    def dying(request: httpx.Request) -> httpx.Response:
        raise Crash

    memory_service.backends = Backends(memory_service.settings.backends, httpx.Client(
        transport=httpx.MockTransport(dying)), sleep=lambda _: None)
    with pytest.raises(Crash):
        handle(memory_service, provision(record_id, channel))
    record = memory_service.store.load(record_id)
    assert record is not None
    assert record.status is StatusReason.PROCESSING
    assert memory_service.store.pending() == [record_id]
    memory_service.backends = real
    memory_service.drain(record_id)
    record = memory_service.store.load(record_id)
    assert record is not None
    assert record.status is StatusReason.RUNNING
    assert emulator.requests[0].idempotency_key == f"{record_id}:2:provision_channel"
    assert memory_service.store.pending() == []


def test_drain_returns_at_once_when_another_worker_holds_the_lease(
    memory_service: Service, kicks: Any
) -> None:
    record_id = new_id()
    # Accepting claims the record for a lease time (its acceptor drains or kicks it).
    memory_service.settings = dataclasses.replace(memory_service.settings, lease_seconds=0.2)
    assert memory_service.store.acquire_lease(record_id, "other", 30)
    handle(memory_service, provision(record_id, new_id()))
    assert memory_service.store.load(record_id) is None
    assert memory_service.store.inbox_size(record_id) == 1
    assert memory_service.recover() == []  # leased: not orphaned
    memory_service.store.renew_lease(record_id, "other", 0.000001)
    time.sleep(0.3)  # past the claim
    assert memory_service.recover() == [record_id]
    assert kicks.records == [record_id]


def test_parent_deleted_fans_out_to_every_record_that_links_it(memory_service: Service) -> None:
    provider = new_id()
    first, second, other = new_id(), new_id(), new_id()
    links = {"msdyn_communicationprovidersettingid": provider}
    handle(memory_service, provision(first, new_id(), links=links))
    handle(memory_service, provision(second, new_id(), kind="voice", links=links))
    handle(memory_service, provision(other, new_id()))
    handle(memory_service, event("parent.deleted", None,
                                 {"table": "msdyn_occommunicationprovidersetting",
                                  "id": provider}))
    for record_id in (first, second):
        record = memory_service.store.load(record_id)
        assert record is not None
        assert record.links["msdyn_communicationprovidersettingid"] is None
        assert memory_service.store.history(record_id)[-1].trigger == "remove_link"
    untouched = memory_service.store.load(other)
    assert untouched is not None
    assert untouched.version == 3


def test_cascade_deletes_the_record_and_keeps_its_history(memory_service: Service) -> None:
    record_id, account = new_id(), new_id()
    handle(memory_service, provision(record_id, account))
    handle(memory_service, event("parent.deleted", None,
                                 {"table": "msdyn_ocwhatsappchannelaccount", "id": account}))
    assert memory_service.store.load(record_id) is None
    assert memory_service.store.list_records() == []
    assert memory_service.store.history(record_id)[-1].trigger == "delete"


def test_calling_test_round_trip_and_timeout_sweep(
    memory_service: Service, emulator: Emulator
) -> None:
    record_id, phone = new_id(), new_id()
    handle(memory_service, provision(record_id, new_id(), kind="voice",
                                     links={"msdyn_phonenumberid": phone}))
    handle(memory_service, event("calling_test.requested", record_id))
    record = memory_service.store.load(record_id)
    assert record is not None
    assert record.calling_status is AutomatedCallingStatus.IN_PROGRESS
    test_id = record.tracking.calling_test_id
    assert test_id in emulator.calling_tests
    handle(memory_service, event("calling_test.completed", record_id,
                                 {"result": "Success", "test_id": "someone-else"}))
    assert memory_service.store.history(record_id)[-1].outcome is Result.STALE
    handle(memory_service, event("calling_test.requested", record_id))  # already running
    assert memory_service.store.history(record_id)[-1].outcome is Result.IGNORED
    # An hour later the sweep times the test out.
    later = record.modified_on + timedelta(hours=1)
    memory_service.now = lambda: later
    assert memory_service.sweep_calling_tests() == [record_id]
    memory_service.drain(record_id)
    record = memory_service.store.load(record_id)
    assert record is not None
    assert record.calling_status is AutomatedCallingStatus.FAILURE
    assert "timed out" in record.exception_details


def test_submit_reports_refused_lines_and_accepts_the_rest(
    memory_service: Service, kicks: Any
) -> None:
    good = provision(new_id(), new_id())
    bad = provision(new_id(), new_id())
    bad["data"]["name"] = "x" * 101
    emoji = provision(new_id(), new_id())
    emoji["data"]["name"] = "\U0001F600" * 51  # 51 characters, 102 UTF-16 code units
    report = submit_events(memory_service, [(1, good), (2, bad), (3, good), (4, emoji)])
    assert report.accepted == 1
    assert report.duplicates == 1
    assert [r.line for r in report.refused] == [2, 4]
    rule = ("must be at most 100 UTF-16 code units (as Dataverse counts: a character outside "
            "the Basic Multilingual Plane, such as most emoji, counts 2)")
    assert report.refused[0].lines() == [f"line 2: data.name: {rule}, not 101"]
    assert report.refused[1].lines() == [f"line 4: data.name: {rule}, not 102"]
    assert kicks.records == [good["subject"]]


def test_every_log_line_of_a_drain_carries_task_event_record_and_trigger(
    memory_service: Service,
) -> None:
    captured: list[dict[str, Any]] = []

    def capture(_: Any, __: str, event_dict: dict[str, Any]) -> Any:
        captured.append(event_dict)
        raise structlog.DropEvent

    structlog.configure(processors=[structlog.contextvars.merge_contextvars, capture],
                        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        handle(memory_service, provision(new_id(), new_id()))
    finally:
        configure(Settings(log_format="console"))
    history = [line for line in captured if line["event"] == "history"]
    assert len(history) == 3
    for line in history:
        assert {"task_id", "event_id", "record_id", "trigger"} <= line.keys()


def test_inbox_envelope_round_trips() -> None:
    envelope = Envelope(kind="event", record_id=new_id(), event_id="e1",
                        event=provision(new_id(), new_id()), accepted_at="now",
                        context={"task_id": "t"})
    assert Envelope.decode(envelope.encode()) == envelope


def test_with_the_mirror_on_every_applied_change_lands_in_the_outbox_in_order(
    memory_service: Service,
) -> None:
    import dataclasses
    import json

    memory_service.settings = dataclasses.replace(
        memory_service.settings, dataverse_url="https://contoso.crm.dynamics.com")
    record_id, account = new_id(), new_id()
    handle(memory_service, provision(record_id, account))
    handle(memory_service, event("parent.deleted", None,
                                 {"table": "msdyn_ocwhatsappchannelaccount", "id": account}))
    entries = [json.loads(e) for e in memory_service.store.outbox_peek(10)]
    assert [(e["op"], e["version"]) for e in entries] == [
        ("create", 2), ("update", 3), ("delete", 4)]
    assert "statuscode" in entries[1]["columns"]
    assert entries[1]["row"]["statuscode"] == int(StatusReason.RUNNING)
    memory_service.store.outbox_ack(2)
    assert memory_service.store.outbox_size() == 1


def test_with_the_mirror_off_nothing_is_written_to_the_outbox(memory_service: Service) -> None:
    handle(memory_service, provision(new_id(), new_id()))
    assert memory_service.store.outbox_size() == 0


def test_a_batch_is_accepted_in_one_go_with_each_event_matched_to_its_records(
    memory_service: Service,
) -> None:
    from statemachine import parse_event

    provider = new_id()
    first, second = new_id(), new_id()
    links = {"msdyn_communicationprovidersettingid": provider}
    handle(memory_service, provision(first, new_id(), links=links))
    handle(memory_service, provision(second, new_id(), links=links))
    batch = [
        parse_event(event("parent.deleted", None, {"table":
                          "msdyn_occommunicationprovidersetting", "id": provider})),
        parse_event(provision(new_id(), new_id())),
        parse_event(event("parent.deleted", None, {"table": "msdyn_ocfbpage",
                                                   "id": new_id()})),  # links nothing
        parse_event(event("deprovision.requested", first)),
    ]
    accepted = memory_service.accept_all(batch)
    assert [sorted(a.record_ids) for a in accepted] == [
        sorted([first, second]), [batch[1].subject], [], [first]]
    assert [a.new for a in accepted] == [True, True, False, True]
    assert [a.new for a in memory_service.accept_all(batch)] == [False] * 4
    assert memory_service.store.inbox_size(first) == 2
