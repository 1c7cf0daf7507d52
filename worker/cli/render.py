"""How the CLI shows records, history and failed-task entries to a person."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from statemachine import GateKeeper, HistoryEntry, ProvisioningState, format_time
from worker.store.failed import FailedTask


def describe_record(record: ProvisioningState) -> str:
    gate = _gate(record)
    rows = [
        ("id", record.id),
        ("name", record.name),
        ("kind", record.tracking.channel_kind.value if record.tracking.channel_kind else "-"),
        ("status", f"{record.status.label} ({int(record.status)}), "
                   f"statecode {record.statecode.label} ({int(record.statecode)})"),
        ("gatekeeper", gate),
        ("calling test", record.calling_status.label),
        ("version", str(record.version)),
        ("modified", format_time(record.modified_on)),
    ]
    if record.provisioning_response:
        rows.append(("response", record.provisioning_response))
    if record.error_message:
        rows.append(("error", record.error_message))
    if record.exception_details:
        rows.append(("details", record.exception_details.replace("\n", "\n" + " " * 14)))
    rows.extend((column, value) for column, value in record.links.items() if value)
    return "\n".join(f"{label:<13} {value}" for label, value in rows)


def _gate(record: ProvisioningState) -> str:
    state = GateKeeper.from_pair(*record.gatekeeper)
    return state.value if state is not None else "invalid"


def format_records(records: Sequence[ProvisioningState]) -> str:
    lines = [f"{'ID':<36}  {'KIND':<11}  {'STATUS':<14}  {'GATEKEEPER':<22}  {'CALLING':<10}  "
             f"{'VER':>3}  NAME"]
    for r in records:
        kind = r.tracking.channel_kind.value if r.tracking.channel_kind else "-"
        lines.append(f"{r.id:<36}  {kind:<11}  {r.status.label:<14}  {_gate(r):<22}  "
                     f"{r.calling_status.label:<10}  {r.version:>3}  {r.name}")
    return "\n".join(lines)


def format_history(entries: Sequence[HistoryEntry]) -> str:
    lines = []
    for e in entries:
        version = f"v{e.version}" if e.version is not None else "-"
        before = e.before.status.label if e.before else "∅"
        after = e.after.status.label if e.after else "∅"
        lines.append(f"{version:>4}  {format_time(e.at)}  {e.trigger:<14} "
                     f"{e.outcome.value:<9} {before} → {after}  [{e.event_type} {e.event_id}]"
                     f"  {e.reason}")
    return "\n".join(lines)


def format_failed(entries: Sequence[FailedTask]) -> str:
    # Times in full, with their zone (UTC, "Z"), as every other command prints them.
    # 27 characters: 2026-12-07T11:38:54.445156Z.
    lines = [f"{'ENTRY':<12}  {'LAST FAILED':<27}  {'TRIES':>5}  {'EXCEPTION':<16}  "
             f"{'EVENT TYPE':<22}  {'RECORD':<36}  MESSAGE"]
    for e in entries:
        message = e.message.splitlines()[0] if e.message else ""
        lines.append(f"{e.id:<12}  {e.last_failed_at:<27}  {e.attempts:>5}  "
                     f"{e.exception:<16}  {(e.event_type or '-'):<22}  "
                     f"{(e.record_id or '-'):<36}  {message[:120]}")
    return "\n".join(lines)


def format_audit(lines: Sequence[dict[str, Any]]) -> str:
    """The operators' audit log, one line per action."""
    shown = []
    for line in lines:
        why = f"  reason: {line['reason']}" if line.get("reason") else ""
        shown.append(f"{line['at']}  {line['operator']:<12} {line['action']:<8} "
                     f"{line['entry']}  {line.get('result', '')}{why}")
    return "\n".join(shown)


def describe_deletion(deleted_at: float | None, purged_at: float | None,
                      retention_seconds: float) -> str | None:
    """What ``history`` says about a deleted record's retention (None: not deleted)."""
    if purged_at is not None:
        return (f"the record was deleted and its history was purged at "
                f"{_stamp(purged_at)}")
    if deleted_at is not None:
        return (f"the record was deleted at {_stamp(deleted_at)}; its history will be "
                f"purged after {_stamp(deleted_at + retention_seconds)}")
    return None


def _stamp(epoch: float) -> str:
    return format_time(datetime.fromtimestamp(epoch, UTC))
