"""``worker.submit``: validate events and queue them, from Python or the CLI.

Every event is validated first; the valid ones are accepted into their records' inboxes
in one pipelined round trip, and one drain task per batch of records asks a worker to
apply them.
An invalid event is refused with every problem and its field path; nothing is queued
for it, and nothing valid is held back because of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from statemachine import Event, InvalidEvent, Problem, parse_event

if TYPE_CHECKING:
    from worker.service import Service


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
    service: Service, items: Iterable[tuple[int, Any]], *,
    kick: Callable[[Sequence[str]], None] | None = None,
    context: Mapping[str, Any] | None = None,
) -> SubmitReport:
    """Validate and accept (line, raw event) pairs through ``service``, then kick the
    records they touched (``service.kick_many``: batches of records per drain task)."""
    events, refused = validate(items)
    report = SubmitReport(refused=refused)
    touched: dict[str, None] = {}
    for accepted in service.accept_all(events, context=context):
        if accepted.new or not accepted.record_ids:
            report.accepted += 1
        else:
            report.duplicates += 1
        touched.update(dict.fromkeys(accepted.record_ids))
    report.record_ids = list(touched)
    if touched:
        (kick or service.kick_many)(report.record_ids)
    return report


def submit(events: Mapping[str, Any] | Iterable[Mapping[str, Any]], *,
           service: Service | None = None) -> SubmitReport:
    """Validate and queue one event or many; returns what was accepted and refused.

    Uses the Redis store and Celery broker of the environment (PROVISIONING_*) unless a
    ``service`` is given. Refused events carry their index (1-based) and problems.
    """
    batch = [events] if isinstance(events, Mapping) else list(events)
    if service is None:
        from worker import bootstrap
        from worker.app import kick, kick_many

        service = bootstrap.process_service(kick, kick_many)
    return submit_events(service, enumerate(batch, start=1))
