"""The compact stored forms of store v2 (README "Store v2"): records, history entries and
dedupe marks, each as small as it can be while staying exact.

* A record is stored as ``<version>|<packed>``: the version first (the commit script
  compares it without decoding anything), then a compact JSON array of the columns that
  are set, each once, by position. The record id is not stored (it is in the key); enum
  columns are stored by position in their enum; times as integer epoch microseconds; the
  step's ``traceparent`` as the base64 of its 25 bytes.
  ``0|`` is "no record"; ``0|x<epoch seconds>`` a record deleted at that time (its history
  stays until the deleted-record retention has passed).
* A history entry is a compact JSON array; ``HistoryEntry`` objects round-trip exactly, so
  ``history --json`` prints the SPEC §5.2 shape as before.
* Dedupe marks (accepted event ids, applied dedupe keys) are 12-character digests
  (blake2b, 72 bits), so a mark costs the same whatever the length of the event id.

``FORMAT`` is the store's format version, kept in ``<prefix>:meta``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from statemachine import (
    AutomatedCallingStatus,
    ChannelKind,
    GateKeeperReason,
    GateKeeperStatus,
    HistoryEntry,
    ProvisioningState,
    Result,
    StatusReason,
)
from statemachine.history import Snapshot
from statemachine.record import Tracking
from statemachine.table import LOOKUP_COLUMNS

FORMAT = 2
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)
_STATUS = tuple(StatusReason)
_GK_STATUS = tuple(GateKeeperStatus)
_GK_REASON = tuple(GateKeeperReason)
_CALLING = tuple(AutomatedCallingStatus)
_KINDS = tuple(ChannelKind)
_RESULTS = tuple(Result)
# Event types that are stored by number; any other is stored as its text.
_EVENT_TYPES = ("provision.requested", "deprovision.requested", "gatekeeper.reported",
                "calling_test.requested", "calling_test.completed", "parent.deleted",
                "step.provision", "step.deprovision", "step.calling_test", "retry.due",
                "calling_test.timed_out")
NO_RECORD = "0|"
_TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
# Texts of history reasons stored as "~A", "~B", ... (longest first; "~" itself doubled).
# Part of format 2: append only (a new phrase gets the next letter).
_PHRASES = ("provisioner and GateKeeper succeeded", "GateKeeper deactivated and channel deleted",
            "deprovisioning requested", "GateKeeper reported ", "Inactive/Error",
            "Active/Running", "created for ", "provisioning ", " channel ", "calling test ",
            "the record is ", " failed", "whatsapp", "facebook", "teams", "voice", "line",
            "Inactive/Deprovisioned", " is not allowed from ", "Deprovisioned", "Running",
            "Processing", "Error", " (now ", ", version ")
_PHRASE_TOKENS = tuple(f"~{chr(ord('A') + i)}" for i in range(len(_PHRASES)))
_BY_LENGTH = sorted(zip(_PHRASE_TOKENS, _PHRASES, strict=True), key=lambda tp: -len(tp[1]))
_TRIGGERS = ("create", "provision", "provisioned", "fail", "retry", "deprovision",
             "deprovisioned", "recover", "activate", "report_error", "close_gate",
             "request_test", "test_started", "test_passed", "test_failed", "remove_link",
             "delete")


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def micros(moment: datetime) -> int:
    return (moment - EPOCH) // _MICRO


def from_micros(value: int) -> datetime:
    return EPOCH + timedelta(microseconds=value)


def _opt(values: tuple[Any, ...], value: Any) -> int:
    """Position + 1 of an optional enum value (0: None)."""
    return 0 if value is None else values.index(value) + 1


def _from_opt(values: tuple[Any, ...], code: int) -> Any:
    return None if code == 0 else values[code - 1]


def _ids(record_id: str, links: dict[str, Any]) -> list[tuple[str, str]]:
    """(token, id) pairs: the ids a record's texts often repeat (the backend's answer
    names the channel and the record), each replaced by a 2-character token."""
    pairs = [("~r", record_id)]
    pairs.extend((f"~{code}", value) for code, value in sorted(links.items()))
    return pairs


def _shrink(text: str | None, pairs: list[tuple[str, str]]) -> str | None:
    """``text`` with "~" doubled, then each id replaced by its token (exactly reversible)."""
    if not text:
        return text
    text = text.replace("~", "~~")
    for token, value in pairs:
        text = text.replace(value, token)
    return text


def _expand(text: str | None, pairs: list[tuple[str, str]]) -> str | None:
    if not text or "~" not in text:
        return text
    lookup = dict(pairs)
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "~":
            follower = text[i + 1]
            out.append("~" if follower == "~" else lookup[f"~{follower}"])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _shrink_reason(text: str) -> str:
    return _shrink(text, _BY_LENGTH) or ""


def _expand_reason(text: str) -> str:
    return _expand(text, list(zip(_PHRASE_TOKENS, _PHRASES, strict=True))) or ""


def _pack_trace(value: str | None) -> str | None:
    """A W3C ``traceparent`` (version 00) as the base64 of its 25 bytes (34 characters, not
    55); any other text after a "-" (which base64 has not)."""
    if value is None:
        return None
    if _TRACEPARENT.fullmatch(value):
        raw = bytes.fromhex(value[3:35] + value[36:52] + value[53:55])
        return base64.b64encode(raw).decode("ascii").rstrip("=")
    return f"-{value}"


def _unpack_trace(value: str | None) -> str | None:
    if value is None or value.startswith("-"):
        return value and value[1:]
    raw = base64.b64decode(value + "=" * (-len(value) % 4)).hex()
    return f"00-{raw[:32]}-{raw[32:48]}-{raw[48:]}"


def pack_record(record: ProvisioningState) -> str:
    """``<version>|<packed columns>`` (see the module docstring)."""
    t = record.tracking
    links = {str(i): record.links[column] for i, column in enumerate(LOOKUP_COLUMNS)
             if record.links.get(column) is not None}
    pairs = _ids(record.id, links) + _BY_LENGTH
    tracking: list[Any] = [
        _opt(_KINDS, t.channel_kind) or None, t.step, t.step_version, t.step_event_id,
        t.failed_call, t.retry_attempt or None, t.calling_test_id, t.calling_test_version,
        None if t.calling_test_started_at is None else micros(t.calling_test_started_at),
        _pack_trace(t.step_trace)]
    while tracking and tracking[-1] is None:
        tracking.pop()
    body: list[Any] = [
        record.name, _STATUS.index(record.status), micros(record.created_on),
        micros(record.modified_on), _opt(_GK_STATUS, record.gatekeeper_status),
        _opt(_GK_REASON, record.gatekeeper_reason), _CALLING.index(record.calling_status),
        _shrink(record.exception_details, pairs), _shrink(record.error_message, pairs),
        _shrink(record.provisioning_response, pairs), links, tracking]
    return f"{record.version}|{_dumps(body)}"


def head_version(head: str | None) -> int:
    """The version of a stored head (0 for none, no record or a deleted one)."""
    if not head:
        return 0
    return int(head.split("|", 1)[0])


def deleted_at(head: str | None) -> float | None:
    """When the record of this head was deleted (epoch seconds), None when it was not."""
    if head and head.startswith("0|x"):
        return float(head[3:])
    return None


def unpack_record(record_id: str, head: str | None) -> ProvisioningState | None:
    """The record of a stored head; None for no record or a deleted one."""
    if head is None:
        return None
    version_text, _, packed = head.partition("|")
    if not packed or packed.startswith("x"):
        return None
    (name, status, created, modified, gks, gkr, calling, exception_details, error_message,
     response, links, tracking) = json.loads(packed)
    # Trailing Nones are not stored; a record stored before step_trace has 9 at most.
    tracking = list(tracking) + [None] * (10 - len(tracking))
    started = tracking[8]
    pairs = _ids(record_id, links) + _BY_LENGTH
    return ProvisioningState(
        id=record_id, name=name, status=_STATUS[status], created_on=from_micros(created),
        modified_on=from_micros(modified), version=int(version_text),
        gatekeeper_status=_from_opt(_GK_STATUS, gks),
        gatekeeper_reason=_from_opt(_GK_REASON, gkr), calling_status=_CALLING[calling],
        exception_details=_expand(exception_details, pairs) or "",
        error_message=_expand(error_message, pairs),
        provisioning_response=_expand(response, pairs),
        links={column: links.get(str(i)) for i, column in enumerate(LOOKUP_COLUMNS)},
        tracking=Tracking(
            channel_kind=_from_opt(_KINDS, tracking[0] or 0), step=tracking[1],
            step_version=tracking[2], step_event_id=tracking[3], failed_call=tracking[4],
            retry_attempt=int(tracking[5] or 0), calling_test_id=tracking[6],
            calling_test_version=tracking[7],
            calling_test_started_at=None if started is None else from_micros(started),
            step_trace=_unpack_trace(tracking[9])))


def _pack_snapshot(snapshot: Snapshot | None) -> int:
    """One small integer for the four states (0: none)."""
    if snapshot is None:
        return 0
    return (((_STATUS.index(snapshot.status) + 1) * 10
             + _opt(_GK_STATUS, snapshot.gatekeeper_status)) * 10
            + _opt(_GK_REASON, snapshot.gatekeeper_reason)) * 10 + _CALLING.index(
                snapshot.calling_status)


def _unpack_snapshot(code: int) -> Snapshot | None:
    if code == 0:
        return None
    calling, code = code % 10, code // 10
    gkr, code = code % 10, code // 10
    gks, status = code % 10, code // 10
    return Snapshot(_STATUS[status - 1], _from_opt(_GK_STATUS, gks),
                    _from_opt(_GK_REASON, gkr), _CALLING[calling])


def pack_entry(entry: HistoryEntry) -> str:
    """A history entry without its record id (the key names the record)."""
    event_type: int | str = (_EVENT_TYPES.index(entry.event_type)
                             if entry.event_type in _EVENT_TYPES else entry.event_type)
    trigger: int | str = (_TRIGGERS.index(entry.trigger) if entry.trigger in _TRIGGERS
                          else entry.trigger)
    body: list[Any] = [entry.version, entry.event_id, event_type, trigger,
                       _RESULTS.index(entry.outcome), _shrink_reason(entry.reason),
                       _pack_snapshot(entry.before), _pack_snapshot(entry.after),
                       micros(entry.at)]
    if entry.task_id is not None:
        body.append(entry.task_id)
    return _dumps(body)


def unpack_entry(record_id: str, packed: str) -> HistoryEntry:
    values = json.loads(packed)
    version, event_id, event_type, trigger, outcome, reason, before, after, at = values[:9]
    return HistoryEntry(
        record_id=record_id, version=version, event_id=event_id,
        event_type=_EVENT_TYPES[event_type] if isinstance(event_type, int) else event_type,
        trigger=_TRIGGERS[trigger] if isinstance(trigger, int) else trigger,
        outcome=_RESULTS[outcome], reason=_expand_reason(reason),
        before=_unpack_snapshot(before), after=_unpack_snapshot(after),
        at=from_micros(at), task_id=values[9] if len(values) > 9 else None)


def digest(text: str) -> str:
    """11 characters of a 64-bit digest of an event id or dedupe key: its dedupe marks are
    a kind ("a" accepted, "k" applied, "b" both; lua/window.lua) and this. Two ids of one
    record collide with a probability of about n² / 2⁶⁵ (n ids in the window)."""
    raw = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return base64.b64encode(raw).decode("ascii")[:11]


MARK_WIDTH = 22  # a 12-character mark and 10 digits of epoch seconds


def window_marks(blob: str) -> dict[str, int]:
    """The marks of an inline window (element 1 of a record list): mark -> seconds."""
    return {blob[i:i + 12]: int(blob[i + 12:i + MARK_WIDTH])
            for i in range(0, len(blob), MARK_WIDTH)}


def window_blob(marks: dict[str, int]) -> str:
    """The inline form of ``marks`` (window_marks' inverse), oldest first."""
    return "".join(f"{mark}{seen:010d}" for mark, seen in
                   sorted(marks.items(), key=lambda item: (item[1], item[0])))
