"""The store contract (tests/store_contract.py, tests/store_v2_contract.py) on a Redis
Cluster of 3 masters (tests/cluster.py), through ``redis+cluster://`` and redis-py's
RedisCluster: every script touches one slot, batches are split by node.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from worker.keys import Keys
from worker.store import StateStore
from worker.store.connect import store_client
from worker.store.failed import FailedStore, RedisFailedStore
from worker.store.redis import RedisStateStore

# Before the import: pytest rewrites the asserts of the shared contract too.
pytest.register_assert_rewrite("tests.store_contract", "tests.store_v2_contract")
from tests.store_contract import LEASE, OWNER, StoreContract, head_commit, provision  # noqa: E402
from tests.store_v2_contract import FailedV2Contract, StoreV2Contract, Wall  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture
def client(redis_cluster: Any) -> Iterator[Any]:
    redis_cluster.flush()
    connection = store_client(redis_cluster.url)
    yield connection
    connection.close()


@pytest.fixture
def store(client: Any) -> StateStore:
    return RedisStateStore(client, keys=Keys("contract"))


@pytest.fixture
def make_store(client: Any) -> Callable[[int], StateStore]:
    def make(history_limit: int) -> StateStore:
        return RedisStateStore(client, keys=Keys("contract-limited"),
                               history_limit=history_limit)

    return make


@pytest.fixture
def make_windowed(client: Any) -> Callable[[float], tuple[StateStore, Wall]]:
    def make(window: float) -> tuple[StateStore, Wall]:
        wall = Wall()
        return RedisStateStore(client, keys=Keys("contract-windowed"), dedupe_window=window,
                               wall=wall), wall

    return make


@pytest.fixture
def failed_store(client: Any) -> FailedStore:
    return RedisFailedStore(client, Keys("contract"))


class TestClusterStoreContract(StoreContract, StoreV2Contract, FailedV2Contract):
    """Every contract test, on a 3-master Redis Cluster."""


def test_the_shards_spread_over_every_master(client: Any) -> None:
    keys = Keys("contract")
    owners = {client.get_node_from_key(keys.pending(shard)).name for shard in range(16)}
    assert len(owners) == 3


def test_a_batch_over_records_of_every_master_lands_in_one_call(client: Any,
                                                               store: StateStore) -> None:
    ids = [f"4f9d1c1e-0000-4000-8000-{n:012d}" for n in range(40)]
    assert isinstance(store, RedisStateStore)
    assert len({client.get_node_from_key(store.keys.record(rid)).name for rid in ids}) == 3
    items = [(rid, f"evt-{rid}", json.dumps(provision(rid, f"evt-{rid}"))) for rid in ids]
    assert store.accept_many(items, now=1.0) == [True] * 40
    claims = store.acquire_many(ids, OWNER, LEASE, 5)
    assert all(claim is not None for claim in claims)
    commits = [head_commit(store, rid) for rid in ids]
    statuses, released = store.commit_many(commits, release=ids, owner=OWNER)
    assert [s.value for s in statuses] == ["ok"] * 40
    assert [int(r) for r in released] == [1] * 40
    assert len(store.list_records()) == 40


def test_pipelines_reload_the_scripts_one_master_lost(redis_cluster: Any, client: Any,
                                                      store: StateStore) -> None:
    """A master that lost its scripts (restarted) answers NOSCRIPT to its share of a batch;
    the others ran theirs. Only the refused commands are sent again."""
    ids = [f"4f9d1c1e-0000-4000-8000-{n:012d}" for n in range(12)]
    items = [(rid, f"evt-{rid}", json.dumps(provision(rid, f"evt-{rid}"))) for rid in ids]
    assert store.accept_many(items[:6], now=1.0) == [True] * 6
    lost = redis_cluster.nodes[1].client()
    lost.script_flush()
    lost.close()
    assert store.accept_many(items, now=1.0) == [False] * 6 + [True] * 6
    assert all(store.inbox_size(rid) == 1 for rid in ids)
