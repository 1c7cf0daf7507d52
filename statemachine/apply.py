"""``apply``: the only door through which a record changes (SPEC §2).

``apply(record, command, now=...)`` is pure: it returns an ``Outcome`` holding the new
record, the history entries (one per applied change, or one that changed nothing) and
the effects the worker must carry out. It never does I/O.

The door refuses what no command may do (an unknown record, a duplicate, a change to a
Deprovisioned record), then hands the command to its handler: ``on_events`` for events,
``on_commands`` for the worker's step results and beat's sweeps. ``outcome`` builds what
they return; ``steps`` holds what they share.
"""

from __future__ import annotations

from datetime import datetime

from statemachine.commands import CallingTestTimedOut, Command, RetryDue, StepResult, record_id_of
from statemachine.errors import UnknownRecord
from statemachine.events import (
    CallingTestCompleted,
    Event,
    EventType,
    GateKeeperReported,
    ParentDeleted,
    ProvisionRequested,
)
from statemachine.history import Result
from statemachine.on_commands import calling_timeout, retry, step_result
from statemachine.on_events import (
    calling_completed,
    deprovision,
    gatekeeper_report,
    parent_deleted,
    provision,
    request_test,
)
from statemachine.outcome import Change, Outcome, trigger_of
from statemachine.record import ProvisioningState
from statemachine.table import StatusReason

__all__ = ["apply"]


def apply(
    record: ProvisioningState | None, command: Command, *, now: datetime,
    duplicate: bool = False, trace: str | None = None,
) -> Outcome:
    """Apply ``command`` to ``record`` (None when no record has that id).

    ``duplicate`` says the store has already processed this command's dedupe key: the
    outcome is a ``duplicate`` entry that changes nothing (invariant 8).
    ``trace`` is the caller's W3C ``traceparent`` (an opaque string here): a step this
    command starts keeps it in ``tracking.step_trace``, so the worker can continue that
    trace when it runs the step again after a crash, or retries it.
    Raises UnknownRecord for a command other than ``provision.requested`` on no record.
    """
    change = Change(record, command, now, trace)
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
        return step_result(change, command)
    if isinstance(command, RetryDue):
        return retry(change, command)
    if isinstance(command, CallingTestTimedOut):
        return calling_timeout(change, command)
    assert record is not None or command.type is EventType.PROVISION_REQUESTED
    if (
        record is not None and record.status is StatusReason.DEPROVISIONED
        and command.type is not EventType.PARENT_DELETED
    ):
        return change.nothing(Result.REJECTED, trigger_of(command),
                              "the record is Deprovisioned, which is final")
    match command.data:
        case ProvisionRequested():
            return provision(change, command.data)
        case GateKeeperReported():
            return gatekeeper_report(change, command.data)
        case CallingTestCompleted():
            return calling_completed(change, command.data)
        case ParentDeleted():
            return parent_deleted(change, command.data)
        case None if command.type is EventType.DEPROVISION_REQUESTED:
            return deprovision(change)
        case None:
            return request_test(change)
    raise AssertionError(f"unhandled event type {command.type}")  # pragma: no cover
