"""What main added on top of the store, on a Redis Cluster of 3 masters (tests/cluster.py):
the backends' circuits (read by ``health`` in one MGET) and shared rates (the step loop's
asyncio client), the HTTP API's tokens (revoked in one transaction), the metrics' counts
and backlog, and pages of records spread over every shard and master."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from redis.cluster import RedisCluster

from worker import bootstrap
from worker.backends.limits import RedisRate
from worker.http.auth.roles import Role
from worker.http.auth.tokens import RedisTokenStore
from worker.keys import Keys
from worker.settings import Settings
from worker.store.circuits import CircuitBoard
from worker.store.connect import async_store_client, store_client
from worker.store.counts import StoreCounts
from worker.store.protocol import StateStore
from worker.store.redis import RedisStateStore

pytest.register_assert_rewrite("tests.store_contract")
from tests.store_contract import LEASE, OWNER, head_commit, provision  # noqa: E402

pytestmark = pytest.mark.integration
KEYS = Keys("users")


@pytest.fixture
def client(redis_cluster: Any) -> Iterator[Any]:
    redis_cluster.flush()
    connection = store_client(redis_cluster.url)
    yield connection
    connection.close()


def test_the_one_client_factory_builds_a_cluster_client(redis_cluster: Any) -> None:
    settings = Settings(redis_url=redis_cluster.url, broker_url="redis://127.0.0.1:1/0")
    for probe in (False, True):
        client = bootstrap.redis_client(settings, probe=probe)
        assert isinstance(client, RedisCluster)
        assert client.ping()
        client.close()


def test_circuits_of_several_backends_and_processes_read_in_one_mget(client: Any) -> None:
    board = CircuitBoard(client, KEYS)
    for backend in ("gatekeeper", "provisioner"):
        for holder in ("host-a:1", "host-b:2"):
            board.publish(backend, holder, "open", 3, "HTTP 503", ttl=30)
    assert [(e.backend, e.holder) for e in sorted(board.read(),
                                                    key=lambda e: (e.backend, e.holder))] == [
        ("gatekeeper", "host-a:1"), ("gatekeeper", "host-b:2"),
        ("provisioner", "host-a:1"), ("provisioner", "host-b:2")]
    board.clear("gatekeeper", "host-a:1")
    assert len(board.read()) == 3


def test_shared_rates_on_the_asyncio_cluster_client(redis_cluster: Any) -> None:
    async def reserve_twice() -> list[float]:
        client = async_store_client(redis_cluster.url)
        try:
            rate = RedisRate(client, KEYS)
            waits = [await rate.reserve("provisioner", 1.0, 1000.0),
                     await rate.reserve("provisioner", 1.0, 1000.0),
                     await rate.reserve("gatekeeper", 1.0, 1000.0)]
        finally:
            await client.aclose()
        return waits

    first, second, other = asyncio.run(reserve_twice())
    assert first == 0.0 and other == 0.0  # each backend its own key
    assert second > 0.0  # the slot after the first


def test_api_tokens_are_created_verified_and_revoked(client: Any) -> None:
    tokens = RedisTokenStore(client, KEYS)
    made = tokens.create("ops", Role.OPERATOR)
    assert tokens.verify(made.token) is not None
    assert [t.name for t in tokens.entries()] == ["ops"]
    assert tokens.revoke("ops")  # one MULTI over the {api} slot
    assert tokens.verify(made.token) is None and tokens.entries() == []


def fill(store: StateStore, records: int) -> list[str]:
    """``records`` records provisioned (committed), and one more event each waiting."""
    ids = sorted(str(uuid.uuid4()) for _ in range(records))
    for n, record_id in enumerate(ids):
        raw = provision(record_id, f"e-{n}", channel_id=str(uuid.uuid4()))
        assert store.accept(record_id, raw["id"], json.dumps(raw), now=1.0)
        assert store.acquire_lease(record_id, OWNER, LEASE)
        store.commit(head_commit(store, record_id))
        store.release_lease(record_id, OWNER)
        again = provision(record_id, f"f-{n}", channel_id=str(uuid.uuid4()))
        assert store.accept(record_id, again["id"], json.dumps(again), now=2.0)
    return ids


def test_pages_counts_and_backlog_cover_every_shard(client: Any) -> None:
    store = RedisStateStore(client, keys=KEYS)
    ids = fill(store, 60)
    masters = {client.get_node_from_key(KEYS.record(rid)).name for rid in ids}
    assert len(masters) == 3  # the records are on every master
    seen: list[str] = []
    after = None
    while True:
        page = store.page_records(after=after, limit=7)
        seen += [record.id for record in page.records]
        if page.next_after is None:
            break
        after = page.next_after
    assert seen == ids
    counts = StoreCounts(client, KEYS)
    assert sum(counts.records_by_status().values()) == 60
    backlog = counts.backlog()
    assert backlog.pending == 60
    assert backlog.oldest_pending_since is not None
    assert backlog.outbox == 0 and backlog.outbox_heads == ()
