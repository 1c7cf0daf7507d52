"""How each event (SPEC §3) changes a record: one handler per event type, each firing the
machines of ``statemachine.machines`` through a ``Change`` and returning its ``Outcome``.
``apply`` has already refused what no event may do (a Deprovisioned record, a duplicate).
"""

from __future__ import annotations

from dataclasses import replace

from statemachine.effects import BackendStep, CancelRetry, DeleteRecord, ScheduleRetry, StepKind
from statemachine.events import (
    CallingTestCompleted,
    Event,
    GateKeeperReported,
    ParentDeleted,
    ProvisionRequested,
)
from statemachine.history import Result
from statemachine.machines import CALLING_MACHINE, GateKeeper, Trigger
from statemachine.outcome import Change, Outcome
from statemachine.record import ProvisioningState, Tracking
from statemachine.steps import (
    PHONE_NUMBER,
    finish_test,
    fire_gate,
    fire_lifecycle,
    gate_of,
    kept_trace,
    run_step,
    start_step,
)
from statemachine.table import (
    CHANNEL_LOOKUP,
    ERROR_MESSAGE_MAX,
    EXCEPTION_DETAILS_MAX,
    LOOKUP_BY_PARENT,
    LOOKUP_COLUMNS,
    AutomatedCallingStatus,
    DeleteRule,
    StatusReason,
)
from statemachine.text import truncate

__all__ = [
    "calling_completed",
    "deprovision",
    "gatekeeper_report",
    "parent_deleted",
    "provision",
    "request_test",
]


def provision(change: Change, data: ProvisionRequested) -> Outcome:
    record = change.record
    links = dict(record.links) if record else dict.fromkeys(LOOKUP_COLUMNS)
    links.update(data.links)
    links[CHANNEL_LOOKUP[data.kind]] = data.channel_id
    if record is None:
        assert isinstance(change.command, Event) and change.command.subject is not None
        change.create(ProvisioningState(
            id=change.command.subject, name=data.name, status=StatusReason.DRAFT,
            created_on=change.now, modified_on=change.now, version=1, links=links,
            tracking=Tracking(channel_kind=data.kind),
        ), f"created for {data.kind.value} channel {data.channel_id}")
        record = change.record
        assert record is not None
    elif record.tracking.channel_kind not in (None, data.kind):
        return change.nothing(
            Result.REJECTED, Trigger.PROVISION,
            f"data.channel.kind: the record is a {record.tracking.channel_kind} channel, "
            f"not {data.kind.value}",
        )
    if record.status is StatusReason.PROCESSING:
        return change.nothing(Result.IGNORED, Trigger.PROVISION, "the record is already Processing")
    target = fire_lifecycle(change, Trigger.PROVISION)
    if target is None:
        return change.nothing(Result.REJECTED, Trigger.PROVISION,
                              f"provision is not allowed from {record.status.label}")
    tracking = replace(start_step(change, StepKind.PROVISION), channel_kind=data.kind,
                       retry_attempt=0, failed_call=None)
    was_error = record.status is StatusReason.ERROR
    change.apply(Trigger.PROVISION, f"provisioning {data.kind.value} channel {data.channel_id}",
                 status=target, name=data.name, links=links, tracking=tracking)
    if was_error:
        change.effects.append(CancelRetry(record.id))
    run_step(change, StepKind.PROVISION)
    return change.done()


def deprovision(change: Change) -> Outcome:
    record = change.record
    assert record is not None
    if record.status is StatusReason.DEPROVISIONING:
        return change.nothing(Result.IGNORED, Trigger.DEPROVISION,
                              "the record is already Deprovisioning")
    target = fire_lifecycle(change, Trigger.DEPROVISION)
    if target is None:  # pragma: no cover - every other state may deprovision
        return change.nothing(Result.REJECTED, Trigger.DEPROVISION,
                              f"deprovision is not allowed from {record.status.label}")
    tracking = replace(start_step(change, StepKind.DEPROVISION), retry_attempt=0,
                       failed_call=None)
    change.apply(Trigger.DEPROVISION, "deprovisioning requested", status=target,
                 tracking=tracking)
    change.effects.append(CancelRetry(record.id))
    run_step(change, StepKind.DEPROVISION)
    return change.done()


