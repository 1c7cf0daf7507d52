"""``apply``: the only door through which a record changes (SPEC §2).

``apply(record, command, now=...)`` is pure: it returns an ``Outcome`` holding the new
record, the history entries (one per applied change, or one that changed nothing) and
the effects the worker must carry out. It never does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from statemachine import invariants
from statemachine.commands import (
    CallingTestTimedOut,
    Command,
    RetryDue,
    StepResult,
    event_type_of,
    record_id_of,
)
from statemachine.effects import (
    BackendCall,
    BackendStep,
    CancelRetry,
    DeleteRecord,
    Effect,
    RunStep,
    ScheduleRetry,
    StepKind,
    idempotency_key,
)
from statemachine.errors import InvariantViolation, UnknownRecord
from statemachine.events import (
    CallingTestCompleted,
    Event,
    EventType,
    GateKeeperReported,
    ParentDeleted,
    ProvisionRequested,
)
from statemachine.history import HistoryEntry, Result, Snapshot
from statemachine.machines import (
    CALLING_MACHINE,
    GATEKEEPER_MACHINE,
    LIFECYCLE_MACHINE,
    GateKeeper,
    Trigger,
)
from statemachine.record import ProvisioningState, Tracking
from statemachine.table import (
    CHANNEL_LOOKUP,
    ERROR_MESSAGE_MAX,
    EXCEPTION_DETAILS_MAX,
    LOOKUP_BY_PARENT,
    LOOKUP_COLUMNS,
    PROVISIONING_RESPONSE_MAX,
    AutomatedCallingStatus,
    DeleteRule,
    StatusReason,
)
from statemachine.text import truncate

PHONE_NUMBER = "msdyn_phonenumberid"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What applying one command did.

    ``record`` is the record after (None when it never existed or was deleted);
    ``entries`` holds one entry per applied change in order, or one entry that changed
    nothing; ``effects`` are what the worker must carry out, in order.
    """

    before: ProvisioningState | None
    record: ProvisioningState | None
    entries: tuple[HistoryEntry, ...]
    effects: tuple[Effect, ...] = ()
    deleted: bool = False

    @property
    def result(self) -> Result:
        return self.entries[-1].outcome

    @property
    def applied(self) -> bool:
        return any(entry.outcome is Result.APPLIED for entry in self.entries)

    @property
    def reason(self) -> str:
        return self.entries[-1].reason


class _Change:
    """Accumulates the versions, entries and effects of one ``apply``."""

    def __init__(self, record: ProvisioningState | None, command: Command, now: datetime) -> None:
        self.before = record
        self.record = record
        self.command = command
        self.now = now
        self.entries: list[HistoryEntry] = []
        self.effects: list[Effect] = []
        self.deleted = False
        self.event_id = command.event_id if not isinstance(command, Event) else command.id
        self.event_type = event_type_of(command)

    def apply(self, trigger: Trigger, reason: str, **changes: Any) -> ProvisioningState:
        """Record one applied change: versionnumber + 1 and an ``applied`` entry."""
        current = self.record
        assert current is not None
        new = replace(current, version=current.version + 1, modified_on=self.now, **changes)
        self.record = new
        self._entry(trigger, Result.APPLIED, reason, current, new, new.version)
        return new

    def create(self, record: ProvisioningState, reason: str) -> None:
        self.record = record
        self._entry(Trigger.CREATE, Result.APPLIED, reason, None, record, record.version)

    def nothing(self, result: Result, trigger: Trigger | str, reason: str) -> Outcome:
        self._entry(trigger, result, reason, self.record, self.record, None)
        return self.done()

    def delete(self, reason: str) -> None:
        current = self.record
        assert current is not None
        self.entries.append(HistoryEntry(
            record_id=current.id, version=current.version + 1, event_id=self.event_id,
            event_type=self.event_type, trigger=Trigger.DELETE.value, outcome=Result.APPLIED,
            reason=reason, before=Snapshot.of(current), after=None, at=self.now,
        ))
        self.record = None
        self.deleted = True

    def _entry(
        self, trigger: Trigger | str, result: Result, reason: str,
        before: ProvisioningState | None, after: ProvisioningState | None, version: int | None,
    ) -> None:
        known = after or before
        record_id = known.id if known else str(record_id_of(self.command))
        self.entries.append(HistoryEntry(
            record_id=record_id, version=version, event_id=self.event_id,
            event_type=self.event_type, trigger=str(trigger), outcome=result, reason=reason,
            before=Snapshot.of(before) if before else None,
            after=Snapshot.of(after) if after else None, at=self.now,
        ))

    def done(self) -> Outcome:
        if self.record is not None:
            invariants.check(self.record)
        _check_versions(self.before, self.entries)
        return Outcome(self.before, self.record, tuple(self.entries), tuple(self.effects),
                       self.deleted)


