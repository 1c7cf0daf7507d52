"""What the handlers of ``apply`` share: starting a step and queueing its backend calls,
firing the lifecycle and GateKeeper machines for one change, and ending a calling test.

``pending_step`` is also the worker's: it runs the step a stored record is in (after the
change that started it, and again after a crash, with the same Idempotency-Keys).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from statemachine.effects import BackendCall, BackendStep, RunStep, StepKind, idempotency_key
from statemachine.machines import (
    CALLING_MACHINE,
    GATEKEEPER_MACHINE,
    LIFECYCLE_MACHINE,
    GateKeeper,
    Trigger,
)
from statemachine.outcome import Change, Outcome
from statemachine.record import ProvisioningState, Tracking
from statemachine.table import (
    CHANNEL_LOOKUP,
    EXCEPTION_DETAILS_MAX,
    AutomatedCallingStatus,
    StatusReason,
)
from statemachine.text import truncate

__all__ = [
    "PHONE_NUMBER",
    "finish_test",
    "fire_gate",
    "fire_lifecycle",
    "gate_of",
    "kept_trace",
    "pending_step",
    "run_step",
    "start_step",
]

PHONE_NUMBER = "msdyn_phonenumberid"


def start_step(change: Change, kind: StepKind) -> Tracking:
    """Tracking for a step starting at the version the current change will get."""
    record = change.record
    assert record is not None
    return replace(record.tracking, step=kind.value, step_version=record.version + 1,
                   step_event_id=change.event_id, step_trace=change.trace)


def kept_trace(tracking: Tracking, trace: str | None = None) -> str | None:
    """The ``step_trace`` a change that leaves no step in flight keeps: only while something
    may still continue it (a calling test's timeout; ``trace``: the change schedules a beat
    retry itself), so a settled record does not store it."""
    if tracking.step is not None or tracking.calling_test_version is not None:
        return tracking.step_trace
    return trace


def run_step(change: Change, kind: StepKind) -> None:
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


def fire_lifecycle(change: Change, trigger: Trigger) -> StatusReason | None:
    """The status ``trigger`` moves the record to, or None when it may not fire."""
    assert change.record is not None
    result: StatusReason | None = LIFECYCLE_MACHINE.fire(change.record.status, trigger)
    return result


def gate_of(record: ProvisioningState) -> GateKeeper:
    """The record's two GateKeeper columns as the state of the GateKeeper machine."""
    gate = GateKeeper.from_pair(*record.gatekeeper)
    assert gate is not None, "invariant 2 holds for every stored record"
    return gate


def fire_gate(record: ProvisioningState, trigger: Trigger) -> dict[str, Any]:
    """The column changes of the GateKeeper transition, or none when it may not fire."""
    gate: GateKeeper | None = GATEKEEPER_MACHINE.fire(gate_of(record), trigger)
    if gate is None:
        return {}
    status, reason = gate.pair
    return {"gatekeeper_status": status, "gatekeeper_reason": reason}


def finish_test(change: Change, trigger: Trigger, details: str) -> Outcome:
    """End the calling test in progress: passed or failed by ``trigger``; a failure's
    ``details`` go to the exception details."""
    record = change.record
    assert record is not None
    target = CALLING_MACHINE.fire(record.calling_status, trigger)
    assert target is not None
    tracking = replace(record.tracking, calling_test_id=None, calling_test_started_at=None,
                       calling_test_version=None,
                       step=None if record.tracking.step == StepKind.CALLING_TEST.value
                       else record.tracking.step)
    changes: dict[str, Any] = {
        "calling_status": target,
        "tracking": replace(tracking, step_trace=kept_trace(tracking)),
    }
    if target is AutomatedCallingStatus.FAILURE:
        changes["exception_details"] = truncate(
            f"calling test failed: {details or 'no details'}", EXCEPTION_DETAILS_MAX)
    change.apply(trigger, f"calling test {target.label}" + (f": {details}" if details else ""),
                 **changes)
    return change.done()
