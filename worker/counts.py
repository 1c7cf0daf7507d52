"""Read-only counts of the store, for metrics scrapes and health checks.

Each is one pipelined round trip that loads no record: the size of every status index
set of every shard (``<b>x:<status>:<kind>``, SCARD) and of each shard's failed-task zset
(``<b>failed``, ZCARD). ``RedisStateStore.list_records`` would load every record; a
scrape every 15 s must not.
"""

from __future__ import annotations

import time
from typing import cast

import redis

from statemachine import StatusReason
from worker.errors import StoreError
from worker.keys import Keys
from worker.settings import Settings


def probe_client(settings: Settings) -> redis.Redis:
    """A client for probes and scrapes: short timeouts, no retries, so a dead Redis answers
    within ``PROVISIONING_HEALTH_TIMEOUT`` instead of hanging the probe. A ``RedisCluster``
    for a cluster URL (worker/connect.py)."""
    from worker.connect import store_client

    client: redis.Redis = store_client(
        settings.redis_url, connect_timeout=settings.health_timeout,
        timeout=settings.health_timeout, retry_on_timeout=False)
    return client


class StoreCounts:
    """Counts read from the store's index sets and failed-task zset."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    def ping(self) -> float:
        """Round-trip time of a PING, in seconds."""
        started = time.perf_counter()
        try:
            self.client.ping()
        except redis.RedisError as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}") from exc
        return time.perf_counter() - started

    def records_by_status(self) -> dict[StatusReason, int]:
        """How many live records have each status reason (SCARD of each index set)."""
        try:
            pipe = self.client.pipeline(transaction=False)
            for status in StatusReason:
                for key in self.keys.index_sets(status=status):
                    pipe.scard(key)
            sizes = cast(list[int], pipe.execute())
        except redis.RedisError as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}") from exc
        per_status = len(sizes) // len(StatusReason)
        return {status: sum(int(size) for size in sizes[i * per_status:(i + 1) * per_status])
                for i, status in enumerate(StatusReason)}

    def outbox_entries(self) -> int:
        """Entries in the Dataverse outbox, every shard (LLEN)."""
        try:
            pipe = self.client.pipeline(transaction=False)
            for shard in range(self.keys.shards):
                pipe.llen(self.keys.outbox(shard))
            return sum(int(size) for size in pipe.execute())
        except redis.RedisError as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}") from exc

    def failed_tasks(self) -> int:
        """Entries in the failed-task store (ZCARD)."""
        try:
            pipe = self.client.pipeline(transaction=False)
            for shard in range(self.keys.shards):
                pipe.zcard(self.keys.failed(shard))
            return sum(int(size) for size in pipe.execute())
        except redis.RedisError as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}") from exc