def _check_versions(before: ProvisioningState | None, entries: list[HistoryEntry]) -> None:
    """Invariant 7: versionnumber rises by exactly 1 per applied change."""
    version = before.version if before else 0
    for entry in entries:
        if entry.outcome is Result.APPLIED:
            if entry.version != version + 1:
                raise InvariantViolation(f"7: version {entry.version} follows {version}")
            version += 1
        elif entry.version is not None:
            raise InvariantViolation("7: an entry that changed nothing carries no version")


def apply(
    record: ProvisioningState | None, command: Command, *, now: datetime,
    duplicate: bool = False,
) -> Outcome:
    """Apply ``command`` to ``record`` (None when no record has that id).

    ``duplicate`` says the store has already processed this command's dedupe key: the
    outcome is a ``duplicate`` entry that changes nothing (invariant 8).
    Raises UnknownRecord for a command other than ``provision.requested`` on no record.
    """
    change = _Change(record, command, now)
    if record is None and not (
        isinstance(command, Event) and command.type is EventType.PROVISION_REQUESTED
    ):
        raise UnknownRecord(str(record_id_of(command)))
    if duplicate:
        return change.nothing(Result.DUPLICATE, trigger_of(command),
                              f"event {change.event_id} was already processed")
    if (
        record is not None and record.status is StatusReason.DEPROVISIONED
        and not isinstance(command, Event)
    ):
        return change.nothing(Result.STALE, trigger_of(command),
                              "the record is Deprovisioned, which is final")
    if isinstance(command, StepResult):
        return _step_result(change, command)
    if isinstance(command, RetryDue):
        return _retry(change, command)
    if isinstance(command, CallingTestTimedOut):
        return _calling_timeout(change, command)
    assert record is not None or command.type is EventType.PROVISION_REQUESTED
    if (
        record is not None and record.status is StatusReason.DEPROVISIONED
        and command.type is not EventType.PARENT_DELETED
    ):
        return change.nothing(Result.REJECTED, trigger_of(command),
                              "the record is Deprovisioned, which is final")
    match command.data:
        case ProvisionRequested():
            return _provision(change, command.data)
        case GateKeeperReported():
            return _gatekeeper_report(change, command.data)
        case CallingTestCompleted():
            return _calling_completed(change, command.data)
        case ParentDeleted():
            return _parent_deleted(change, command.data)
        case None if command.type is EventType.DEPROVISION_REQUESTED:
            return _deprovision(change)
        case None:
            return _request_test(change)
    raise AssertionError(f"unhandled event type {command.type}")  # pragma: no cover


def trigger_of(command: Command) -> str:
    """The trigger a command means to pull (what its history entry and log lines name)."""
    if isinstance(command, StepResult):
        return {StepKind.PROVISION: Trigger.PROVISIONED, StepKind.DEPROVISION:
                Trigger.DEPROVISIONED, StepKind.CALLING_TEST: Trigger.TEST_STARTED}[command.kind]
    if isinstance(command, RetryDue):
        return Trigger.RETRY
    if isinstance(command, CallingTestTimedOut):
        return Trigger.TEST_FAILED
    return {
        EventType.PROVISION_REQUESTED: Trigger.PROVISION,
        EventType.DEPROVISION_REQUESTED: Trigger.DEPROVISION,
        EventType.GATEKEEPER_REPORTED: "gatekeeper_report",
        EventType.CALLING_TEST_REQUESTED: Trigger.REQUEST_TEST,
        EventType.CALLING_TEST_COMPLETED: "complete_test",
        EventType.PARENT_DELETED: "parent_deleted",
    }[command.type]


