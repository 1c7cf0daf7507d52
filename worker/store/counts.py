"""Read-only counts of the store, for metrics scrapes and health checks.

Each is one round trip that loads no record: the size of every status index set
(``<prefix>:idx:status:<code>``, SCARD), of the failed-task store (``<prefix>:failed``,
ZCARD), and the backlog (the pending set's size and oldest member, the outbox's size and
head). ``RedisStateStore.list_records`` would load every record; a scrape every 15 s
must not.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import cast

import redis

from statemachine import StatusReason
from worker.keys import Keys
from worker.store.translate import translated


@dataclass(frozen=True)
class Backlog:
    """Work waiting, as the store holds it."""

    pending: int  # records with accepted events not yet applied (ZCARD <prefix>:pending)
    oldest_pending_since: float | None  # epoch seconds the longest-waiting one got work
    outbox: int  # entries the Dataverse mirror has not sent (LLEN <prefix>:outbox)
    outbox_head: str | None  # the oldest of them, as stored (worker/dataverse/outbox.py)


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

    def backlog(self) -> Backlog:
        """The pending set and the outbox, in one pipelined round trip. A record's pending
        score is the time it got work and stays until its inbox is drained, so the oldest
        one bounds the age of the oldest unapplied event."""
        with translated():
            pipe = self.client.pipeline(transaction=False)
            pipe.zcard(self.keys.pending)
            pipe.zrange(self.keys.pending, 0, 0, withscores=True)
            pipe.llen(self.keys.outbox)
            pipe.lindex(self.keys.outbox, 0)
            pending, oldest, outbox, head = pipe.execute()
        return Backlog(pending=int(pending),
                       oldest_pending_since=float(oldest[0][1]) if oldest else None,
                       outbox=int(outbox), outbox_head=head)
