"""History entries (SPEC §5.2): one per applied change, plus those that changed nothing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from statemachine.machines import GateKeeper
from statemachine.record import ProvisioningState, format_time, parse_time
from statemachine.table import (
    FORMATTED,
    AutomatedCallingStatus,
    GateKeeperReason,
    GateKeeperStatus,
    StatusReason,
)


class Result(StrEnum):
    """What an entry did: ``applied`` changed the record; the others changed nothing."""

    APPLIED = "applied"
    IGNORED = "ignored"
    REJECTED = "rejected"
    DUPLICATE = "duplicate"
    STALE = "stale"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The three machines' states of a record at one moment (an entry's ``from``/``to``)."""

    status: StatusReason
    gatekeeper_status: GateKeeperStatus | None
    gatekeeper_reason: GateKeeperReason | None
    calling_status: AutomatedCallingStatus

    @classmethod
    def of(cls, record: ProvisioningState) -> Snapshot:
        return cls(record.status, record.gatekeeper_status, record.gatekeeper_reason,
                   record.calling_status)

    def to_json(self) -> dict[str, Any]:
        """Column names and FormattedValue labels as in SPEC §5.1."""
        data: dict[str, Any] = {
            "statuscode": int(self.status),
            f"statuscode{FORMATTED}": self.status.label,
            "msdyn_gatekeeperstatus": None if self.gatekeeper_status is None
            else int(self.gatekeeper_status),
            "msdyn_gatekeeperstatusreason": None if self.gatekeeper_reason is None
            else int(self.gatekeeper_reason),
            "msdyn_automatedcallingstatus": int(self.calling_status),
            f"msdyn_automatedcallingstatus{FORMATTED}": self.calling_status.label,
        }
        if self.gatekeeper_status is not None:
            data[f"msdyn_gatekeeperstatus{FORMATTED}"] = self.gatekeeper_status.label
        if self.gatekeeper_reason is not None:
            data[f"msdyn_gatekeeperstatusreason{FORMATTED}"] = self.gatekeeper_reason.label
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Snapshot:
        gks, gkr = data.get("msdyn_gatekeeperstatus"), data.get("msdyn_gatekeeperstatusreason")
        return cls(
            StatusReason(data["statuscode"]),
            None if gks is None else GateKeeperStatus(gks),
            None if gkr is None else GateKeeperReason(gkr),
            AutomatedCallingStatus(data["msdyn_automatedcallingstatus"]),
        )

    def describe(self) -> str:
        state = GateKeeper.from_pair(self.gatekeeper_status, self.gatekeeper_reason)
        gate = state.value if state is not None else "invalid"
        return f"{self.status.label} gate={gate} calling={self.calling_status.label}"


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One line of a record's history. ``version`` is None unless the entry was applied."""

    record_id: str
    version: int | None
    event_id: str
    event_type: str
    trigger: str
    outcome: Result
    reason: str
    before: Snapshot | None
    after: Snapshot | None
    at: datetime
    task_id: str | None = None

    def with_task(self, task_id: str | None) -> HistoryEntry:
        return replace(self, task_id=task_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "record_id": self.record_id,
            "version": self.version,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "trigger": self.trigger,
            "outcome": self.outcome.value,
            "reason": self.reason,
            "from": self.before.to_json() if self.before else None,
            "to": self.after.to_json() if self.after else None,
            "at": format_time(self.at),
            "task_id": self.task_id,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HistoryEntry:
        return cls(
            record_id=data["record_id"],
            version=data["version"],
            event_id=data["event_id"],
            event_type=data["event_type"],
            trigger=data["trigger"],
            outcome=Result(data["outcome"]),
            reason=data["reason"],
            before=Snapshot.from_json(data["from"]) if data.get("from") else None,
            after=Snapshot.from_json(data["to"]) if data.get("to") else None,
            at=parse_time(data["at"]),
            task_id=data.get("task_id"),
        )
