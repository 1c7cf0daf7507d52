"""The record store and the failed-task store, on Redis, each with an in-memory twin.

* ``protocol``: the ``StateStore`` Protocol and the values it takes and returns;
* ``redis``: ``RedisStateStore``, atomic through the Lua scripts in ``lua/`` (``scripts``
  runs them; ``outbox``: the Dataverse outbox, one list per shard);
* ``memory``: ``MemoryStateStore``, the twin for unit tests;
* ``failed``: the failed-task store (``FailedStore``, Redis and memory) and its entries;
* ``failed_filter``: which entries an operator means;
* ``counts``: cheap counts of the store's indexes, for health checks and scrapes;
* ``translate``: the one translation of redis-py errors into ``StoreError``;
* ``codec``: store v2's compact forms of records, history entries and dedupe marks;
* ``connect``: the client of a store URL (one Redis or a Redis Cluster);
* ``stamp``: the stored format's stamp; ``retention``: what beat's retention sweep drops;
  ``migrate``: a v1 store to v2.
"""

from worker.store.counts import StoreCounts
from worker.store.failed import (
    FailedStore,
    FailedTask,
    MemoryFailedStore,
    RedisFailedStore,
    entry_id,
)
from worker.store.failed_filter import FailedFilter, select
from worker.store.memory import MemoryStateStore
from worker.store.protocol import (
    Claim,
    Commit,
    CommitStatus,
    Deletion,
    InboxItem,
    Release,
    StateStore,
)
from worker.store.redis import RedisStateStore
from worker.store.translate import translated

__all__ = [
    "Claim",
    "Commit",
    "CommitStatus",
    "Deletion",
    "FailedFilter",
    "FailedStore",
    "FailedTask",
    "InboxItem",
    "MemoryFailedStore",
    "MemoryStateStore",
    "RedisFailedStore",
    "RedisStateStore",
    "Release",
    "StateStore",
    "StoreCounts",
    "entry_id",
    "select",
    "translated",
]
