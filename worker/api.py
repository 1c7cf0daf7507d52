"""``worker.submit``: validate events and queue them, from Python.

Every event is validated first; the valid ones are accepted into their records' inboxes in
one pipelined round trip, and one drain task per batch of records asks a worker to apply
them. An invalid event is refused with every problem and its field path; nothing is queued
for it, and nothing valid is held back because of it (``worker.service.ingest``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from worker.app import process_service
from worker.service import Service, SubmitReport, submit_events

__all__ = ["SubmitReport", "submit"]


def submit(events: Mapping[str, Any] | Iterable[Mapping[str, Any]], *,
           service: Service | None = None) -> SubmitReport:
    """Validate and queue one event or many; returns what was accepted and refused.

    Uses the Redis store and Celery broker of the environment (PROVISIONING_*) unless a
    ``service`` is given. Refused events carry their index (1-based) and problems.
    """
    batch = [events] if isinstance(events, Mapping) else list(events)
    return submit_events(service or process_service(), enumerate(batch, start=1))