# -- steps ---------------------------------------------------------------------------------

def _start_step(change: _Change, kind: StepKind) -> Tracking:
    """Tracking for a step starting at the version the current change will get."""
    record = change.record
    assert record is not None
    return replace(record.tracking, step=kind.value, step_version=record.version + 1,
                   step_event_id=change.event_id)


def _run(change: _Change, kind: StepKind) -> None:
    """Queue the calls of the step the record just entered (tracking says which version)."""
    assert change.record is not None
    step = pending_step(change.record)
    assert step is not None and step.kind is kind
    change.effects.append(step)


def pending_step(record: ProvisioningState) -> RunStep | None:
    """The step in flight on ``record`` (started, no result applied yet), or None.

    The worker runs it after the change that started it is stored, and again after a
    crash: the calls carry the same Idempotency-Keys both times.
    """
    tracking = record.tracking
    if tracking.step is None or tracking.step_version is None:
        return None
    kind = StepKind(tracking.step)
    version = tracking.step_version
    calls = []
    for step in kind.calls:
        if step is BackendStep.DEPROVISION_CHANNEL and record.channel_id is None:
            continue  # the channel's parent was deleted (RemoveLink): nothing left to delete
        calls.append(BackendCall(
            step=step, record_id=record.id,
            idempotency_key=idempotency_key(record.id, version, step),
            kind=record.tracking.channel_kind, channel_id=record.channel_id, name=record.name,
            links={column: value for column, value in record.links.items()
                   if value is not None and column != _channel_column(record)},
            phone_number_id=record.links.get(PHONE_NUMBER),
        ))
    return RunStep(kind, record.id, tracking.step_event_id or "", version, tuple(calls))


def _channel_column(record: ProvisioningState) -> str | None:
    kind = record.tracking.channel_kind
    return CHANNEL_LOOKUP[kind] if kind else None


def _fire_lifecycle(change: _Change, trigger: Trigger) -> StatusReason | None:
    assert change.record is not None
    result: StatusReason | None = LIFECYCLE_MACHINE.fire(change.record.status, trigger)
    return result


def _gate(record: ProvisioningState) -> GateKeeper:
    gate = GateKeeper.from_pair(*record.gatekeeper)
    assert gate is not None, "invariant 2 holds for every stored record"
    return gate


def _fire_gate(record: ProvisioningState, trigger: Trigger) -> dict[str, Any]:
    """The column changes of the GateKeeper transition, or none when it may not fire."""
    gate: GateKeeper | None = GATEKEEPER_MACHINE.fire(_gate(record), trigger)
    if gate is None:
        return {}
    status, reason = gate.pair
    return {"gatekeeper_status": status, "gatekeeper_reason": reason}


# -- events --------------------------------------------------------------------------------

def _provision(change: _Change, data: ProvisionRequested) -> Outcome:
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
    target = _fire_lifecycle(change, Trigger.PROVISION)
    if target is None:
        return change.nothing(Result.REJECTED, Trigger.PROVISION,
                              f"provision is not allowed from {record.status.label}")
    tracking = replace(_start_step(change, StepKind.PROVISION), channel_kind=data.kind,
                       retry_attempt=0, failed_call=None)
    was_error = record.status is StatusReason.ERROR
    change.apply(Trigger.PROVISION, f"provisioning {data.kind.value} channel {data.channel_id}",
                 status=target, name=data.name, links=links, tracking=tracking)
    if was_error:
        change.effects.append(CancelRetry(record.id))
    _run(change, StepKind.PROVISION)
    return change.done()


