"""The store contract (tests/store_contract.py) against a real Redis server.

The same tests run on the in-memory twin and fakeredis in tests/unit/test_store_contract.py;
here the Lua scripts run on redis-server itself. ``redis_url`` (tests/conftest.py) gives
each test an emptied database and skips without a redis-server (fails under CI=true).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import redis

from worker.keys import Keys
from worker.store.failed import FailedStore, RedisFailedStore
from worker.store.protocol import StateStore
from worker.store.redis import RedisStateStore

# Before the import: pytest rewrites the asserts of the shared contract too.
pytest.register_assert_rewrite("tests.store_contract", "tests.store_v2_contract")
from tests.store_contract import StoreContract  # noqa: E402
from tests.store_v2_contract import FailedV2Contract, StoreV2Contract, Wall  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url, decode_responses=True)
    yield connection
    connection.close()


@pytest.fixture
def store(client: redis.Redis) -> StateStore:
    return RedisStateStore(client, keys=Keys("contract"))


@pytest.fixture
def make_store(client: redis.Redis) -> Callable[[int], StateStore]:
    def make(history_limit: int) -> StateStore:
        return RedisStateStore(client, keys=Keys("contract-limited"),
                               history_limit=history_limit)

    return make


@pytest.fixture
def failed_store(client: redis.Redis) -> FailedStore:
    return RedisFailedStore(client, Keys("contract"))


@pytest.fixture
def make_windowed(client: redis.Redis) -> Callable[[float], tuple[StateStore, Wall]]:
    def make(window: float) -> tuple[StateStore, Wall]:
        wall = Wall()
        return RedisStateStore(client, keys=Keys("contract-windowed"), dedupe_window=window,
                               wall=wall), wall

    return make


class TestRedisStoreContract(StoreContract, StoreV2Contract, FailedV2Contract):
    """Every contract test, on redis-server."""


def test_pipelines_reload_the_scripts_a_restarted_redis_lost(
    client: redis.Redis, store: StateStore,
) -> None:
    """Batches send scripts by SHA1; a Redis without them (restarted, or SCRIPT FLUSH on
    this session's own server) answers NOSCRIPT, and the store loads them and goes on."""
    import json

    from tests.store_contract import LEASE, OWNER, R1, head_commit, provision
    from worker.store.protocol import CommitStatus, Release

    client.script_flush()
    raw = provision(R1, "evt-1")
    assert store.accept_many([(R1, "evt-1", json.dumps(raw))], now=1.0) == [True]
    assert store.acquire_many([R1], OWNER, LEASE, 5)[0] is not None
    commit = head_commit(store, R1)
    client.script_flush()
    assert store.commit_many([commit], release=[R1], owner=OWNER) == (
        [CommitStatus.OK], [Release.RELEASED])