def gatekeeper_report(change: Change, data: GateKeeperReported) -> Outcome:
    record = change.record
    assert record is not None
    gate = gate_of(record)
    said = f"GateKeeper reported {data.status.label}/{data.reason.label}"
    if data.details:
        said += f": {data.details}"
    if data.reason.name == "ERROR":
        if record.status is StatusReason.RUNNING:
            details = truncate(said, EXCEPTION_DETAILS_MAX)
            attempt = record.tracking.retry_attempt + 1
            change.apply(
                Trigger.REPORT_ERROR, said, status=StatusReason.ERROR,
                exception_details=details,
                error_message=truncate("gatekeeper reported Error", ERROR_MESSAGE_MAX),
                tracking=replace(record.tracking, retry_attempt=attempt, failed_call="gatekeeper",
                                 step_trace=kept_trace(record.tracking, change.trace)),
                **fire_gate(record, Trigger.REPORT_ERROR),
            )
            change.effects.append(ScheduleRetry(record.id, attempt))
            return change.done()
        if gate is GateKeeper.INACTIVE_ERROR:
            return change.nothing(Result.IGNORED, "report_error",
                                  "the GateKeeper is already Inactive/Error")
        return change.nothing(Result.REJECTED, "report_error",
                              f"a GateKeeper error applies to a Running record, "
                              f"not {record.status.label}")
    if data.reason.name == "RUNNING":
        if record.status is StatusReason.RUNNING:
            return change.nothing(Result.IGNORED, Trigger.RECOVER,
                                  "the record is already Running with its gate Active")
        gates_fault = record.tracking.failed_call in ("gatekeeper",
                                                      BackendStep.ACTIVATE_GATE.value)
        if (record.status is StatusReason.ERROR and gate is GateKeeper.INACTIVE_ERROR
                and gates_fault):
            change.apply(
                Trigger.RECOVER, said, status=StatusReason.RUNNING, exception_details="",
                error_message=None,
                tracking=replace(record.tracking, retry_attempt=0, failed_call=None,
                                 step_trace=kept_trace(record.tracking)),
                **fire_gate(record, Trigger.RECOVER),
            )
            change.effects.append(CancelRetry(record.id))
            return change.done()
        return change.nothing(Result.REJECTED, Trigger.RECOVER,
                              "a GateKeeper recovery applies to an Error record whose "
                              f"failure was the GateKeeper's (record is {record.status.label}, "
                              f"gate {gate.value})")
    # (Inactive, Deprovisioned): only meaningful while the record is being deprovisioned.
    deprovisioning = record.status is StatusReason.DEPROVISIONING
    if deprovisioning and gate is not GateKeeper.INACTIVE_DEPROVISIONED:
        change.apply(Trigger.CLOSE_GATE, said, **fire_gate(record, Trigger.CLOSE_GATE))
        return change.done()
    if gate is GateKeeper.INACTIVE_DEPROVISIONED:
        return change.nothing(Result.IGNORED, Trigger.CLOSE_GATE,
                              "the gate is already Inactive/Deprovisioned")
    return change.nothing(Result.REJECTED, Trigger.CLOSE_GATE,
                          f"a gate deprovisioned report applies to a Deprovisioning record, "
                          f"not {record.status.label}")


def request_test(change: Change) -> Outcome:
    record = change.record
    assert record is not None
    if record.status is not StatusReason.RUNNING:
        return change.nothing(Result.REJECTED, Trigger.REQUEST_TEST,
                              f"a calling test needs a Running record, not {record.status.label}")
    if record.links.get(PHONE_NUMBER) is None:
        return change.nothing(Result.REJECTED, Trigger.REQUEST_TEST,
                              "a calling test needs a linked phone number (msdyn_phonenumberid)")
    if record.calling_status is AutomatedCallingStatus.IN_PROGRESS:
        return change.nothing(Result.IGNORED, Trigger.REQUEST_TEST,
                              "a calling test is already InProgress")
    target = CALLING_MACHINE.fire(record.calling_status, Trigger.REQUEST_TEST)
    assert target is not None
    tracking = replace(start_step(change, StepKind.CALLING_TEST), calling_test_id=None,
                       calling_test_version=record.version + 1,
                       calling_test_started_at=change.now)
    change.apply(Trigger.REQUEST_TEST, "calling test requested", calling_status=target,
                 tracking=tracking)
    run_step(change, StepKind.CALLING_TEST)
    return change.done()


def calling_completed(change: Change, data: CallingTestCompleted) -> Outcome:
    record = change.record
    assert record is not None
    trigger = Trigger.TEST_PASSED if data.result is AutomatedCallingStatus.SUCCESS \
        else Trigger.TEST_FAILED
    if record.calling_status is not AutomatedCallingStatus.IN_PROGRESS:
        return change.nothing(Result.REJECTED, trigger, "no calling test is InProgress")
    current = record.tracking.calling_test_id
    if data.test_id is not None and current is not None and data.test_id != current:
        return change.nothing(Result.STALE, trigger,
                              f"test {data.test_id} is not the test in progress ({current})")
    return finish_test(change, trigger, data.details or "")




def parent_deleted(change: Change, data: ParentDeleted) -> Outcome:
    record = change.record
    assert record is not None
    lookup = LOOKUP_BY_PARENT[data.table]
    if record.links.get(lookup.column) != data.parent_id:
        return change.nothing(Result.IGNORED, "parent_deleted",
                              f"the record does not link {data.table} {data.parent_id}")
    if lookup.on_parent_delete is DeleteRule.CASCADE:
        change.delete(f"{data.table} {data.parent_id} deleted (Cascade)")
        change.effects.extend((CancelRetry(record.id), DeleteRecord(record.id)))
        return change.done()
    links = dict(record.links)
    links[lookup.column] = None
    change.apply(Trigger.REMOVE_LINK, f"{data.table} {data.parent_id} deleted (RemoveLink): "
                 f"{lookup.column} cleared", links=links)
    return change.done()