def _deprovision(change: _Change) -> Outcome:
    record = change.record
    assert record is not None
    if record.status is StatusReason.DEPROVISIONING:
        return change.nothing(Result.IGNORED, Trigger.DEPROVISION,
                              "the record is already Deprovisioning")
    target = _fire_lifecycle(change, Trigger.DEPROVISION)
    if target is None:  # pragma: no cover - every other state may deprovision
        return change.nothing(Result.REJECTED, Trigger.DEPROVISION,
                              f"deprovision is not allowed from {record.status.label}")
    tracking = replace(_start_step(change, StepKind.DEPROVISION), retry_attempt=0,
                       failed_call=None)
    change.apply(Trigger.DEPROVISION, "deprovisioning requested", status=target,
                 tracking=tracking)
    change.effects.append(CancelRetry(record.id))
    _run(change, StepKind.DEPROVISION)
    return change.done()


def _gatekeeper_report(change: _Change, data: GateKeeperReported) -> Outcome:
    record = change.record
    assert record is not None
    gate = _gate(record)
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
                tracking=replace(record.tracking, retry_attempt=attempt, failed_call="gatekeeper"),
                **_fire_gate(record, Trigger.REPORT_ERROR),
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
                tracking=replace(record.tracking, retry_attempt=0, failed_call=None),
                **_fire_gate(record, Trigger.RECOVER),
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
        change.apply(Trigger.CLOSE_GATE, said, **_fire_gate(record, Trigger.CLOSE_GATE))
        return change.done()
    if gate is GateKeeper.INACTIVE_DEPROVISIONED:
        return change.nothing(Result.IGNORED, Trigger.CLOSE_GATE,
                              "the gate is already Inactive/Deprovisioned")
    return change.nothing(Result.REJECTED, Trigger.CLOSE_GATE,
                          f"a gate deprovisioned report applies to a Deprovisioning record, "
                          f"not {record.status.label}")


def _request_test(change: _Change) -> Outcome:
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
    tracking = replace(_start_step(change, StepKind.CALLING_TEST), calling_test_id=None,
                       calling_test_version=record.version + 1,
                       calling_test_started_at=change.now)
    change.apply(Trigger.REQUEST_TEST, "calling test requested", calling_status=target,
                 tracking=tracking)
    _run(change, StepKind.CALLING_TEST)
    return change.done()


def _calling_completed(change: _Change, data: CallingTestCompleted) -> Outcome:
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
    return _finish_test(change, trigger, data.details or "")


def _finish_test(change: _Change, trigger: Trigger, details: str) -> Outcome:
    record = change.record
    assert record is not None
    target = CALLING_MACHINE.fire(record.calling_status, trigger)
    assert target is not None
    changes: dict[str, Any] = {
        "calling_status": target,
        "tracking": replace(record.tracking, calling_test_id=None, calling_test_started_at=None,
                            calling_test_version=None,
                            step=None if record.tracking.step == StepKind.CALLING_TEST.value
                            else record.tracking.step),
    }
    if target is AutomatedCallingStatus.FAILURE:
        changes["exception_details"] = truncate(
            f"calling test failed: {details or 'no details'}", EXCEPTION_DETAILS_MAX)
    change.apply(trigger, f"calling test {target.label}" + (f": {details}" if details else ""),
                 **changes)
    return change.done()


def _parent_deleted(change: _Change, data: ParentDeleted) -> Outcome:
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


# -- the worker's own steps and beat's sweeps ----------------------------------------------

_STEP_STATUS = {
    StepKind.PROVISION: StatusReason.PROCESSING,
    StepKind.DEPROVISION: StatusReason.DEPROVISIONING,
}


