"""What an operator does with the failed-task store: select, replay, discard, audit.

Bulk actions work on a snapshot: the ids are chosen before anything is done, so entries
that arrive meanwhile are left alone (Sidekiq's issues #3243 and #5997 show the other
way). A replay goes through the normal path (a ``provisioning.handle_event`` message, or
a retry through the record's inbox) and leaves the store only once the worker has
processed it; it is never swallowed by the accepted-event dedupe, and the applied-key
dedupe still keeps it from changing a record twice. Every action is audited.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from statemachine import InvalidEvent, RetryDue, format_time, parse_event
from worker.envelope import Envelope
from worker.service import Service
from worker.store.failed import FailedTask
from worker.task_names import HANDLE_EVENT, RETRY_TASK

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

