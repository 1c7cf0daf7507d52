"""GCRA (the generic cell rate algorithm): a rate limit as one number of state.

``tat``, the theoretical arrival time, is when the next request would be due if requests
were spaced exactly ``interval`` apart. A request may go at once while ``tat`` is less than
``burst - 1`` intervals ahead of now; otherwise it must wait the difference. Used by the
Dataverse mirror's pacer (``worker.dataverse.pacing``) and by the backends' shared rate
limits (``worker.backends.limits``, whose Redis script computes the same two formulas).
"""

from __future__ import annotations


def delay(tat: float, now: float, interval: float, burst: int) -> float:
    """Seconds a request arriving at ``now`` must wait (0: it may go now)."""
    return max(0.0, max(tat, now) - (burst - 1) * interval - now)


def advance(tat: float, now: float, interval: float) -> float:
    """``tat`` once a request has gone at ``now``."""
    return max(tat, now) + interval


def reserve(tat: float, now: float, interval: float, burst: int) -> tuple[float, float]:
    """Book the next slot for a request arriving at ``now``: (seconds it must wait, the
    new ``tat``). The slot is the request's whether it waits or not, so waiters never
    race each other for the same slot."""
    wait = delay(tat, now, interval, burst)
    return wait, advance(tat, now + wait, interval)