def _step_result(change: _Change, result: StepResult) -> Outcome:
    record = change.record
    assert record is not None
    trigger = trigger_of(result) if result.ok else (
        Trigger.TEST_FAILED if result.kind is StepKind.CALLING_TEST else Trigger.FAIL)
    tracking = record.tracking
    in_step = tracking.step == result.kind.value and tracking.step_version == result.started_version
    expected = _STEP_STATUS.get(result.kind)
    if result.kind is StepKind.CALLING_TEST:
        in_step = in_step and record.calling_status is AutomatedCallingStatus.IN_PROGRESS
    elif record.status is not expected:
        in_step = False
    if not in_step:
        return change.nothing(
            Result.STALE, trigger,
            f"the record left the {result.kind.value} step started at version "
            f"{result.started_version} (now {record.status.label}, version {record.version})",
        )
    if result.kind is StepKind.CALLING_TEST:
        if result.ok:
            change.apply(Trigger.TEST_STARTED, f"calling test {result.test_id} started",
                         tracking=replace(tracking, step=None, calling_test_id=result.test_id))
            return change.done()
        return _finish_test(change, Trigger.TEST_FAILED, result.details)
    if not result.ok:
        return _step_failed(change, result)
    if result.kind is StepKind.PROVISION:
        response = result.response if result.response is not None else record.provisioning_response
        change.apply(
            Trigger.PROVISIONED, "provisioner and GateKeeper succeeded",
            status=StatusReason.RUNNING, exception_details="", error_message=None,
            provisioning_response=None if response is None
            else truncate(response, PROVISIONING_RESPONSE_MAX),
            tracking=replace(tracking, step=None, retry_attempt=0, failed_call=None),
            **_fire_gate(record, Trigger.ACTIVATE),
        )
    else:
        change.apply(
            Trigger.DEPROVISIONED, "GateKeeper deactivated and channel deleted",
            status=StatusReason.DEPROVISIONED, exception_details="", error_message=None,
            tracking=replace(tracking, step=None, retry_attempt=0, failed_call=None),
            **_fire_gate(record, Trigger.CLOSE_GATE),
        )
    change.effects.append(CancelRetry(record.id))
    return change.done()


def _step_failed(change: _Change, result: StepResult) -> Outcome:
    record = change.record
    assert record is not None
    target = _fire_lifecycle(change, Trigger.FAIL)
    assert target is not None
    failed = result.failed_call.value if result.failed_call else result.kind.value
    attempt = record.tracking.retry_attempt + 1
    changes: dict[str, Any] = {
        "status": target,
        "exception_details": truncate(result.details or f"{failed} failed",
                                      EXCEPTION_DETAILS_MAX),
        "error_message": truncate((result.summary or f"{failed} failed").splitlines()[0],
                                  ERROR_MESSAGE_MAX),
        "tracking": replace(record.tracking, step=None, retry_attempt=attempt,
                            failed_call=failed),
    }
    if result.failed_call is BackendStep.ACTIVATE_GATE:
        changes.update(_fire_gate(record, Trigger.REPORT_ERROR))
    if result.response is not None:
        changes["provisioning_response"] = truncate(result.response, PROVISIONING_RESPONSE_MAX)
    change.apply(Trigger.FAIL, changes["error_message"], **changes)
    change.effects.append(ScheduleRetry(record.id, attempt))
    return change.done()


def _retry(change: _Change, command: RetryDue) -> Outcome:
    record = change.record
    assert record is not None
    if record.version != command.expected_version:
        return change.nothing(Result.STALE, Trigger.RETRY,
                              f"the record changed since the retry was scheduled at version "
                              f"{command.expected_version} (now {record.version})")
    target = _fire_lifecycle(change, Trigger.RETRY)
    lifecycle_step = record.tracking.step in (StepKind.PROVISION.value, StepKind.DEPROVISION.value)
    if target is None or lifecycle_step:
        return change.nothing(Result.STALE, Trigger.RETRY,
                              f"nothing to retry: the record is {record.status.label}")
    kind = StepKind.PROVISION if target is StatusReason.PROCESSING else StepKind.DEPROVISION
    change.apply(Trigger.RETRY, f"retry {record.tracking.retry_attempt} of {kind.value}",
                 status=target, tracking=_start_step(change, kind))
    # This retry is under way: drop it from the schedule (a new failure schedules the next).
    change.effects.append(CancelRetry(record.id))
    _run(change, kind)
    return change.done()


def _calling_timeout(change: _Change, command: CallingTestTimedOut) -> Outcome:
    record = change.record
    assert record is not None
    if (
        record.calling_status is not AutomatedCallingStatus.IN_PROGRESS
        or record.tracking.calling_test_version != command.started_version
    ):
        return change.nothing(Result.STALE, Trigger.TEST_FAILED,
                              f"the calling test started at version {command.started_version} "
                              "is no longer InProgress")
    return _finish_test(change, Trigger.TEST_FAILED, "timed out")

