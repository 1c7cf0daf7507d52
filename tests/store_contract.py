"""The contract of the record store and the failed-task store (worker/store.py, failed.py).

``StoreContract`` holds the tests; each test module that subclasses it provides the
fixtures for one family of implementations (dramatiq's ``params=["redis", "stub"]``):

* ``store``: an empty ``StateStore``; a ``MemoryStateStore`` gets a ``FakeClock``;
* ``make_store(history_limit)``: another empty store of the same kind;
* ``failed_store``: an empty ``FailedStore``.

Records are built the way the worker builds them: events parsed by ``parse_event``,
changes computed by ``statemachine.apply``, committed under a lease.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from statemachine import (
    LOOKUPS,
    BackendStep,
    ChannelKind,
    HistoryEntry,
    ProvisioningState,
    Result,
    StatusReason,
    StepResult,
    apply,
    dedupe_key,
    format_time,
    parse_event,
    pending_step,
)
from worker.store.failed import FailedStore, FailedTask, entry_id
from worker.store.protocol import Commit, CommitStatus, Release, StateStore

NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
OWNER = "host-a:worker-1"
OTHER = "host-b:worker-2"
LEASE = 30.0
SHORT_LEASE = 0.25  # PX 250 on Redis: long enough for the next call on a loaded machine
PAST_SHORT_LEASE = 0.6

R1 = "4f9d1c1e-0000-4000-8000-000000000001"
R2 = "4f9d1c1e-0000-4000-8000-000000000002"
R3 = "4f9d1c1e-0000-4000-8000-000000000003"
WHATSAPP_1 = "9a0b7c2d-0000-4000-8000-000000000011"
WHATSAPP_3 = "9a0b7c2d-0000-4000-8000-000000000013"
FACEBOOK_2 = "9a0b7c2d-0000-4000-8000-000000000012"
PROVIDER = "7c1d2e3f-0000-4000-8000-000000000021"
PROVIDER_COLUMN = "msdyn_communicationprovidersettingid"
WHATSAPP_COLUMN = "msdyn_ocwhatsappchannelaccountid"
KNOWN_LINKS = (WHATSAPP_1, WHATSAPP_3, FACEBOOK_2, PROVIDER)
RECORDS = (R1, R2, R3)


class FakeClock:
    """A monotonic clock that moves only when told (the MemoryStateStore's lease time)."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# -- events and commits, as the worker makes them ------------------------------------------

def cloudevent(event_type: str, subject: str | None, event_id: str,
               data: dict[str, Any] | None = None) -> dict[str, Any]:
    raw: dict[str, Any] = {"specversion": "1.0", "id": event_id, "source": "contract-tests",
                           "type": event_type}
    if subject is not None:
        raw["subject"] = subject
    if data is not None:
        raw["data"] = data
    return raw


def provision(record_id: str, event_id: str, *, kind: ChannelKind = ChannelKind.WHATSAPP,
              channel_id: str = WHATSAPP_1, links: dict[str, str] | None = None,
              name: str = "Contoso") -> dict[str, Any]:
    return cloudevent("provision.requested", record_id, event_id, {
        "name": name, "channel": {"kind": kind.value, "id": channel_id},
        "links": dict(links or {}),
    })


def deprovision(record_id: str, event_id: str) -> dict[str, Any]:
    return cloudevent("deprovision.requested", record_id, event_id)


def parent_deleted(table: str, parent_id: str, event_id: str) -> dict[str, Any]:
    return cloudevent("parent.deleted", None, event_id, {"table": table, "id": parent_id})


def accept(store: StateStore, raw: dict[str, Any], record_id: str | None = None, *,
           now: float = 1.0) -> bool:
    """Accept ``raw`` into the inbox of ``record_id`` (default: its subject)."""
    target = record_id or raw["subject"]
    return store.accept(target, raw["id"], json.dumps(raw), now=now)


def head_commit(store: StateStore, record_id: str, owner: str = OWNER) -> Commit:
    """The commit a worker holding the lease computes for the inbox head."""
    item = store.head(record_id)
    assert item is not None, f"inbox of {record_id} is empty"
    event = parse_event(json.loads(item.payload))
    before = store.load(record_id)
    duplicate = before is not None and store.is_applied(record_id, dedupe_key(event))
    outcome = apply(before, event, now=NOW, duplicate=duplicate)
    return Commit(
        record_id=record_id, expected_version=before.version if before else 0,
        before=before, after=outcome.record, entries=outcome.entries,
        dedupe_key=dedupe_key(event) if outcome.applied else None,
        pop_event_id=event.id, lease_owner=owner, deleted=outcome.deleted,
    )


def chained(previous: Commit, raw: dict[str, Any]) -> Commit:
    """The commit of ``raw`` computed from the record as ``previous`` leaves it (the next
    link of a chain, before ``previous`` has landed)."""
    event = parse_event(raw)
    outcome = apply(previous.after, event, now=NOW)
    assert previous.after is not None
    return Commit(
        record_id=previous.record_id, expected_version=previous.after.version,
        before=previous.after, after=outcome.record, entries=outcome.entries,
        dedupe_key=dedupe_key(event) if outcome.applied else None,
        pop_event_id=event.id, lease_owner=previous.lease_owner, deleted=outcome.deleted,
    )


def step_commit(store: StateStore, record_id: str, *, ok: bool,
                owner: str = OWNER) -> Commit:
    """The commit of the result of the step in flight on the record (no inbox pop)."""
    record = store.load(record_id)
    assert record is not None
    step = pending_step(record)
    assert step is not None, f"no step in flight on {record_id}"
    result = StepResult(
        record_id, step.event_id, step.kind, step.started_version, ok=ok,
        failed_call=None if ok else BackendStep.PROVISION_CHANNEL,
        details="" if ok else "provisioner answered 503", test_id="test-1" if ok else None,
    )
    outcome = apply(record, result, now=NOW + timedelta(seconds=1))
    return Commit(
        record_id=record_id, expected_version=record.version, before=record,
        after=outcome.record, entries=outcome.entries, dedupe_key=dedupe_key(result),
        lease_owner=owner, deleted=outcome.deleted,
    )


def settle(store: StateStore, commit: Commit) -> Commit:
    """Commit under a fresh lease and release it, as one drain does."""
    assert store.acquire_lease(commit.record_id, OWNER, LEASE)
    assert store.commit(commit) is CommitStatus.OK
    assert store.release_lease(commit.record_id, OWNER)
    return commit


def deliver(store: StateStore, raw: dict[str, Any], record_id: str | None = None,
            **changes: Any) -> Commit:
    """Accept ``raw`` and apply it (plus ``changes`` to the commit); return the commit."""
    target = record_id or raw["subject"]
    assert accept(store, raw, target)
    assert store.acquire_lease(target, OWNER, LEASE)
    commit = replace(head_commit(store, target), **changes)
    assert store.commit(commit) is CommitStatus.OK
    assert store.release_lease(target, OWNER)
    return commit


def finish_step(store: StateStore, record_id: str, *, ok: bool = True,
                **changes: Any) -> Commit:
    return settle(store, replace(step_commit(store, record_id, ok=ok), **changes))


def ids(records: list[ProvisioningState]) -> list[str]:
    return [record.id for record in records]


def observe(store: StateStore, keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """Everything a reader can see of the records of these tests."""
    return {
        "records": {rid: store.load(rid) for rid in RECORDS},
        "history": {rid: store.history(rid) for rid in RECORDS},
        "inbox": {rid: (store.head(rid), store.inbox_size(rid)) for rid in RECORDS},
        "applied": {(rid, key): store.is_applied(rid, key) for rid in RECORDS for key in keys},
        "listed": store.list_records(),
        "by_status": {status: ids(store.list_records(status=status)) for status in StatusReason},
        "by_kind": {kind: ids(store.list_records(kind=kind.value)) for kind in ChannelKind},
        "links": {(column, value): store.records_linking(column, value)
                  for column in (lookup.column for lookup in LOOKUPS)
                  for value in KNOWN_LINKS},
        "retries": store.due_retries(1e12),
        "pending": sorted(store.pending()),
    }


def failure(event_id: str, at: datetime, **changes: Any) -> FailedTask:
    raw = provision(R1, event_id)
    body = {"args": [raw], "kwargs": {}}
    stamp = format_time(at)
    entry = FailedTask(
        id=entry_id("provisioning.handle_event", event_id, body),
        task="provisioning.handle_event", event_id=event_id,
        event_type="provision.requested", record_id=R1, exception="StoreError",
        message="ConnectionError: connection refused", traceback="Traceback ...\n",
        attempts=1, first_failed_at=stamp, last_failed_at=stamp, hostname="host-a",
        reasons=("connection refused",), body=body,
    )
    return replace(entry, **changes)


class StoreContract:
    """The guarantees of worker/store.py and worker/failed.py, for any implementation."""

    @pytest.fixture
    def elapse(self, store: StateStore) -> Callable[[float], None]:
        """Let lease time pass: move a fake clock, or really wait for a Redis PX."""
        clock = getattr(store, "clock", None)
        if isinstance(clock, FakeClock):
            return clock.advance
        return time.sleep

    # -- accept and the inbox ----------------------------------------------------------

    def test_accept_appends_each_event_id_once_in_order(self, store: StateStore) -> None:
        first, second = provision(R1, "evt-1"), deprovision(R1, "evt-2")
        assert accept(store, first)
        assert accept(store, second)
        assert not accept(store, first)
        assert not accept(store, second)
        assert store.inbox_size(R1) == 2
        item = store.head(R1)
        assert item is not None
        assert item.event_id == "evt-1"
        assert json.loads(item.payload) == first

    def test_accept_keeps_order_as_the_head_is_popped(self, store: StateStore) -> None:
        for n in range(5):
            assert accept(store, deprovision(R1, f"evt-{n}"))
        assert store.acquire_lease(R1, OWNER, LEASE)
        popped = []
        while (item := store.head(R1)) is not None:
            assert store.drop_head(R1, item.event_id, OWNER)
            popped.append(item.event_id)
        assert popped == [f"evt-{n}" for n in range(5)]
        assert store.inbox_size(R1) == 0

    def test_the_same_event_id_is_accepted_once_per_record(self, store: StateStore) -> None:
        event = parent_deleted("msdyn_occommunicationprovidersetting", PROVIDER, "evt-p")
        assert accept(store, event, R1)
        assert accept(store, event, R2)
        assert not accept(store, event, R1)
        assert (store.inbox_size(R1), store.inbox_size(R2)) == (1, 1)

    def test_accept_many_returns_one_boolean_per_item(self, store: StateStore) -> None:
        assert accept(store, deprovision(R1, "evt-old"))
        items = [
            (R1, "evt-old", "{}"),
            (R1, "evt-a", json.dumps(deprovision(R1, "evt-a"))),
            (R2, "evt-a", json.dumps(deprovision(R2, "evt-a"))),
            (R1, "evt-a", "{}"),
            (R1, "evt-b", json.dumps(deprovision(R1, "evt-b"))),
        ]
        assert store.accept_many(items, now=2.0) == [False, True, True, False, True]
        assert store.accept_many([], now=2.0) == []
        assert store.inbox_size(R1) == 3
        assert store.inbox_size(R2) == 1
        assert store.acquire_lease(R1, OWNER, LEASE)
        order = []
        while (item := store.head(R1)) is not None:
            order.append(item.event_id)
            assert store.drop_head(R1, item.event_id, OWNER)
        assert order == ["evt-old", "evt-a", "evt-b"]

    def test_forget_accepted_lets_the_event_id_in_again(self, store: StateStore) -> None:
        event = provision(R1, "evt-1")
        deliver(store, event)
        assert not accept(store, event)
        store.forget_accepted(R1, "evt-1")
        assert accept(store, deprovision(R1, "evt-2"))
        assert accept(store, event)
        assert store.inbox_size(R1) == 2
        head = store.head(R1)
        assert head is not None
        assert head.event_id == "evt-2"

    def test_head_and_inbox_size_of_an_unknown_record(self, store: StateStore) -> None:
        assert store.head(R3) is None
        assert store.inbox_size(R3) == 0
        assert store.load(R3) is None
        assert store.history(R3) == []

    def test_drop_head_only_for_the_lease_holder_and_only_the_head(
        self, store: StateStore
    ) -> None:
        assert accept(store, deprovision(R1, "evt-1"))
        assert accept(store, deprovision(R1, "evt-2"))
        assert not store.drop_head(R1, "evt-1", OWNER)  # nobody holds the lease
        assert store.acquire_lease(R1, OTHER, LEASE)
        assert not store.drop_head(R1, "evt-1", OWNER)  # somebody else holds it
        assert store.inbox_size(R1) == 2
        head = store.head(R1)
        assert head is not None
        assert head.event_id == "evt-1"

    def test_drop_head_pops_the_head_and_lets_its_id_be_accepted_again(
        self, store: StateStore
    ) -> None:
        assert accept(store, deprovision(R1, "evt-1"))
        assert accept(store, deprovision(R1, "evt-2"))
        assert store.acquire_lease(R1, OWNER, LEASE)
        assert not store.drop_head(R1, "evt-2", OWNER)  # not the head
        assert store.inbox_size(R1) == 2
        assert store.drop_head(R1, "evt-1", OWNER)
        assert not store.drop_head(R1, "evt-1", OWNER)
        head = store.head(R1)
        assert head is not None
        assert head.event_id == "evt-2"
        assert accept(store, deprovision(R1, "evt-1"))  # a replay may come in again
        assert store.inbox_size(R1) == 2
        assert not store.drop_head(R2, "evt-1", OWNER)  # empty inbox, no lease

    # -- commit OK -----------------------------------------------------------------------

    def test_commit_creates_the_record_pops_the_head_and_marks_the_event_applied(
        self, store: StateStore
    ) -> None:
        assert accept(store, provision(R1, "evt-1", links={PROVIDER_COLUMN: PROVIDER}))
        assert accept(store, deprovision(R1, "evt-2"))
        assert store.acquire_lease(R1, OWNER, LEASE)
        commit = head_commit(store, R1)
        assert commit.after is not None
        assert not store.is_applied(R1, "evt-1")

        assert store.commit(commit) is CommitStatus.OK

        record = store.load(R1)
        assert record == commit.after
        assert record is not None
        assert record.version == 2
        assert record.status is StatusReason.PROCESSING
        assert store.history(R1) == list(commit.entries)
        assert [entry.trigger for entry in store.history(R1)] == ["create", "provision"]
        assert store.inbox_size(R1) == 1
        head = store.head(R1)
        assert head is not None
        assert head.event_id == "evt-2"
        assert store.is_applied(R1, "evt-1")
        assert store.list_records() == [record]
        assert ids(store.list_records(status=StatusReason.PROCESSING)) == [R1]
        assert ids(store.list_records(kind="whatsapp")) == [R1]
        assert store.records_linking(PROVIDER_COLUMN, PROVIDER) == [R1]
        assert store.records_linking(WHATSAPP_COLUMN, WHATSAPP_1) == [R1]

    def test_commits_append_history_in_order(self, store: StateStore) -> None:
        created = deliver(store, provision(R1, "evt-1"))
        provisioned = finish_step(store, R1)
        deprovisioning = deliver(store, deprovision(R1, "evt-2"))
        entries = [*created.entries, *provisioned.entries, *deprovisioning.entries]
        assert store.history(R1) == entries
        assert [entry.version for entry in entries] == [1, 2, 3, 4]
        record = store.load(R1)
        assert record is not None
        assert record.version == 4
        assert record.status is StatusReason.DEPROVISIONING

    def test_commit_moves_the_record_between_status_and_kind_indexes(
        self, store: StateStore
    ) -> None:
        deliver(store, provision(R1, "evt-1"))
        finish_step(store, R1)
        deliver(store, provision(R2, "evt-2", kind=ChannelKind.FACEBOOK, channel_id=FACEBOOK_2))
        deliver(store, provision(R3, "evt-3", channel_id=WHATSAPP_3))

        assert ids(store.list_records()) == [R1, R2, R3]
        assert ids(store.list_records(status=StatusReason.RUNNING)) == [R1]
        assert ids(store.list_records(status=StatusReason.PROCESSING)) == [R2, R3]
        assert ids(store.list_records(status=StatusReason.ERROR)) == []
        assert ids(store.list_records(kind="whatsapp")) == [R1, R3]
        assert ids(store.list_records(kind="facebook")) == [R2]
        assert ids(store.list_records(kind="teams")) == []
        assert ids(store.list_records(status=StatusReason.PROCESSING, kind="whatsapp")) == [R3]
        assert store.list_records(status=StatusReason.RUNNING) == [store.load(R1)]

        finish_step(store, R3, ok=False)
        assert ids(store.list_records(status=StatusReason.PROCESSING)) == [R2]
        assert ids(store.list_records(status=StatusReason.ERROR)) == [R3]
        assert ids(store.list_records(kind="whatsapp")) == [R1, R3]

    def test_pages_of_records_cover_each_record_once_in_id_order(
        self, store: StateStore
    ) -> None:
        deliver(store, provision(R1, "evt-1"))
        finish_step(store, R1)
        deliver(store, provision(R2, "evt-2", kind=ChannelKind.FACEBOOK, channel_id=FACEBOOK_2))
        deliver(store, provision(R3, "evt-3", channel_id=WHATSAPP_3))

        first = store.page_records(limit=2)
        assert ids(first.records) == [R1, R2]
        assert first.next_after == R2
        last = store.page_records(after=first.next_after, limit=2)
        assert ids(last.records) == [R3]
        assert last.next_after is None
        exact = store.page_records(limit=3)
        assert ids(exact.records) == [R1, R2, R3]
        assert exact.next_after is None  # no empty last page
        assert ids(store.page_records(status=StatusReason.PROCESSING, limit=1).records) == [R2]
        assert ids(store.page_records(status=StatusReason.PROCESSING, kind="whatsapp",
                                      limit=5).records) == [R3]
        assert store.page_records(after=R3).records == []
        assert store.page_records(kind="teams") == store.page_records(after=R3)

    def test_a_page_cursor_stays_valid_when_its_record_is_gone(
        self, store: StateStore
    ) -> None:
        """Stable paging: the record a cursor names may be deleted, and others added."""
        deliver(store, provision(R1, "evt-1"))
        deliver(store, provision(R2, "evt-2", channel_id=FACEBOOK_2))
        first = store.page_records(limit=1)
        assert ids(first.records) == [R1]
        deliver(store, provision(R3, "evt-3", channel_id=WHATSAPP_3))
        event = parent_deleted("msdyn_ocwhatsappchannelaccount", WHATSAPP_1, "evt-cascade")
        assert deliver(store, event, R1).deleted
        rest = store.page_records(after=first.next_after, limit=10)
        assert ids(rest.records) == [R2, R3]
        assert rest.next_after is None

    def test_records_with_a_calling_test_in_progress_are_indexed(
        self, store: StateStore
    ) -> None:
        phone = {"msdyn_phonenumberid": "00000000-0000-4000-8000-00000000a001"}
        deliver(store, provision(R1, "evt-1", kind=ChannelKind.VOICE, links=phone))
        finish_step(store, R1)
        deliver(store, provision(R2, "evt-2", kind=ChannelKind.VOICE, channel_id=FACEBOOK_2,
                                 links=phone))
        finish_step(store, R2)
        assert store.list_records(testing=True) == []
        deliver(store, cloudevent("calling_test.requested", R1, "evt-test"))
        assert ids(store.list_records(testing=True)) == [R1]
        finish_step(store, R1)  # the test started: still InProgress
        assert ids(store.list_records(testing=True, status=StatusReason.RUNNING)) == [R1]
        deliver(store, cloudevent("calling_test.completed", R1, "evt-done",
                                  {"result": "Success", "test_id": "test-1"}))
        assert store.list_records(testing=True) == []

    def test_commit_updates_the_link_index(self, store: StateStore) -> None:
        deliver(store, provision(R1, "evt-1", links={PROVIDER_COLUMN: PROVIDER}))
        deliver(store, provision(R2, "evt-2", kind=ChannelKind.FACEBOOK, channel_id=FACEBOOK_2,
                                 links={PROVIDER_COLUMN: PROVIDER}))
        assert store.records_linking(PROVIDER_COLUMN, PROVIDER) == [R1, R2]
        assert store.records_linking("msdyn_ocfbpageid", FACEBOOK_2) == [R2]
        assert store.records_linking(PROVIDER_COLUMN, WHATSAPP_1) == []

        # RemoveLink: the parent's deletion clears the column on R1.
        event = parent_deleted("msdyn_occommunicationprovidersetting", PROVIDER, "evt-gone")
        commit = deliver(store, event, R1)
        assert commit.after is not None
        assert commit.after.links[PROVIDER_COLUMN] is None
        assert store.records_linking(PROVIDER_COLUMN, PROVIDER) == [R2]
        assert store.records_linking(WHATSAPP_COLUMN, WHATSAPP_1) == [R1]

    def test_commit_schedules_moves_and_cancels_retries(self, store: StateStore) -> None:
        deliver(store, provision(R1, "evt-1"))
        deliver(store, provision(R2, "evt-2", channel_id=WHATSAPP_3))
        assert store.due_retries(1e12) == []

        finish_step(store, R1, ok=False, retry_at=200.0)
        finish_step(store, R2, ok=False, retry_at=100.5)
        assert store.due_retries(99.0) == []
        assert store.due_retries(100.5) == [(R2, 100.5)]
        assert store.due_retries(1e12) == [(R2, 100.5), (R1, 200.0)]

        # A later commit moves the schedule (a commit may carry no entries at all) ...
        record = store.load(R1)
        assert record is not None
        assert record.status is StatusReason.ERROR
        history = store.history(R1)
        settle(store, Commit(R1, record.version, record, record, (), retry_at=50.0,
                             lease_owner=OWNER))
        assert store.due_retries(1e12) == [(R1, 50.0), (R2, 100.5)]
        assert store.history(R1) == history
        assert store.load(R1) == record

        # ... and re-provisioning an Error record cancels its retry.
        deliver(store, provision(R1, "evt-3"), cancel_retry=True)
        assert store.due_retries(1e12) == [(R2, 100.5)]

    def test_commit_with_deleted_removes_the_record_but_keeps_its_history(
        self, store: StateStore
    ) -> None:
        deliver(store, provision(R1, "evt-1", links={PROVIDER_COLUMN: PROVIDER}))
        finish_step(store, R1, ok=False, retry_at=100.0)
        deliver(store, provision(R2, "evt-2", channel_id=WHATSAPP_3))
        before = store.history(R1)
        assert store.records_linking(WHATSAPP_COLUMN, WHATSAPP_1) == [R1]

        # Cascade: deleting the WhatsApp account deletes the record.
        event = parent_deleted("msdyn_ocwhatsappchannelaccount", WHATSAPP_1, "evt-cascade")
        assert store.records_linking(WHATSAPP_COLUMN, WHATSAPP_1) == [R1]
        commit = deliver(store, event, R1)
        assert commit.deleted
        assert commit.after is None

        assert store.load(R1) is None
        history = store.history(R1)
        assert history[:-1] == before
        assert history[-1].trigger == "delete"
        assert history[-1].outcome is Result.APPLIED
        assert ids(store.list_records()) == [R2]
        assert ids(store.list_records(status=StatusReason.ERROR)) == []
        assert ids(store.list_records(kind="whatsapp")) == [R2]
        assert store.records_linking(WHATSAPP_COLUMN, WHATSAPP_1) == []
        assert store.records_linking(PROVIDER_COLUMN, PROVIDER) == []
        assert store.due_retries(1e12) == []
        assert store.is_applied(R1, "evt-cascade")
        assert store.inbox_size(R1) == 0

    def test_a_deleted_record_id_starts_again_from_version_zero(self, store: StateStore) -> None:
        deliver(store, provision(R1, "evt-1"))
        deliver(store, parent_deleted("msdyn_ocwhatsappchannelaccount", WHATSAPP_1, "evt-x"),
                R1)
        commit = deliver(store, provision(R1, "evt-2"))
        assert commit.expected_version == 0
        record = store.load(R1)
        assert record is not None
        assert record.version == 2
        assert len(store.history(R1)) == 2 + 1 + 2

    def test_history_limit_keeps_the_newest_entries(
        self, make_store: Callable[[int], StateStore]
    ) -> None:
        store = make_store(3)
        deliver(store, provision(R1, "evt-1"))  # create, provision
        finish_step(store, R1)  # provisioned
        assert [e.trigger for e in store.history(R1)] == ["create", "provision", "provisioned"]
        deprovisioning = deliver(store, deprovision(R1, "evt-2"))
        assert [e.trigger for e in store.history(R1)] == [
            "provision", "provisioned", "deprovision"]
        rejected = rejected_entry(store, R1, "evt-3")
        store.append_history(R1, [rejected, rejected])
        assert store.history(R1) == [*deprovisioning.entries, rejected, rejected]

    def test_append_history_adds_entries_without_changing_the_record(
        self, store: StateStore
    ) -> None:
        deliver(store, provision(R1, "evt-1"))
        record, entries = store.load(R1), store.history(R1)
        rejected = rejected_entry(store, R1, "evt-9")
        store.append_history(R1, [rejected])
        store.append_history(R1, [])
        assert store.history(R1) == [*entries, rejected]
        assert store.load(R1) == record

    # -- commit refused: nothing changes --------------------------------------------------

    @pytest.mark.parametrize(
        ("case", "expected"),
        [
            ("stale version", CommitStatus.CONFLICT),
            ("version from the future", CommitStatus.CONFLICT),
            ("created twice", CommitStatus.CONFLICT),
            ("delete at a stale version", CommitStatus.CONFLICT),
            ("pop an event that is not the head", CommitStatus.CONFLICT),
            ("lease owned by another worker", CommitStatus.CONFLICT),
            ("dedupe key already applied", CommitStatus.DUPLICATE),
        ],
    )
    def test_a_refused_commit_changes_nothing(
        self, store: StateStore, case: str, expected: CommitStatus
    ) -> None:
        deliver(store, provision(R1, "evt-1", links={PROVIDER_COLUMN: PROVIDER}))
        assert accept(store, deprovision(R1, "evt-2"))
        assert accept(store, deprovision(R1, "evt-3"))
        assert store.acquire_lease(R1, OWNER, LEASE)
        good = replace(head_commit(store, R1), retry_at=500.0)
        assert good.expected_version == 2
        refused = {
            "stale version": replace(good, expected_version=1),
            "version from the future": replace(good, expected_version=3),
            "created twice": replace(good, expected_version=0, before=None),
            "delete at a stale version": replace(good, expected_version=1, after=None,
                                                 deleted=True),
            "pop an event that is not the head": replace(good, pop_event_id="evt-3"),
            "lease owned by another worker": replace(good, lease_owner=OTHER),
            "dedupe key already applied": replace(good, dedupe_key="evt-1"),
        }[case]
        seen = observe(store, ("evt-1", "evt-2", "evt-3"))

        assert store.commit(refused) is expected

        assert observe(store, ("evt-1", "evt-2", "evt-3")) == seen
        assert not store.is_applied(R1, "evt-2")
        # Nothing was half done: the right commit still goes through.
        assert store.commit(good) is CommitStatus.OK
        assert store.is_applied(R1, "evt-2")
        assert store.due_retries(1e12) == [(R1, 500.0)]

    def test_popping_from_an_empty_inbox_is_a_conflict(self, store: StateStore) -> None:
        deliver(store, provision(R1, "evt-1"))
        record = store.load(R1)
        assert record is not None
        assert store.acquire_lease(R1, OWNER, LEASE)
        seen = observe(store, ("evt-1",))
        commit = Commit(R1, record.version, record, record, (), pop_event_id="evt-1",
                        lease_owner=OWNER)
        assert store.commit(commit) is CommitStatus.CONFLICT
        assert observe(store, ("evt-1",)) == seen

    def test_a_commit_under_an_expired_lease_is_a_conflict(
        self, store: StateStore, elapse: Callable[[float], None]
    ) -> None:
        deliver(store, provision(R1, "evt-1"))
        assert accept(store, deprovision(R1, "evt-2"))
        assert store.acquire_lease(R1, OWNER, SHORT_LEASE)
        commit = head_commit(store, R1)
        elapse(PAST_SHORT_LEASE)
        seen = observe(store, ("evt-2",))
        assert store.commit(commit) is CommitStatus.CONFLICT
        assert observe(store, ("evt-2",)) == seen

    def test_a_duplicate_is_recorded_by_a_second_commit_without_the_key(
        self, store: StateStore
    ) -> None:
        deliver(store, provision(R1, "evt-1"))
        # A redelivery of evt-1 replayed after forget_accepted: already applied.
        store.forget_accepted(R1, "evt-1")
        assert accept(store, provision(R1, "evt-1"))
        assert store.acquire_lease(R1, OWNER, LEASE)
        commit = head_commit(store, R1)
        assert commit.dedupe_key is None
        assert [entry.outcome for entry in commit.entries] == [Result.DUPLICATE]
        assert store.commit(replace(commit, dedupe_key="evt-1")) is CommitStatus.DUPLICATE
        assert store.inbox_size(R1) == 1
        assert store.commit(commit) is CommitStatus.OK
        assert store.inbox_size(R1) == 0
        assert store.history(R1)[-1].outcome is Result.DUPLICATE
        record = store.load(R1)
        assert record is not None
        assert record.version == 2

    # -- leases ------------------------------------------------------------------------

    def test_a_lease_is_held_by_one_owner_at_a_time(self, store: StateStore) -> None:
        assert store.lease_ttl(R1) is None
        assert store.acquire_lease(R1, OWNER, LEASE)
        assert not store.acquire_lease(R1, OTHER, LEASE)
        assert store.acquire_lease(R2, OTHER, LEASE)  # leases are per record
        ttl = store.lease_ttl(R1)
        assert ttl is not None
        assert LEASE - 5 < ttl <= LEASE

    def test_only_the_holder_renews_the_lease(self, store: StateStore) -> None:
        assert not store.renew_lease(R1, OWNER, LEASE)  # nobody holds it
        assert store.acquire_lease(R1, OWNER, 1.0)
        assert not store.renew_lease(R1, OTHER, LEASE)
        ttl = store.lease_ttl(R1)
        assert ttl is not None
        assert ttl <= 1.0
        assert store.renew_lease(R1, OWNER, LEASE)
        ttl = store.lease_ttl(R1)
        assert ttl is not None
        assert ttl > LEASE - 5

    def test_release_refuses_while_the_inbox_has_events(self, store: StateStore) -> None:
        assert accept(store, provision(R1, "evt-1"))
        assert store.acquire_lease(R1, OWNER, LEASE)
        assert not store.release_lease(R1, OWNER)
        assert store.lease_ttl(R1) is not None
        assert not store.acquire_lease(R1, OTHER, LEASE)
        assert store.commit(head_commit(store, R1)) is CommitStatus.OK
        assert store.release_lease(R1, OWNER)
        assert store.lease_ttl(R1) is None
        assert store.acquire_lease(R1, OTHER, LEASE)

    def test_a_record_with_a_step_in_flight_stays_pending_until_release(
        self, store: StateStore
    ) -> None:
        assert accept(store, provision(R1, "evt-1"))
        assert store.acquire_lease(R1, OWNER, LEASE)
        assert store.commit(head_commit(store, R1)) is CommitStatus.OK
        record = store.load(R1)
        assert record is not None
        assert pending_step(record) is not None
        assert store.inbox_size(R1) == 0
        assert store.pending() == [R1]
        assert store.commit(step_commit(store, R1, ok=True)) is CommitStatus.OK
        assert store.pending() == [R1]
        assert store.release_lease(R1, OWNER)
        assert store.pending() == []

    def test_hand_over_releases_with_events_queued_and_keeps_the_record_pending(
        self, store: StateStore
    ) -> None:
        assert accept(store, provision(R1, "evt-1"))
        assert accept(store, deprovision(R1, "evt-2"))
        assert store.acquire_lease(R1, OWNER, LEASE)
        assert store.commit(head_commit(store, R1)) is CommitStatus.OK
        assert not store.release_lease(R1, OWNER)

        assert store.release_lease(R1, OWNER, hand_over=True)

        assert store.lease_ttl(R1) is None
        assert store.pending() == [R1]
        assert store.inbox_size(R1) == 1
        assert store.commit(head_commit(store, R1)) is CommitStatus.CONFLICT  # let go
        assert store.acquire_lease(R1, OTHER, LEASE)
        assert store.commit(head_commit(store, R1, OTHER)) is CommitStatus.OK
        assert store.release_lease(R1, OTHER)
        assert store.pending() == []

    def test_hand_over_of_an_empty_inbox_keeps_the_record_pending(
        self, store: StateStore
    ) -> None:
        assert accept(store, provision(R1, "evt-1"))
        assert store.acquire_lease(R1, OWNER, LEASE)
        assert store.commit(head_commit(store, R1)) is CommitStatus.OK
        assert store.release_lease(R1, OWNER, hand_over=True)
        assert store.lease_ttl(R1) is None
        assert store.pending() == [R1]

    def test_hand_over_only_by_the_holder(self, store: StateStore) -> None:
        assert accept(store, provision(R1, "evt-1"))
        assert not store.release_lease(R1, OWNER, hand_over=True)  # nobody holds it
        assert store.acquire_lease(R1, OTHER, LEASE)
        assert not store.release_lease(R1, OWNER, hand_over=True)
        assert store.lease_ttl(R1) is not None
        assert not store.acquire_lease(R1, OWNER, LEASE)
        assert store.pending() == [R1]

    def test_release_by_a_non_holder_returns_false_and_keeps_the_lease(
        self, store: StateStore
    ) -> None:
        assert not store.release_lease(R1, OWNER)  # nobody holds it
        assert store.acquire_lease(R1, OWNER, LEASE)
        assert not store.release_lease(R1, OTHER)
        assert store.lease_ttl(R1) is not None
        assert not store.acquire_lease(R1, OTHER, LEASE)
        assert store.release_lease(R1, OWNER)

    def test_an_expired_lease_is_free_for_another_worker(
        self, store: StateStore, elapse: Callable[[float], None]
    ) -> None:
        assert accept(store, provision(R1, "evt-1"))
        assert store.acquire_lease(R1, OWNER, SHORT_LEASE)
        elapse(PAST_SHORT_LEASE)
        assert store.lease_ttl(R1) is None
        assert not store.renew_lease(R1, OWNER, LEASE)
        assert not store.drop_head(R1, "evt-1", OWNER)
        assert store.acquire_lease(R1, OTHER, LEASE)
        assert not store.release_lease(R1, OWNER)
        assert store.commit(head_commit(store, R1, OTHER)) is CommitStatus.OK
        assert store.release_lease(R1, OTHER)

    def test_a_renewed_lease_outlives_its_first_term(
        self, store: StateStore, elapse: Callable[[float], None]
    ) -> None:
        assert store.acquire_lease(R1, OWNER, SHORT_LEASE)
        assert store.renew_lease(R1, OWNER, LEASE)
        elapse(PAST_SHORT_LEASE)
        assert store.lease_ttl(R1) is not None
        assert not store.acquire_lease(R1, OTHER, LEASE)

    def test_a_non_ascii_event_id_is_popped_by_the_commit_that_applied_it(
        self, store: StateStore,
    ) -> None:
        # Stored JSON escapes non-ASCII; the commit script decodes the inbox head's id.
        commit = deliver(store, provision(R1, "évènement-✓-1"))
        assert commit.pop_event_id == "évènement-✓-1"
        assert store.heads([R1], 5) == [[]]
        assert [entry.event_id for entry in store.history(R1)][-1] == "évènement-✓-1"

    def test_records_accepted_with_a_claim_are_no_orphans_until_it_expires(
        self, store: StateStore, elapse: Callable[[float], None],
    ) -> None:
        raws = [provision(R1, "evt-1"), provision(R2, "evt-2")]
        assert store.accept_many([(R1, "evt-1", json.dumps(raws[0]))], now=1.0,
                                 claim_seconds=SHORT_LEASE) == [True]
        assert store.accept_many([(R2, "evt-2", json.dumps(raws[1]))], now=1.0) == [True]
        assert store.claim_orphans(10, LEASE) == [R2]  # R1's submitter kicked it itself
        elapse(PAST_SHORT_LEASE)
        assert store.claim_orphans(10, LEASE) == [R1]

    # -- many records in one round trip ------------------------------------------------

    def test_heads_read_many_inboxes_at_once(self, store: StateStore) -> None:
        for number in range(3):
            assert accept(store, provision(R1, f"evt-{number}"))
        assert accept(store, provision(R2, "evt-r2"))
        assert [[item.event_id for item in items]
                for items in store.heads([R1, R2, R3], 2)] == [["evt-0", "evt-1"], ["evt-r2"], []]
        settle(store, head_commit(store, R2))
        assert store.heads([R2, R1], 1) == [[], store.heads([R1], 1)[0]]

    def test_a_chain_of_commits_lands_in_order_in_one_call(self, store: StateStore) -> None:
        assert accept(store, provision(R1, "evt-1"))
        assert accept(store, deprovision(R1, "evt-2"))
        assert accept(store, provision(R2, "evt-3"))
        claims = store.acquire_many([R1, R2], OWNER, LEASE, 1)
        assert [[item.event_id for item in claim.inbox] for claim in claims if claim] == [
            ["evt-1"], ["evt-3"]]
        first = head_commit(store, R1)
        second = chained(first, deprovision(R1, "evt-2"))
        other = head_commit(store, R2)
        assert store.commit_many([first, other, second], release=[R1, R2], owner=OWNER) == (
            [CommitStatus.OK] * 3, [Release.RELEASED] * 2)
        record = store.load(R1)
        assert record is not None and record.version == second.after.version  # type: ignore[union-attr]
        assert store.heads([R1, R2], 5) == [[], []]
        assert store.pending() == []

    def test_a_chain_stops_at_its_first_refusal(self, store: StateStore) -> None:
        for number in range(3):
            assert accept(store, provision(R1, f"evt-{number}") if number == 0
                          else deprovision(R1, f"evt-{number}"))
        assert store.acquire_lease(R1, OWNER, LEASE)
        first = head_commit(store, R1)
        second = replace(chained(first, deprovision(R1, "evt-1")), lease_owner=OTHER)
        third = chained(second, deprovision(R1, "evt-2"))
        assert store.commit_many([first, second, third], release=[R1], owner=OWNER) == (
            [CommitStatus.OK, CommitStatus.CONFLICT, CommitStatus.CONFLICT], [Release.BUSY])
        assert store.load(R1) == first.after
        assert [item.event_id for item in store.heads([R1], 5)[0]] == ["evt-1", "evt-2"]

    def test_leases_are_taken_and_released_many_at_a_time(self, store: StateStore) -> None:
        assert store.acquire_lease(R2, OTHER, LEASE)
        deliver(store, provision(R1, "evt-1"))
        claims = store.acquire_many([R1, R2, R3], OWNER, LEASE, 5)
        assert [claim is not None for claim in claims] == [True, False, True]
        assert claims[0] is not None and claims[0].record == store.load(R1)
        assert claims[2] is not None and (claims[2].record, claims[2].inbox) == (None, [])
        assert accept(store, provision(R3, "evt-3"))
        assert store.release_many([R1, R2, R3], OWNER) == [
            Release.RELEASED, Release.NOT_HOLDER, Release.BUSY]
        assert store.lease_ttl(R1) is None
        assert store.lease_ttl(R3) is not None
        assert R3 in store.pending()

    # -- pending, deliveries -------------------------------------------------------------

    def test_pending_lists_records_with_queued_work_until_release(
        self, store: StateStore
    ) -> None:
        assert store.pending() == []
        assert accept(store, provision(R1, "evt-1"), now=10.0)
        assert accept(store, provision(R2, "evt-2", channel_id=WHATSAPP_3), now=20.0)
        assert sorted(store.pending()) == [R1, R2]

        assert store.acquire_lease(R1, OWNER, LEASE)
        assert store.commit(head_commit(store, R1)) is CommitStatus.OK
        assert store.inbox_size(R1) == 0
        assert sorted(store.pending()) == [R1, R2]  # drained, not yet released
        assert store.release_lease(R1, OWNER)
        assert store.pending() == [R2]

        assert store.acquire_lease(R2, OWNER, LEASE)
        assert store.drop_head(R2, "evt-2", OWNER)
        assert store.pending() == [R2]
        assert store.release_lease(R2, OWNER)
        assert store.pending() == []

    def test_a_refused_release_keeps_the_record_pending(self, store: StateStore) -> None:
        assert accept(store, provision(R1, "evt-1"))
        assert store.acquire_lease(R1, OWNER, LEASE)
        assert not store.release_lease(R1, OWNER)
        assert not store.release_lease(R1, OTHER)
        assert store.pending() == [R1]

    def test_count_deliveries_counts_per_task(self, store: StateStore) -> None:
        assert [store.count_deliveries("task-a", 60) for _ in range(3)] == [1, 2, 3]
        assert store.count_deliveries("task-b", 60) == 1
        assert store.count_deliveries("task-a", 60) == 4

    def test_count_deliveries_starts_again_after_its_ttl(
        self, store: StateStore, elapse: Callable[[float], None]
    ) -> None:
        assert store.count_deliveries("task-a", 1) == 1
        assert store.count_deliveries("task-a", 1) == 2
        elapse(1.2)
        assert store.count_deliveries("task-a", 1) == 1

    def test_ping(self, store: StateStore) -> None:
        assert store.ping()

    # -- the failed-task store -----------------------------------------------------------

    def test_failed_store_starts_empty(self, failed_store: FailedStore) -> None:
        assert failed_store.count() == 0
        assert failed_store.all() == []
        assert failed_store.get("nope") is None
        assert not failed_store.remove("nope")

    def test_failed_store_keeps_the_whole_entry(self, failed_store: FailedStore) -> None:
        entry = failure("evt-1", NOW)
        assert failed_store.record(entry) == entry
        assert failed_store.get(entry.id) == entry
        assert failed_store.all() == [entry]
        assert failed_store.count() == 1

    def test_failing_again_merges_into_one_entry(self, failed_store: FailedStore) -> None:
        first = failure("evt-1", NOW)
        again = failure("evt-1", NOW + timedelta(minutes=5), message="second failure",
                        hostname="host-b")
        assert again.id == first.id
        failed_store.record(first)
        merged = failed_store.record(again)
        assert merged.attempts == 2
        assert merged.first_failed_at == first.first_failed_at
        assert merged.last_failed_at == again.last_failed_at
        assert merged.message == "second failure"
        assert merged.hostname == "host-b"
        assert failed_store.get(first.id) == merged
        assert failed_store.count() == 1
        assert failed_store.record(again).attempts == 3

    def test_failed_entries_are_listed_oldest_last_failure_first(
        self, failed_store: FailedStore
    ) -> None:
        late = failure("evt-late", NOW + timedelta(hours=2))
        early = failure("evt-early", NOW)
        middle = failure("evt-middle", NOW + timedelta(hours=1))
        for entry in (late, early, middle):
            failed_store.record(entry)
        assert [e.event_id for e in failed_store.all()] == ["evt-early", "evt-middle",
                                                            "evt-late"]
        failed_store.record(failure("evt-early", NOW + timedelta(hours=3)))
        assert [e.event_id for e in failed_store.all()] == ["evt-middle", "evt-late",
                                                            "evt-early"]

    def test_failed_entries_are_ordered_by_time_not_by_text(
        self, failed_store: FailedStore
    ) -> None:
        # format_time drops a zero fraction: "…10:00:00Z" is earlier than "…10:00:00.250000Z"
        # though it sorts after it as text.
        whole = failure("evt-whole", NOW)
        fraction = failure("evt-fraction", NOW + timedelta(milliseconds=250))
        assert whole.last_failed_at > fraction.last_failed_at  # as text
        failed_store.record(fraction)
        failed_store.record(whole)
        assert [e.event_id for e in failed_store.all()] == ["evt-whole", "evt-fraction"]

    def test_newest_is_one_page_newest_first(self, failed_store: FailedStore) -> None:
        for n in range(5):
            failed_store.record(failure(f"evt-{n}", NOW + timedelta(seconds=n)))
        assert [e.event_id for e in failed_store.newest(3)] == ["evt-4", "evt-3", "evt-2"]
        assert len(failed_store.newest(10)) == 5
        assert failed_store.newest(0) == []

    def test_remove_deletes_one_entry(self, failed_store: FailedStore) -> None:
        one, two = failure("evt-1", NOW), failure("evt-2", NOW + timedelta(seconds=1))
        failed_store.record(one)
        failed_store.record(two)
        assert failed_store.remove(one.id)
        assert not failed_store.remove(one.id)
        assert failed_store.get(one.id) is None
        assert failed_store.all() == [two]
        assert failed_store.count() == 1
        # Recorded again after removal, it starts over.
        assert failed_store.record(one).attempts == 1


def rejected_entry(store: StateStore, record_id: str,
                                    event_id: str) -> HistoryEntry:
    """A ``rejected`` entry for the record as it is (what append_history is for)."""
    record = store.load(record_id)
    assert record is not None
    event = parse_event(cloudevent("calling_test.completed", record_id, event_id,
                                   {"result": "Success"}))
    outcome = apply(record, event, now=NOW + timedelta(seconds=5))
    assert outcome.record == record
    assert [entry.outcome for entry in outcome.entries] == [Result.REJECTED]
    return outcome.entries[0]
