"""Read-only counts of the store, for metrics scrapes and health checks.

Each is one round trip that loads no record: the size of every status index set
(``<prefix>:idx:status:<code>``, SCARD) and of the failed-task store (``<prefix>:failed``,
ZCARD). ``RedisStateStore.list_records`` would load every record; a scrape every 15 s
must not.
"""

from __future__ import annotations

import time
from typing import cast

import redis

from statemachine import StatusReason
from worker.keys import Keys
from worker.store.translate import translated


class StoreCounts:
    """Counts read from the store's index sets and failed-task zset."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    def ping(self) -> float:
        """Round-trip time of a PING, in seconds."""
        started = time.perf_counter()
        with translated():
            self.client.ping()
        return time.perf_counter() - started

    def records_by_status(self) -> dict[StatusReason, int]:
        """How many live records have each status reason (SCARD of each index set)."""
        with translated():
            pipe = self.client.pipeline(transaction=False)
            for status in StatusReason:
                pipe.scard(self.keys.by_status(int(status)))
            sizes = cast(list[int], pipe.execute())
        return {status: int(size) for status, size in zip(StatusReason, sizes, strict=True)}

    def failed_tasks(self) -> int:
        """Entries in the failed-task store (ZCARD)."""
        with translated():
            return int(self.client.zcard(self.keys.failed))
