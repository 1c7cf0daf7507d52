"""The Dataverse outbox in store v2: one list per shard (``<b>outbox``), each in commit
order, appended by the commit script in the same step as the record. A record's entries
are all in its shard's list, so per record they come in commit order; one consumer at a
time (the mirror's lock) reads one shard's head at a time."""

from __future__ import annotations

import math
import threading
from typing import Any, cast

import redis

from worker.keys import Keys
from worker.store.scripts import ScriptRunner
from worker.store.translate import translated


class ShardedOutbox:
    """Peek, acknowledge, count and trim the shards' outboxes."""

    def __init__(self, client: redis.Redis | Any, keys: Keys, runner: ScriptRunner) -> None:
        self.client = client
        self.keys = keys
        self._runner = runner
        self._lock = threading.Lock()
        self._shard = keys.shards - 1  # the shard the last peek read
        self._unacked = 0

    def sizes(self) -> list[int]:
        def fill(pipe: Any) -> None:
            for shard in range(self.keys.shards):
                pipe.llen(self.keys.outbox(shard))

        return [int(size) for size in self._runner.pipelined(fill)]

    def peek(self, count: int) -> list[str]:
        """The oldest ``count`` entries of one shard's outbox: the shard the last peek read
        while it has entries not acknowledged, else the next one that has any. ``ack``
        acknowledges this shard's."""
        with self._lock:
            sizes = self.sizes()
            shards = self.keys.shards
            start = self._shard if self._unacked else self._shard + 1
            for step in range(shards):
                shard = (start + step) % shards
                if sizes[shard]:
                    with translated():
                        rows = cast(list[str], self.client.lrange(
                            self.keys.outbox(shard), 0, count - 1))
                    self._shard, self._unacked = shard, len(rows)
                    return list(rows)
            self._unacked = 0
            return []

    def ack(self, count: int) -> None:
        with self._lock, translated():
            self.client.ltrim(self.keys.outbox(self._shard), count, -1)
            self._unacked = max(0, self._unacked - count)

    def size(self) -> int:
        return sum(self.sizes())

    def trim(self, keep: int) -> int:
        """Each shard keeps its newest ``ceil(keep / shards)`` entries; how many went."""
        per_shard = math.ceil(keep / self.keys.shards)
        sizes = self.sizes()

        def fill(pipe: Any) -> None:
            for shard, size in enumerate(sizes):
                if size > per_shard:
                    pipe.ltrim(self.keys.outbox(shard), size - per_shard, -1)

        self._runner.pipelined(fill)
        return sum(max(0, size - per_shard) for size in sizes)
