"""Sending the worker's own tasks through the Celery broker: the kick functions.

A ``Dispatch`` is given the Celery application (``worker.app.app``) by the composition
root; it imports no Celery module itself, so the layers below the app stay free of it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from worker.task_names import DRAIN_RECORD, DRAIN_RECORDS, HANDLE_EVENT


class TaskSender(Protocol):
    """What Dispatch needs of a Celery application."""

    def send_task(self, name: str, args: Any = None, kwargs: Any = None,
                  **options: Any) -> Any: ...

    def producer_or_acquire(self, producer: Any = None) -> Any: ...


class Dispatch:
    """Asks some worker to drain records, or to process a replayed event."""

    def __init__(self, app: TaskSender, batch_records: int) -> None:
        self.app = app
        self.batch_records = batch_records

    def kick(self, record_id: str) -> None:
        """Ask some worker to drain ``record_id``'s inbox."""
        self.app.send_task(DRAIN_RECORD, args=[record_id])

    def kick_many(self, record_ids: Sequence[str]) -> None:
        """Ask workers to drain these records' inboxes: one ``drain_records`` task per
        ``batch_records`` records, sent in one broker round trip."""
        size = self.batch_records
        chunks = [list(record_ids[start:start + size])
                  for start in range(0, len(record_ids), size)]
        if len(chunks) == 1:
            self.app.send_task(DRAIN_RECORDS, args=[chunks[0]])
            return
        with self.app.producer_or_acquire() as producer:
            for chunk in chunks:
                self.app.send_task(DRAIN_RECORDS, args=[chunk], producer=producer)

    def replay(self, event: Mapping[str, Any], entry_id: str) -> None:
        """Send a failed-task entry's event through the normal path again."""
        self.app.send_task(HANDLE_EVENT, args=[dict(event)], kwargs={"replay_of": entry_id})
