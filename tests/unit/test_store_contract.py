"""The store contract (tests/store_contract.py) on the in-memory twin and on fakeredis.

fakeredis runs the store's Lua scripts through lupa, so the Redis path is the real one.
The same tests run against a real Redis in tests/integration/test_store_redis.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from statemachine import (
    BackendStep,
    ChannelKind,
    StatusReason,
    StepResult,
    UnknownRecord,
    apply,
    dedupe_key,
    parse_event,
    pending_step,
)
from worker.keys import Keys
from worker.store.failed import FailedStore, MemoryFailedStore, RedisFailedStore
from worker.store.memory import MemoryStateStore
from worker.store.protocol import Commit, CommitStatus, StateStore
from worker.store.redis import RedisStateStore

# Before the import: pytest rewrites the asserts of the shared contract too.
pytest.register_assert_rewrite("tests.store_contract", "tests.store_v2_contract")
from tests.store_contract import (  # noqa: E402
    NOW,
    OWNER,
    R1,
    R2,
    WHATSAPP_1,
    FakeClock,
    StoreContract,
    cloudevent,
    deprovision,
    parent_deleted,
    provision,
)
from tests.store_v2_contract import FailedV2Contract, StoreV2Contract, Wall  # noqa: E402

KINDS = ["memory", "fakeredis"]


@pytest.fixture
def fake_redis() -> Iterator[fakeredis.FakeRedis]:
    client = fakeredis.FakeRedis(decode_responses=True)
    yield client
    client.close()


@pytest.fixture(params=KINDS)
def store(request: pytest.FixtureRequest, fake_redis: fakeredis.FakeRedis) -> StateStore:
    if request.param == "memory":
        return MemoryStateStore(clock=FakeClock())
    return RedisStateStore(fake_redis, keys=Keys("contract"))


@pytest.fixture
def make_store(store: StateStore) -> Callable[[int], StateStore]:
    """Another empty store of the same kind as ``store``, with its own history limit."""

    def make(history_limit: int) -> StateStore:
        if isinstance(store, MemoryStateStore):
            return MemoryStateStore(history_limit=history_limit, clock=store.clock)
        assert isinstance(store, RedisStateStore)
        return RedisStateStore(store.client, keys=Keys("contract-limited"),
                               history_limit=history_limit)

    return make


@pytest.fixture(params=KINDS)
def failed_store(request: pytest.FixtureRequest,
                 fake_redis: fakeredis.FakeRedis) -> FailedStore:
    if request.param == "memory":
        return MemoryFailedStore()
    return RedisFailedStore(fake_redis, Keys("contract"))


@pytest.fixture
def make_windowed(store: StateStore) -> Callable[[float], tuple[StateStore, Wall]]:
    """An empty store of the same kind as ``store`` with this dedupe window, on a Wall."""

    def make(window: float) -> tuple[StateStore, Wall]:
        wall = Wall()
        if isinstance(store, MemoryStateStore):
            return MemoryStateStore(clock=store.clock, dedupe_window=window, wall=wall), wall
        assert isinstance(store, RedisStateStore)
        return RedisStateStore(store.client, keys=Keys("contract-windowed"),
                               dedupe_window=window, wall=wall), wall

    return make


class TestStoreContract(StoreContract, StoreV2Contract, FailedV2Contract):
    """Every contract test, once per implementation."""


# -- the twins agree: random interleavings of accept and commit ----------------------------

EVENTS: dict[str, dict[str, Any]] = {
    "provision-a": provision(R1, "provision-a"),
    "provision-b": provision(R1, "provision-b", name="Renamed"),
    "provision-teams": provision(R1, "provision-teams", kind=ChannelKind.TEAMS,
                                 channel_id=WHATSAPP_1),
    "deprovision": deprovision(R1, "deprovision"),
    "gate-error": cloudevent("gatekeeper.reported", R1, "gate-error",
                             {"status": "Inactive", "reason": "Error", "details": "down"}),
    "gate-ok": cloudevent("gatekeeper.reported", R1, "gate-ok",
                          {"status": "Active", "reason": "Running"}),
    "cascade": parent_deleted("msdyn_ocwhatsappchannelaccount", WHATSAPP_1, "cascade"),
}
RECORD_IDS = (R1, R2)
# Provisions half the time: most other events need a record to exist.
ACCEPTED = ("provision-a", "provision-a", "provision-b", "provision-teams", "deprovision",
            "gate-error", "gate-ok", "cascade")


def _payload(record_id: str, name: str) -> str:
    raw = dict(EVENTS[name])
    if "subject" in raw:
        raw["subject"] = record_id
    return json.dumps(raw)


def _hold(store: StateStore, record_id: str) -> None:
    assert store.acquire_lease(record_id, OWNER, 60) or store.renew_lease(record_id, OWNER, 60)


def _apply_head(store: StateStore, record_id: str, *, stale: bool = False) -> object:
    """What a drain does with the inbox head; ``stale`` computes it from a wrong version."""
    _hold(store, record_id)
    item = store.head(record_id)
    assert item is not None
    event = parse_event(json.loads(item.payload))
    before = store.load(record_id)
    duplicate = before is not None and store.is_applied(record_id, dedupe_key(event))
    try:
        outcome = apply(before, event, now=NOW, duplicate=duplicate)
    except UnknownRecord:
        return ("dropped", store.drop_head(record_id, event.id, OWNER))
    version = before.version if before else 0
    return store.commit(Commit(
        record_id=record_id, expected_version=version + 1 if stale else version,
        before=before, after=outcome.record, entries=outcome.entries,
        dedupe_key=dedupe_key(event) if outcome.applied else None, pop_event_id=event.id,
        lease_owner=OWNER, deleted=outcome.deleted, cancel_retry=outcome.deleted,
    ))


def _finish_step(store: StateStore, record_id: str, *, ok: bool) -> object:
    """Commit the result of the step in flight; a failure schedules a retry."""
    record = store.load(record_id)
    assert record is not None
    step = pending_step(record)
    assert step is not None
    _hold(store, record_id)
    result = StepResult(record_id, step.event_id, step.kind, step.started_version, ok=ok,
                        failed_call=None if ok else BackendStep.PROVISION_CHANNEL,
                        test_id="test-1" if ok else None)
    outcome = apply(record, result, now=NOW)
    return store.commit(Commit(
        record_id=record_id, expected_version=record.version, before=record,
        after=outcome.record, entries=outcome.entries, dedupe_key=dedupe_key(result),
        lease_owner=OWNER, retry_at=None if ok else 1_000.0 + record.version,
    ))


def _visible(store: StateStore) -> dict[str, Any]:
    return {
        "records": [store.load(rid) for rid in RECORD_IDS],
        "history": [store.history(rid) for rid in RECORD_IDS],
        "inbox": [(store.head(rid), store.inbox_size(rid)) for rid in RECORD_IDS],
        "applied": [store.is_applied(rid, name) for rid in RECORD_IDS for name in EVENTS],
        "listed": store.list_records(),
        "running": store.list_records(status=StatusReason.RUNNING),
        "linking": store.records_linking("msdyn_ocwhatsappchannelaccountid", WHATSAPP_1),
        # Neither order is promised for records due at the same time (or pending since
        # the same time): the twin keeps insertion order, Redis orders ties by id.
        "retries": sorted(store.due_retries(1e12)),
        "pending": sorted(store.pending()),
    }


def _drain_ids(store: StateStore, record_id: str) -> list[str]:
    _hold(store, record_id)
    drained = []
    while (item := store.head(record_id)) is not None:
        assert store.drop_head(record_id, item.event_id, OWNER)
        drained.append(item.event_id)
    return drained


class TwinStores(RuleBasedStateMachine):
    """Every operation runs on both stores; their answers and what they show must match."""

    def __init__(self) -> None:
        super().__init__()
        self.client = fakeredis.FakeRedis(decode_responses=True)
        self.memory = MemoryStateStore(clock=FakeClock())
        self.stores: tuple[StateStore, StateStore] = (
            self.memory, RedisStateStore(self.client, keys=Keys("twin")))

    def both(self, label: str, operation: Callable[[StateStore], object]) -> None:
        memory, redis = (operation(store) for store in self.stores)
        event(f"{label}: {memory}")
        assert memory == redis, label

    def with_inbox(self) -> list[str]:
        return [rid for rid in RECORD_IDS if self.memory.inbox_size(rid)]

    def with_step(self) -> list[str]:
        return [rid for rid in RECORD_IDS
                if (record := self.memory.load(rid)) is not None and pending_step(record)]

    def leased(self) -> list[str]:
        return [rid for rid in RECORD_IDS if self.memory.lease_ttl(rid) is not None]

    @rule(record_id=st.sampled_from(RECORD_IDS), name=st.sampled_from(ACCEPTED))
    def accept(self, record_id: str, name: str) -> None:
        payload = _payload(record_id, name)
        self.both("accept", lambda store: store.accept(record_id, name, payload, now=1.0))

    @rule(record_id=st.sampled_from(RECORD_IDS), name=st.sampled_from(sorted(EVENTS)))
    def forget(self, record_id: str, name: str) -> None:
        self.both("forget", lambda store: store.forget_accepted(record_id, name))

    @precondition(lambda self: bool(self.with_inbox()))
    @rule(data=st.data())
    def apply_head(self, data: st.DataObject) -> None:
        record_id = data.draw(st.sampled_from(self.with_inbox()))
        self.both("apply", lambda store: _apply_head(store, record_id))

    @precondition(lambda self: bool(self.with_inbox()))
    @rule(data=st.data())
    def commit_from_a_stale_version(self, data: st.DataObject) -> None:
        record_id = data.draw(st.sampled_from(self.with_inbox()))
        self.both("stale", lambda store: _apply_head(store, record_id, stale=True))

    @precondition(lambda self: bool(self.with_step()))
    @rule(data=st.data(), ok=st.booleans())
    def finish_step(self, data: st.DataObject, ok: bool) -> None:
        record_id = data.draw(st.sampled_from(self.with_step()))
        self.both(f"step ok={ok}", lambda store: _finish_step(store, record_id, ok=ok))

    @precondition(lambda self: bool(self.leased()))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        record_id = data.draw(st.sampled_from(self.leased()))
        self.both("release", lambda store: store.release_lease(record_id, OWNER))

    @invariant()
    def the_stores_show_the_same(self) -> None:
        memory, redis = (_visible(store) for store in self.stores)
        assert memory == redis

    def teardown(self) -> None:
        try:
            for record_id in RECORD_IDS:
                memory, redis = (_drain_ids(store, record_id) for store in self.stores)
                assert memory == redis
        finally:
            self.client.close()


TestMemoryAndRedisStoresAgree = TwinStores.TestCase
TestMemoryAndRedisStoresAgree.settings = settings(
    max_examples=30, stateful_step_count=20, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_the_operations_reach_creation_steps_refusals_and_cascades() -> None:
    """A fixed run of the twin operations, so the machine above is known to get far."""
    store = MemoryStateStore(clock=FakeClock())
    results = []
    for name in ("provision-a", "deprovision"):
        results.append(store.accept(R1, name, _payload(R1, name), now=1.0))
    results += [_apply_head(store, R1, stale=True), _apply_head(store, R1),
                _finish_step(store, R1, ok=False), _apply_head(store, R1)]
    results.append(store.accept(R1, "cascade", _payload(R1, "cascade"), now=1.0))
    results.append(_apply_head(store, R1))
    results.append(store.accept(R2, "gate-ok", _payload(R2, "gate-ok"), now=1.0))
    results.append(_apply_head(store, R2))
    assert results == [True, True, CommitStatus.CONFLICT, CommitStatus.OK, CommitStatus.OK,
                       CommitStatus.OK, True, CommitStatus.OK, True, ("dropped", True)]
    assert store.load(R1) is None
    assert store.history(R1)[-1].trigger == "delete"
