"""What one ``apply`` produces, and how it is built.

``Outcome`` is the result of applying one command: the record before and after, the
history entries (one per applied change, or one that changed nothing) and the effects the
worker must carry out. ``Change`` accumulates them while a handler works, and checks
invariants (SPEC §2.4) before handing the outcome back; ``trigger_of`` names the trigger a
command means to pull, for the entries and log lines of commands that change nothing.
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
from statemachine.effects import Effect, StepKind
from statemachine.errors import InvariantViolation
from statemachine.events import Event, EventType
from statemachine.history import HistoryEntry, Result, Snapshot
from statemachine.machines import Trigger
from statemachine.record import ProvisioningState

__all__ = ["Change", "Outcome", "trigger_of"]


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


class Change:
    """Accumulates the versions, entries and effects of one ``apply``."""

    def __init__(self, record: ProvisioningState | None, command: Command, now: datetime,
                 trace: str | None = None) -> None:
        self.before = record
        self.trace = trace  # the caller's traceparent: kept by a step this change starts
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
