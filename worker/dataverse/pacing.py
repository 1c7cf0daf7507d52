"""Pacing below Dataverse's service protection limits (GCRA, a token bucket in one number).

Dataverse allows 6,000 requests per user in a sliding 5-minute window (and 52 at once;
the mirror sends one at a time). ``Pacer.wait()`` before each request lets ``burst``
requests go back to back, then spaces them ``window / requests_per_window`` apart. Its one
number of state, the theoretical arrival time ``tat``, is kept in Redis between runs, so
consecutive mirror runs in different worker processes share one budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from worker import gcra


class Pacer:
    def __init__(self, requests_per_window: int, window_seconds: float, burst: int, *,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep, tat: float = 0.0) -> None:
        if requests_per_window < 1 or burst < 1 or window_seconds <= 0:
            raise ValueError("requests_per_window, burst and window_seconds must be positive")
        self.interval = window_seconds / requests_per_window
        self.burst = burst
        self.tat = tat
        self._clock = clock
        self._sleep = sleep

    def delay(self) -> float:
        """Seconds the next request must wait (0: it may go now)."""
        return gcra.delay(self.tat, self._clock(), self.interval, self.burst)

    def wait(self) -> float:
        """Sleep until the next request may go, and count it; returns the seconds slept."""
        pause = self.delay()
        if pause > 0:
            self._sleep(pause)
        self.tat = gcra.advance(self.tat, self._clock(), self.interval)
        return pause
