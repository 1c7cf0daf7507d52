"""What an operator does with the failed-task store: select, replay, discard, audit.

Bulk actions work on a snapshot: the ids are chosen before anything is done, so entries
that arrive meanwhile are left alone (Sidekiq's issues #3243 and #5997 show the other
way). A replay goes through the normal path (a ``provisioning.handle_event`` message, or
a retry through the record's inbox) and leaves the store only once the worker has
processed it; it is never swallowed by the accepted-event dedupe, and the applied-key
dedupe still keeps it from changing a record twice. Every action is audited.

``choose`` and ``act`` are the one rule every entry point follows (the CLI's ``failed
replay|discard`` and the HTTP API's): the snapshot, then each entry replayed or discarded
under the identity the entry point vouches for: ``cli:<login>`` (or ``cli:<--operator>``)
from the CLI, the token's name or the JWT's user from the HTTP API, never a name an HTTP
request declares. Sending a replay is the entry point's (``SendEvent``): no Celery here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from statemachine import InvalidEvent, RetryDue, format_time, parse_event
from worker.envelope import Envelope
from worker.service import Service
from worker.store.failed import FailedStore, FailedTask
from worker.store.failed_filter import FailedFilter, select
from worker.task_names import HANDLE_EVENT, RETRY_TASK

SendEvent = Callable[[Mapping[str, Any], str], None]
Verb = Literal["replay", "discard"]
# Called once per entry as ``act`` goes: (entry id, done or would be, what happened).
OnResult = Callable[[str, bool, str], None]


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



@dataclass
class ActionReport:
    """What ``act`` did: ``done`` holds the entries replayed or discarded (none on a dry
    run), ``refused`` those a replay could not send, each with why; ``results`` one line
    per entry of the snapshot, in order."""

    verb: Verb
    dry_run: bool
    snapshot: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    results: list[tuple[str, str]] = field(default_factory=list)


def choose(failed: FailedStore, *, ids: Sequence[str] | None = None,
           flt: FailedFilter | None = None) -> tuple[list[FailedTask], list[str]]:
    """The snapshot to act on, and the named ids that were not found. Exactly one of
    ``ids`` (named entries, in the order given, each once) and ``flt`` (every entry it
    matches, oldest last failure first) is given."""
    if (ids is None) == (flt is None):
        raise ValueError("name entry ids or give filters, not both and not neither")
    if flt is not None:
        return select(failed.all(), flt), []
    assert ids is not None
    found = {entry_id: failed.get(entry_id) for entry_id in dict.fromkeys(ids)}
    missing = [entry_id for entry_id, entry in found.items() if entry is None]
    return [entry for entry in found.values() if entry is not None], missing


def act(service: Service, verb: Verb, entries: Sequence[FailedTask], *, operator: str,
        send_event: SendEvent, reason: str = "", dry_run: bool = False,
        on_result: OnResult | None = None) -> ActionReport:
    """Replay or discard every entry of the snapshot, audited under ``operator``. A
    discard needs a reason (ValueError without one, before anything is done)."""
    if verb == "discard" and not reason.strip():
        raise ValueError("a discard needs a reason (it is audited)")
    acting = Operator(service, send_event, operator)
    report = ActionReport(verb=verb, dry_run=dry_run,
                          snapshot=[entry.id for entry in entries])
    for entry in entries:
        ok = True
        if verb == "replay":
            ok, result = acting.replay(entry, dry_run=dry_run)
            if not ok:
                report.refused.append((entry.id, result))
            elif not dry_run:
                report.done.append(entry.id)
        else:
            result = acting.discard(entry, reason, dry_run=dry_run)
            if not dry_run:
                report.done.append(entry.id)
        report.results.append((entry.id, result))
        if on_result is not None:
            on_result(entry.id, ok, result)
    return report
