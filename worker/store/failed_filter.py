"""Which failed-task entries an operator means: every given condition must hold."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from statemachine import parse_time
from worker.store.failed import FailedTask


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
