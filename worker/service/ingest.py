"""Accepting events: validate them, and queue each in its record's inbox, in order.

Every event is validated first; the valid ones are accepted into their records' inboxes in
one pipelined round trip (accepting the same event id again queues nothing: the accept
dedupe), and the records they touched are kicked for a drain. An invalid event is refused
with every problem and its field path; nothing is queued for it, and nothing valid is held
back because of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from statemachine import (
    LOOKUP_BY_PARENT,
    Event,
    EventType,
    InvalidEvent,
    ParentDeleted,
    Problem,
    format_time,
    parse_event,
)
from worker import tracing
from worker.envelope import EVENT, Envelope
from worker.service.context import Context


@dataclass(frozen=True, slots=True)
class Accepted:
    """What accepting one event did: the records it was queued for, and the new ones."""

    event: Event
    record_ids: tuple[str, ...]
    new: bool


@dataclass(frozen=True, slots=True)
class Refusal:
    """One refused event: its position (1-based line or index) and every problem."""

    line: int
    problems: tuple[Problem, ...]

    def lines(self) -> list[str]:
        return [f"line {self.line}: {problem}" for problem in self.problems]


@dataclass
class SubmitReport:
    accepted: int = 0
    duplicates: int = 0
    refused: list[Refusal] = field(default_factory=list)
    record_ids: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.refused


def targets(ctx: Context, event: Event) -> list[str]:
    """The records an event is for: its subject, or every record linking a deleted parent."""
    if event.type is EventType.PARENT_DELETED:
        assert isinstance(event.data, ParentDeleted)
        lookup = LOOKUP_BY_PARENT[event.data.table]
        return ctx.store.records_linking(lookup.column, event.data.parent_id)
    assert event.subject is not None
    return [event.subject]


def accept_all(
    ctx: Context, events: Sequence[Event], *, context: Mapping[str, Any] | None = None,
    message: Mapping[str, Any] | None = None,
) -> list[Accepted]:
    """Queue validated events in their records' inboxes (each linking record's, for
    ``parent.deleted``) in one pipelined round trip, in the given order. The caller kicks
    a drain for the records."""
    accepted_at = format_time(ctx.now())
    with tracing.span(tracing.ACCEPT,
                      parent=tracing.accept_parent([event.extensions for event in events]),
                      attributes={"provisioning.events": len(events)}):
        # Each envelope names the span that accepted it: the apply span links to it.
        context = {**(context or {}), tracing.TRACE_KEY: tracing.traceparent()}
        per_event = [targets(ctx, event) for event in events]
        items = [
            (record_id, event.id, Envelope(
                kind=EVENT, record_id=record_id, event_id=event.id,
                event=event.to_cloudevent(), accepted_at=accepted_at,
                context=context, message=dict(message) if message else None,
            ).encode())
            for event, record_ids in zip(events, per_event, strict=True)
            for record_id in record_ids
        ]
        # Accepting claims the records for a lease time: recovery sweeps leave them alone
        # meanwhile (a record waiting its turn in a backlog is not an orphan).
        added = (ctx.store.accept_many(items, now=time.time(),
                                       claim_seconds=ctx.settings.lease_seconds)
                 if items else [])
    results, start = [], 0
    for event, record_ids in zip(events, per_event, strict=True):
        flags = added[start:start + len(record_ids)]  # one per target, in order
        start += len(record_ids)
        results.append(Accepted(event, tuple(record_ids), any(flags)))
    return results


def validate(items: Iterable[tuple[int, Any]]) -> tuple[list[Event], list[Refusal]]:
    """Parse every (line, raw event); return the valid events and the refusals."""
    events: list[Event] = []
    refused: list[Refusal] = []
    for line, raw in items:
        try:
            events.append(parse_event(raw))
        except InvalidEvent as exc:
            refused.append(Refusal(line, exc.problems))
    return events, refused


def submit_events(
    ctx: Context, items: Iterable[tuple[int, Any]], *,
    kick: Callable[[Sequence[str]], None] | None = None,
    context: Mapping[str, Any] | None = None,
) -> SubmitReport:
    """Validate and accept (line, raw event) pairs, then kick the records they touched
    (``ctx.kick_many`` unless ``kick`` is given: batches of records per drain task)."""
    events, refused = validate(items)
    report = SubmitReport(refused=refused)
    touched: dict[str, None] = {}
    for accepted in accept_all(ctx, events, context=context):
        if accepted.new or not accepted.record_ids:
            report.accepted += 1
        else:
            report.duplicates += 1
        touched.update(dict.fromkeys(accepted.record_ids))
    report.record_ids = list(touched)
    if touched:
        (kick or ctx.kick_many)(report.record_ids)
    return report
