"""Which failed-task entries an operator means: every given condition must hold."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from statemachine import parse_time
from worker.store.failed import FailedTask

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
