"""What an operator does with the failed-task store: select, replay, discard, audit.

Bulk actions work on a snapshot: the ids are chosen before anything is done, so entries
that arrive meanwhile are left alone (Sidekiq's issues #3243 and #5997 show the other
way). A replay goes through the normal path (a ``provisioning.handle_event`` message, or
a retry through the record's inbox) and leaves the store only once the worker has
processed it; it is never swallowed by the accepted-event dedupe, and the applied-key
dedupe still keeps it from changing a record twice. Every action is audited.
"""

from __future__ import annotations

import getpass
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from statemachine import (
    InvalidEvent,
    RetryDue,
    format_time,
    parse_event,
    parse_time,
)
from worker.envelope import Envelope
from worker.failed import FailedTask
from worker.service import HANDLE_EVENT, RETRY_TASK, Service

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_moment(text: str, now: datetime) -> datetime:
    """``30m``, ``2h``, ``7d`` (that long before ``now``) or an ISO 8601 timestamp."""
    match = _DURATION.match(text.strip())
    if match:
        return now - timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    try:
        return parse_time(text)
    except (TypeError, ValueError):
        raise ValueError(f"not a duration (30m, 2h, 7d) or a timestamp: {text!r}") from None


@dataclass(frozen=True, slots=True)
class FailedFilter:
    """Which entries an operator means; every given condition must hold."""

    event_type: str | None = None
    record_id: str | None = None
    exception: str | None = None
    task: str | None = None
    since: datetime | None = None  # last failed at or after
    older_than: datetime | None = None  # last failed before

    def matches(self, entry: FailedTask) -> bool:
        last = parse_time(entry.last_failed_at) if entry.last_failed_at else None
        return (
            (self.event_type is None or entry.event_type == self.event_type)
            and (self.record_id is None or entry.record_id == self.record_id)
            and (self.exception is None or entry.exception == self.exception)
            and (self.task is None or entry.task == self.task)
            and (self.since is None or (last is not None and last >= self.since))
            and (self.older_than is None or (last is not None and last < self.older_than))
        )


def select(entries: Iterable[FailedTask], flt: FailedFilter) -> list[FailedTask]:
    return [entry for entry in entries if flt.matches(entry)]


def operator_name(given: str | None) -> str:
    if given:
        return given
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (a container without /etc/passwd entry)
        return "unknown"


SendEvent = Callable[[Mapping[str, Any], str], None]


class Operator:
    """Replays and discards failed-task entries through ``service``, auditing each."""

    def __init__(self, service: Service, send_event: SendEvent, operator: str) -> None:
        self.service = service
        self.send_event = send_event  # (event, replay_of entry id) -> a handle_event message
        self.operator = operator

    def audit(self, action: str, entry: FailedTask, result: str, reason: str = "") -> None:
        self.service.failed.append_audit({
            "at": format_time(self.service.now()), "operator": self.operator,
            "action": action, "entry": entry.id, "task": entry.task,
            "event_id": entry.event_id, "record_id": entry.record_id,
            "reason": reason, "result": result,
        })

    def replay(self, entry: FailedTask, *, dry_run: bool = False) -> tuple[bool, str]:
        """Send ``entry`` through the normal path again. Returns (sent, what happened)."""
        if entry.task == RETRY_TASK:
            return self._replay_retry(entry, dry_run)
        if entry.task != HANDLE_EVENT:
            return False, f"cannot replay a {entry.task} entry"
        args = entry.body.get("args") if isinstance(entry.body, Mapping) else None
        raw = args[0] if isinstance(args, list) and args else None
        try:
            event = parse_event(raw)
        except InvalidEvent as exc:
            result = f"still invalid: {exc}"
            if not dry_run:
                self.audit("replay", entry, result)
            return False, result
        targets = self.service.targets(event)
        if dry_run:
            return True, f"would send {event.type.value} {event.id} for {len(targets)} record(s)"
        for record_id in targets:
            # Let the accepted-event dedupe take it again; the applied-key dedupe still
            # keeps it from changing a record twice.
            self.service.store.forget_accepted(record_id, event.id)
        result = f"sent {event.type.value} {event.id}"
        self.audit("replay", entry, result)  # before sending: the worker may resolve it at once
        self.send_event(event.to_cloudevent(), entry.id)
        return True, result

    def _replay_retry(self, entry: FailedTask, dry_run: bool) -> tuple[bool, str]:
        record_id = entry.record_id
        record = self.service.store.load(record_id) if record_id else None
        if record is None:
            return False, f"record {record_id} no longer exists"
        command = RetryDue(record.id, record.version, format_time(record.created_on))
        if dry_run:
            return True, f"would retry record {record.id} ({record.status.label})"
        envelope = replace(Envelope.internal(command, format_time(self.service.now())),
                           context={"replay_of": entry.id})
        result = f"retry queued for record {record.id} ({record.status.label})"
        self.audit("replay", entry, result)
        self.service.store.forget_accepted(record.id, envelope.event_id)
        self.service.store.accept(record.id, envelope.event_id, envelope.encode(),
                                  now=self.service.now().timestamp())
        self.service.kick(record.id)
        return True, result

    def discard(self, entry: FailedTask, reason: str, *, dry_run: bool = False) -> str:
        if dry_run:
            return "would discard"
        self.service.failed.remove(entry.id)
        self.audit("discard", entry, "discarded", reason)
        return "discarded"

