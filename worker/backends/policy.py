"""The retry policy of backend calls (SPEC §4): which failures are transient, and how long
to wait before the next try."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

from worker.settings import BackendSettings

# SPEC §4: these statuses are transient along with connection errors and timeouts.
TRANSIENT_STATUSES = frozenset({408, 425, 429})


def is_transient(status: int) -> bool:
    """Whether an HTTP status is worth another try: 408, 425, 429 and 5xx."""
    return status in TRANSIENT_STATUSES or status >= 500


def backoff_delay(attempt: int, retry_after: float | None, settings: BackendSettings,
                  rng: random.Random) -> float:
    """Seconds to wait before try ``attempt + 1``.

    The server's Retry-After wins when given (already capped); otherwise exponential
    backoff with full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter").
    """
    if retry_after is not None:
        return retry_after
    ceiling = min(settings.backoff_cap, settings.backoff_base * 2 ** (attempt - 1))
    return rng.uniform(0, ceiling)


def retry_after(headers: httpx.Headers, cap: float) -> float | None:
    """Seconds the server asked us to wait (RFC 9110 §10.2.3), capped; None when absent.

    The value is delay-seconds or an HTTP date; an unreadable value is ignored.
    """
    value = headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return min(max(seconds, 0.0), cap)
