"""Read-only counts of the store, for metrics scrapes and health checks.

Each is one pipelined round trip that loads no record: the size of every status index
set of every shard (``<b>x:<status>:<kind>``, SCARD), of each shard's failed-task zset
(``<b>failed``, ZCARD), and the backlog (each shard's pending zset's size and oldest
member, each shard's outbox's size and head). ``RedisStateStore.list_records`` would load
every record; a scrape every 15 s must not.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import redis

from statemachine import StatusReason
from worker.keys import Keys
from worker.store.translate import translated


@dataclass(frozen=True)
class Backlog:
    """Work waiting, as the store holds it (summed over the shards)."""

    pending: int  # records with accepted events not yet applied (ZCARD of each pending)
    oldest_pending_since: float | None  # epoch seconds the longest-waiting one got work
    outbox: int  # entries the Dataverse mirror has not sent (LLEN of each shard's outbox)
    outbox_heads: tuple[str, ...]  # the oldest entry of each non-empty shard's outbox


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
                for key in self.keys.index_sets(status=status):
                    pipe.scard(key)
            sizes = cast(list[int], pipe.execute())
        per_status = len(sizes) // len(StatusReason)
        return {status: sum(int(size) for size in sizes[i * per_status:(i + 1) * per_status])
                for i, status in enumerate(StatusReason)}

    def outbox_entries(self) -> int:
        """Entries in the Dataverse outbox, every shard (LLEN)."""
        return self._sum_shards(lambda pipe, shard: pipe.llen(self.keys.outbox(shard)))

    def failed_tasks(self) -> int:
        """Entries in the failed-task store (ZCARD of each shard's)."""
        return self._sum_shards(lambda pipe, shard: pipe.zcard(self.keys.failed(shard)))

    def failed_tasks_since(self, since: float) -> int:
        """Entries whose last failure is at or after ``since`` (epoch s), every shard's."""
        return self._sum_shards(
            lambda pipe, shard: pipe.zcount(self.keys.failed(shard), since, "+inf"))

    def _sum_shards(self, ask: Callable[[Any, int], object]) -> int:
        """The sum of one integer answer per shard, in one pipelined round trip."""
        with translated():
            pipe = self.client.pipeline(transaction=False)
            for shard in range(self.keys.shards):
                ask(pipe, shard)
            return sum(int(size) for size in pipe.execute())

    def backlog(self) -> Backlog:
        """Every shard's pending zset and outbox, in one pipelined round trip. A record's
        pending score is the time it got work and stays until its inbox is drained, so the
        oldest one bounds the age of the oldest unapplied event."""
        k = self.keys
        with translated():
            pipe = self.client.pipeline(transaction=False)
            for shard in range(k.shards):
                pipe.zcard(k.pending(shard))
                pipe.zrange(k.pending(shard), 0, 0, withscores=True)
                pipe.llen(k.outbox(shard))
                pipe.lindex(k.outbox(shard), 0)
            answers = pipe.execute()
        rows = [answers[i:i + 4] for i in range(0, len(answers), 4)]
        oldest = [float(first[0][1]) for _, first, _, _ in rows if first]
        return Backlog(pending=sum(int(row[0]) for row in rows),
                       oldest_pending_since=min(oldest) if oldest else None,
                       outbox=sum(int(row[2]) for row in rows),
                       outbox_heads=tuple(row[3] for row in rows if row[3] is not None))
