"""The one translation of redis-py's errors into the worker's ``StoreError``.

Every adapter that talks to Redis (the record store, the failed-task store, the counts and
the heartbeat of ``worker.ops``, the Dataverse mirror's state) wraps its calls in
:func:`translated`, so callers above the store see ``StoreError`` only, raised ``from`` the
redis-py error that caused it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis

from worker.errors import StoreError


@contextmanager
def translated() -> Iterator[None]:
    """Translate redis-py errors raised inside the block into StoreError."""
    try:
        yield
    except redis.RedisError as exc:
        raise StoreError(f"{type(exc).__name__}: {exc}") from exc
