"""The store v2 guarantees (README "Store v2"), for any StateStore: the dedupe window
(SPEC §3), deleted-record retention, the outbox's per-record order and cap, audit trimming.

``StoreV2Contract`` is mixed into the test classes of tests/unit/test_store_contract.py
(memory, fakeredis), tests/integration/test_store_redis.py (redis-server) and
tests/integration/test_store_cluster.py (a 3-master Redis Cluster). They provide
``make_windowed(window) -> (store, wall)``: an empty store whose dedupe window is
``window`` seconds and whose wall clock is ``wall`` (a ``Wall`` the test moves).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta

from statemachine import Result, format_time
from tests.store_contract import (
    NOW,
    OWNER,
    R1,
    R2,
    R3,
    WHATSAPP_1,
    accept,
    deliver,
    deprovision,
    finish_step,
    ids,
    parent_deleted,
    provision,
)
from worker.store import CommitStatus, Deletion, StateStore
from worker.store.failed import FailedStore
from worker.store.redis import RedisStateStore


class Wall:
    """An epoch-seconds clock that moves only when told (the dedupe window's clock)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


MakeWindowed = Callable[[float], tuple[StateStore, Wall]]
WINDOW = 60.0


class StoreV2Contract:
    # -- the dedupe window --------------------------------------------------------------

    def test_an_event_id_is_refused_within_the_window_and_accepted_past_it(
        self, make_windowed: MakeWindowed
    ) -> None:
        store, wall = make_windowed(WINDOW)
        raw = provision(R1, "evt-1")
        assert accept(store, raw)
        wall.advance(WINDOW - 1)
        assert not accept(store, raw)
        assert store.inbox_size(R1) == 1
        wall.advance(2)
        assert accept(store, raw)  # past the window: an old id is accepted again
        assert store.inbox_size(R1) == 2

    def test_an_applied_key_is_a_duplicate_within_the_window_only(
        self, make_windowed: MakeWindowed
    ) -> None:
        store, wall = make_windowed(WINDOW)
        deliver(store, provision(R1, "evt-1"))
        finish_step(store, R1)
        gate = {"status": "Inactive", "reason": "Error", "details": "down"}
        report = {"specversion": "1.0", "id": "evt-gk", "source": "t",
                  "type": "gatekeeper.reported", "subject": R1, "data": gate}
        deliver(store, report)
        assert store.is_applied(R1, "evt-gk")
        deliver(store, {**report, "id": "evt-ok",
                        "data": {"status": "Active", "reason": "Running"}})
        wall.advance(WINDOW + 1)
        assert not store.is_applied(R1, "evt-gk")
        # Past the window the same id is applied again as a new event: the version check
        # and the history are what protect the record then (README "Store v2").
        commit = deliver(store, report)
        assert commit.dedupe_key == "evt-gk"
        assert [e.event_id for e in store.history(R1)].count("evt-gk") == 2

    def test_a_commit_of_a_key_applied_within_the_window_is_a_duplicate(
        self, make_windowed: MakeWindowed
    ) -> None:
        store, wall = make_windowed(WINDOW)
        first = deliver(store, provision(R1, "evt-1"))
        wall.advance(WINDOW / 2)
        assert accept(store, deprovision(R1, "evt-2"))
        assert store.acquire_lease(R1, OWNER, 30)
        record = store.load(R1)
        assert record is not None
        from dataclasses import replace
        again = replace(first, expected_version=record.version, before=record,
                        after=record.evolve(version=record.version + 1), pop_event_id=None)
        assert store.commit(again) is CommitStatus.DUPLICATE

    def test_marks_older_than_the_window_are_forgotten_not_kept(
        self, make_windowed: MakeWindowed
    ) -> None:
        store, wall = make_windowed(WINDOW)
        deliver(store, provision(R1, "evt-0"))
        finish_step(store, R1)
        for n in range(1, 30):
            wall.advance(WINDOW / 3)
            gate = ({"status": "Active", "reason": "Running"} if n % 2 == 0 else
                    {"status": "Inactive", "reason": "Error", "details": "down"})
            deliver(store, {"specversion": "1.0", "id": f"evt-{n}", "source": "t",
                            "type": "gatekeeper.reported", "subject": R1, "data": gate})
        recent = [n for n in range(30) if store.is_applied(R1, f"evt-{n}")]
        assert recent == [26, 27, 28, 29]

    def test_more_marks_than_fit_inline_keep_every_guarantee(
        self, make_windowed: MakeWindowed
    ) -> None:
        """Past 32 marks at once the Redis store moves them to a zset (lua/window.lua); the
        window's behaviour is the same on either side of that."""
        store, wall = make_windowed(WINDOW)
        deliver(store, provision(R1, "evt-0"))
        finish_step(store, R1)
        reports = []
        for n in range(1, 41):
            gate = ({"status": "Active", "reason": "Running"} if n % 2 == 0 else
                    {"status": "Inactive", "reason": "Error", "details": "down"})
            reports.append({"specversion": "1.0", "id": f"evt-{n}", "source": "t",
                            "type": "gatekeeper.reported", "subject": R1, "data": gate})
            deliver(store, reports[-1])
        assert all(store.is_applied(R1, f"evt-{n}") for n in range(41))
        assert not any(accept(store, raw) for raw in reports)
        store.forget_accepted(R1, "evt-7")
        assert accept(store, reports[6])  # forgotten: accepted again, still applied
        assert store.is_applied(R1, "evt-7")
        wall.advance(WINDOW + 1)
        assert not any(store.is_applied(R1, f"evt-{n}") for n in range(41))
        assert all(accept(store, raw) for raw in reports if raw["id"] != "evt-7")

    # -- deleted records -------------------------------------------------------------------

    def test_a_deleted_record_is_purged_after_the_retention_and_says_so(
        self, make_windowed: MakeWindowed
    ) -> None:
        store, wall = make_windowed(WINDOW)
        deliver(store, provision(R1, "evt-1"))
        deliver(store, provision(R2, "evt-2", channel_id="9a0b7c2d-0000-4000-8000-000000000099"))
        assert store.deletion(R1) == Deletion(None, None)
        deleted_at = wall()
        deliver(store, parent_deleted("msdyn_ocwhatsappchannelaccount", WHATSAPP_1, "evt-x"),
                R1)
        assert store.deletion(R1) == Deletion(int(deleted_at), None)
        assert store.purge_deleted(deleted_at - 1, 100) == []
        assert store.history(R1)
        wall.advance(10)
        assert store.purge_deleted(deleted_at, 100) == [R1]
        assert store.history(R1) == []
        assert store.load(R1) is None
        assert store.deletion(R1) == Deletion(None, int(deleted_at) + 10)
        assert ids(store.list_records()) == [R2]
        assert store.purge_deleted(deleted_at, 100) == []  # once
        # The purge is remembered one retention, then forgotten too.
        assert store.purge_deleted(deleted_at + 11, 100) == []
        assert store.deletion(R1) == Deletion(None, None)

    def test_a_record_created_again_is_not_purged(self, make_windowed: MakeWindowed) -> None:
        store, wall = make_windowed(WINDOW)
        deliver(store, provision(R1, "evt-1"))
        deliver(store, parent_deleted("msdyn_ocwhatsappchannelaccount", WHATSAPP_1, "evt-x"),
                R1)
        deliver(store, provision(R1, "evt-2"))
        assert store.deletion(R1) == Deletion(None, None)
        wall.advance(10)
        assert store.purge_deleted(wall(), 100) == []
        assert store.load(R1) is not None
        assert len(store.history(R1)) == 5

    # -- the outbox ----------------------------------------------------------------------------

    def test_the_outbox_gives_every_entry_once_in_commit_order_per_record(
        self, make_windowed: MakeWindowed
    ) -> None:
        store, _ = make_windowed(WINDOW)
        sent = 0
        for n, rid in enumerate([R1, R2, R3, R1, R2, R3, R1]):
            raw = provision(rid, f"evt-{n}") if n < 3 else deprovision(rid, f"evt-{n}")
            deliver(store, raw, outbox_entry=json.dumps({"record_id": rid, "n": n}))
            sent += 1
        assert store.outbox_size() == sent
        got: list[dict[str, object]] = []
        while True:
            batch = store.outbox_peek(2)
            if not batch:
                break
            for raw_entry in batch:
                got.append(json.loads(raw_entry))
                store.outbox_ack(1)
        assert store.outbox_size() == 0
        assert sorted(int(str(e["n"])) for e in got) == list(range(sent))
        for rid in (R1, R2, R3):
            mine = [e["n"] for e in got if e["record_id"] == rid]
            assert mine == sorted(mine)  # type: ignore[type-var]

    def test_outbox_trim_keeps_the_newest_entries(self, make_windowed: MakeWindowed) -> None:
        store, _ = make_windowed(WINDOW)
        for n in range(5):
            deliver(store, provision(R1, f"evt-{n}") if n == 0 else
                    {"specversion": "1.0", "id": f"evt-{n}", "source": "t",
                     "type": "calling_test.requested", "subject": R1},
                    outbox_entry=json.dumps({"n": n}))
        assert store.outbox_trim(1_000_000) == 0
        assert store.outbox_size() == 5
        # Each shard keeps ceil(keep / shards); the in-memory store is one shard.
        shards = store.keys.shards if isinstance(store, RedisStateStore) else 1
        dropped = store.outbox_trim(2 * shards)
        assert dropped == 3
        assert [json.loads(e)["n"] for e in store.outbox_peek(10)] == [3, 4]


class FailedV2Contract:
    def test_trim_audit_drops_old_lines_then_the_oldest_past_the_cap(
        self, failed_store: FailedStore
    ) -> None:
        for n in range(6):
            failed_store.append_audit({"at": format_time(NOW + timedelta(days=n)), "n": n,
                                       "action": "discard", "result": Result.APPLIED.value})
        assert failed_store.trim_audit(NOW + timedelta(days=2), 100) == 2
        assert [line["n"] for line in failed_store.audit()] == [2, 3, 4, 5]
        assert failed_store.trim_audit(NOW, 3) == 1
        assert [line["n"] for line in failed_store.audit()] == [3, 4, 5]
        assert failed_store.trim_audit(NOW, 3) == 0
