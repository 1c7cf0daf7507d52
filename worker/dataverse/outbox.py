"""The outbox entries the worker commits with every applied change (worker/service/drain.py).

Each is JSON ``{"op": "create"|"update"|"delete", "record_id", "version", "columns": [the
changed logical names], "row": the Dataverse read form after the change (null for
delete), "event_id", "at"}``, appended in commit order in the same Lua step as the record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from statemachine import Outcome, ProvisioningState, format_time, parse_time
from worker.dataverse.errors import UnreadableEntry
from worker.keys import dumps

OPS = ("create", "update", "delete")


def entry_for(before: ProvisioningState | None, outcome: Outcome) -> str | None:
    """The encoded entry the mirror must send for ``outcome`` applied to ``before``;
    None for a change the mirror does not see (nothing applied, or only the worker's
    own bookkeeping, such as a calling test id, changed)."""
    if not outcome.applied:
        return None
    after = outcome.record
    columns: list[str]
    row: dict[str, Any] | None
    if outcome.deleted:
        op, columns, row = "delete", [], None
    elif before is None:
        assert after is not None
        op, columns, row = "create", [], after.to_dataverse()
    else:
        assert after is not None
        changed = after.changed_columns(before)
        if not changed:
            return None
        op, columns, row = "update", sorted(changed), after.to_dataverse()
    last = outcome.entries[-1]
    return dumps({"op": op, "record_id": last.record_id, "version": last.version,
                  "columns": columns, "row": row, "event_id": last.event_id,
                  "at": format_time(last.at)})


@dataclass(frozen=True)
class OutboxEntry:
    op: str
    record_id: str
    version: int | None
    columns: frozenset[str]
    row: dict[str, Any] | None
    event_id: str | None
    at: datetime | None
    raw: str

    @classmethod
    def decode(cls, raw: str) -> OutboxEntry:
        """Parse one entry; UnreadableEntry says what is wrong."""
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, TypeError) as exc:
            raise UnreadableEntry(f"not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise UnreadableEntry("not a JSON object")
        op, record_id, row = data.get("op"), data.get("record_id"), data.get("row")
        if op not in OPS:
            raise UnreadableEntry(f"op must be one of {', '.join(OPS)}, not {op!r}")
        if not isinstance(record_id, str) or not record_id:
            raise UnreadableEntry("record_id is missing")
        if op != "delete" and not isinstance(row, dict):
            raise UnreadableEntry(f"row is missing (every {op} carries one)")
        columns = data.get("columns") or []
        if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
            raise UnreadableEntry("columns must be a list of column names")
        at = data.get("at")
        try:
            moment = parse_time(at) if isinstance(at, str) else None
        except ValueError:
            moment = None
        version = data.get("version")
        return cls(op=op, record_id=record_id,
                   version=version if isinstance(version, int) else None,
                   columns=frozenset(columns), row=row if isinstance(row, dict) else None,
                   event_id=data.get("event_id") if isinstance(data.get("event_id"), str)
                   else None, at=moment, raw=raw)

    def record(self) -> ProvisioningState:
        """The record after the change (create and update only)."""
        assert self.row is not None
        return ProvisioningState.from_dataverse(self.row)

    def describe(self) -> dict[str, Any]:
        return {"op": self.op, "record_id": self.record_id, "version": self.version,
                "event_id": self.event_id}

