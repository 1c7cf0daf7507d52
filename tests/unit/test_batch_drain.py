"""``Service.drain_many``: several records drained by one task, their commits pipelined.

Every test drives the in-memory stores with the emulator as backends (``service``)
and checks what SPEC §3 promises per record: events applied in acceptance order, each
trigger once, versions rising by one, leases let go. ``test_batch_drain_redis`` runs the
same drains on fakeredis, through the Lua scripts.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any, cast

import fakeredis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statemachine import Result, StatusReason, check_invariants, dedupe_key, parse_event
from tests.factories import deprovision, gatekeeper, new_id, provision
from worker.backends.aio import AsyncBackends, ClientPool
from worker.emulators import Emulator
from worker.keys import Keys
from worker.service import Service
from worker.service.observer import NoObserver
from worker.service.step_loop import StepLoop
from worker.store import codec
from worker.store.failed import RedisFailedStore
from worker.store.protocol import StateStore
from worker.store.redis import RedisStateStore


@pytest.fixture(params=["memory", "fakeredis", "step-loop"])
def service(request: pytest.FixtureRequest, memory_service: Service,
            emulator: Emulator) -> Iterator[Service]:
    """``memory_service`` (steps on threads), the same Service with its stores on
    fakeredis, or with its steps on an asyncio step loop (the worker's wiring)."""
    if request.param == "memory":
        yield memory_service
        return
    if request.param == "step-loop":
        backends = memory_service.settings.backends
        looped = Service(
            memory_service.settings, memory_service.store, memory_service.failed,
            memory_service.backends, kick=memory_service.kick,
            step_loop=lambda: StepLoop(lambda: AsyncBackends(
                backends, ClientPool(backends, emulator.transport()),
                sleep=no_sleep), NoObserver()))
        try:
            yield looped
        finally:
            looped.close()
        return
    client = fakeredis.FakeRedis(decode_responses=True)
    keys = Keys(f"test-{uuid.uuid4().hex[:8]}")
    memory_service.store = RedisStateStore(client, keys=keys)
    memory_service.failed = RedisFailedStore(client, keys)
    try:
        yield memory_service
    finally:
        client.close()


async def no_sleep(seconds: float) -> None:
    return None


def lease_owner(store: StateStore, record_id: str) -> str | None:
    if isinstance(store, RedisStateStore):
        return cast(str | None, store.client.get(store.keys.lease(record_id)))
    lease = store._data.leases.get(record_id)  # type: ignore[attr-defined]
    return None if lease is None else str(lease.owner)


def mark_applied(store: StateStore, record_id: str, key: str) -> None:
    """What an earlier delivery that applied a change and died before popping it left."""
    if isinstance(store, RedisStateStore):
        key_of = store.keys.record(record_id)
        marks = codec.window_marks(store.client.lindex(key_of, 1) or "")
        marks["k" + codec.digest(key)] = int(time.time())
        store.client.lset(key_of, 1, codec.window_blob(marks))
    else:
        store._data.applied[record_id][key] = time.time()  # type: ignore[attr-defined]












def accept(service: Service, *raws: dict[str, Any]) -> None:
    service.accept_all([parse_event(raw) for raw in raws])


def own_event_ids(service: Service, record_id: str) -> list[str]:
    """The ids of the entries events made themselves, in history order (the worker's step
    results carry the starting event's id; they are left out)."""
    return [e.event_id for e in service.store.history(record_id)
            if not e.event_type.startswith(("step.", "retry.")) and e.trigger != "create"]


def check_record(service: Service, record_id: str, accepted: list[str]) -> None:
    """Every accepted event recorded once, in order; versions up by one; invariants."""
    history = service.store.history(record_id)
    assert own_event_ids(service, record_id) == accepted
    versions = [e.version for e in history if e.outcome is Result.APPLIED]
    assert versions == list(range(1, len(versions) + 1))
    record = service.store.load(record_id)
    assert record is not None
    assert record.version == versions[-1]
    check_invariants(record)


def test_many_records_are_drained_by_one_call_each_in_order(service: Service,
                                                            emulator: Emulator) -> None:
    records = [new_id() for _ in range(20)]
    streams = {rid: [provision(rid), gatekeeper(rid, "Inactive", "Error", "probe"),
                     gatekeeper(rid, "Active", "Running", "probe"), deprovision(rid)]
               for rid in records}
    interleaved = [raw for index in range(4) for raw in (streams[r][index] for r in records)]
    accept(service, *interleaved)

    reports = service.drain_many(records, task_id="task-1")

    assert [r.record_id for r in reports] == records
    assert all(r.released and not r.lost and not r.handed_over for r in reports)
    assert service.store.pending() == []
    for rid in records:
        check_record(service, rid, [raw["id"] for raw in streams[rid]])
        record = service.store.load(rid)
        assert record is not None
        assert record.status is StatusReason.DEPROVISIONED
        assert service.store.lease_ttl(rid) is None
    # Each record's provisioning and deprovisioning steps ran, each under its own key.
    keys = [r.idempotency_key for r in emulator.requests]
    assert len(keys) == len(set(keys)) == 4 * len(records)


def test_a_record_another_worker_holds_is_skipped_and_keeps_its_events(
    service: Service,
) -> None:
    mine, theirs = new_id(), new_id()
    accept(service, provision(mine), provision(theirs))
    assert service.store.acquire_lease(theirs, "other-worker", 30)

    reports = service.drain_many([mine, theirs, mine])

    assert [r.record_id for r in reports] == [mine, theirs]
    assert reports[0].applied == 3
    assert (reports[1].applied, reports[1].lost, reports[1].released) == (0, False, False)
    assert service.store.inbox_size(theirs) == 1
    assert service.store.lease_ttl(theirs) is not None


def test_a_change_already_applied_is_recorded_as_a_duplicate_and_the_chain_goes_on(
    service: Service,
) -> None:
    record_id = new_id()
    accept(service, provision(record_id))
    service.drain(record_id)
    error = gatekeeper(record_id, "Inactive", "Error", "probe")
    running = gatekeeper(record_id, "Active", "Running", "probe")
    accept(service, error, running)
    # An earlier delivery applied ``error`` and died before it popped it.
    store = service.store
    mark_applied(store, record_id, dedupe_key(parse_event(error)))

    (result,) = service.drain_many([record_id])

    assert result.released
    tail = [(e.event_id, e.outcome) for e in store.history(record_id)][-2:]
    assert tail[0] == (error["id"], Result.DUPLICATE)
    assert tail[1][0] == running["id"]  # read again after the duplicate, then applied
    record = store.load(record_id)
    assert record is not None and record.status is StatusReason.RUNNING
    assert store.inbox_size(record_id) == 0


def test_a_lease_lost_underneath_leaves_that_record_to_its_new_holder(
    service: Service,
) -> None:
    lost, kept = new_id(), new_id()
    accept(service, provision(lost), provision(kept))
    store = service.store
    original = store.commit_many

    def steal_then_commit(commits: Any, **release: Any) -> Any:
        # Another worker takes ``lost`` over between the drain's reads and its commits.
        if store.lease_ttl(lost) is not None:
            store.release_lease(lost, lease_owner(store, lost), hand_over=True)
            assert store.acquire_lease(lost, "thief", 30)
        return original(commits, **release)

    store.commit_many = steal_then_commit  # type: ignore[method-assign]
    reports = service.drain_many([lost, kept])

    assert (reports[0].lost, reports[0].applied) == (True, 0)
    assert reports[1].released and reports[1].applied == 3
    assert store.inbox_size(lost) == 1
    assert lease_owner(store, lost) == "thief"


def test_drain_of_one_record_raises_lease_lost_as_before(service: Service) -> None:
    from worker.errors import LeaseLost

    record_id = new_id()
    accept(service, provision(record_id))
    store = service.store
    original = store.commit_many

    def steal(commits: Any, **release: Any) -> Any:
        store.release_lease(record_id, lease_owner(store, record_id), hand_over=True)
        store.acquire_lease(record_id, "thief", 30)
        return original(commits, **release)

    store.commit_many = steal  # type: ignore[method-assign]
    with pytest.raises(LeaseLost, match=record_id):
        service.drain(record_id)


def test_past_the_budget_the_rest_is_handed_over_and_kept(service: Service) -> None:
    records = [new_id() for _ in range(3)]
    accept(service, *(provision(rid) for rid in records),
           *(gatekeeper(rid, "Inactive", "Error", "probe") for rid in records))
    service.settings = type(service.settings)(
        **{**service.settings.__dict__, "drain_budget_seconds": -1.0})

    reports = service.drain_many(records)

    assert all(r.handed_over and r.released for r in reports)
    for rid in records:
        assert service.store.lease_ttl(rid) is None
        assert rid in service.store.pending()
        assert service.store.inbox_size(rid) >= 1  # nothing lost: still queued
    service.settings = type(service.settings)(
        **{**service.settings.__dict__, "drain_budget_seconds": 20.0})
    service.drain_many(records)
    assert service.store.pending() == []


def test_events_arriving_during_a_step_are_applied_while_it_runs(
    service: Service, emulator: Emulator,
) -> None:
    """SPEC §2.1: a provision.requested for a record already Processing is ``ignored``."""
    records = [new_id() for _ in range(3)]
    accept(service, *(provision(rid) for rid in records))
    gate = threading.Event()
    original = service.start_step
    seen: list[str] = []

    def slow(step: Any, context: Any) -> Any:
        # The step starts once ``gate`` opens (on the step threads or the step loop).
        seen.append(step.record_id)
        started: Future[Any] = Future()

        def later() -> None:
            assert gate.wait(10)
            chain = original(step, context)
            chain.add_done_callback(lambda done: started.set_result(done.result()))

        threading.Thread(target=later, daemon=True).start()
        return started

    service.start_step = slow  # type: ignore[method-assign]
    again = {rid: provision(rid) for rid in records}
    timer = threading.Timer(0.3, lambda: (accept(service, *again.values()),
                                          threading.Timer(0.3, gate.set).start()))
    timer.start()
    service.drain_many(records)
    timer.join()

    for rid in records:
        outcomes = {e.event_id: e.outcome for e in service.store.history(rid)}
        assert outcomes[again[rid]["id"]] is Result.IGNORED
        record = service.store.load(rid)
        assert record is not None and record.status is StatusReason.RUNNING
    assert sorted(seen) == sorted(records)


STREAM = st.lists(st.sampled_from(["provision", "deprovision", "error", "running"]),
                  min_size=1, max_size=8)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(streams=st.lists(STREAM, min_size=1, max_size=6), seed=st.integers(0, 2**16),
       batches=st.integers(1, 4))
def test_any_interleaving_drained_in_any_batches_applies_each_event_once_in_order(
    service: Service, streams: list[list[str]], seed: int, batches: int,
) -> None:
    rng = random.Random(seed)
    records = [new_id() for _ in streams]
    makers = {"provision": provision, "deprovision": deprovision,
              "error": lambda rid: gatekeeper(rid, "Inactive", "Error", "probe"),
              "running": lambda rid: gatekeeper(rid, "Active", "Running", "probe")}
    per_record = {rid: [provision(rid)] + [makers[kind](rid) for kind in kinds]
                  for rid, kinds in zip(records, streams, strict=True)}
    queue = [(rid, raw) for rid, raws in per_record.items() for raw in raws]
    order = sorted(range(len(queue)), key=lambda _: rng.random())
    # Keep each record's own order while records interleave at random.
    cursor = dict.fromkeys(records, 0)
    mixed = []
    for index in order:
        rid = queue[index][0]
        mixed.append(per_record[rid][cursor[rid]])
        cursor[rid] += 1
    accept(service, *mixed)
    groups = [records[start::batches] for start in range(batches)]
    for group in groups:
        if group:
            service.drain_many(group)
    assert service.store.pending() == []
    for rid in records:
        check_record(service, rid, [raw["id"] for raw in per_record[rid]])
