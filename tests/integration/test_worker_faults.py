"""Faults with real worker processes: many workers on the same records, a worker killed
with SIGKILL in the middle of a stream, and bad input at every way in (SPEC §3, §7)."""

from __future__ import annotations

import json
import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from statemachine import Result, check_invariants
from tests.factories import event, gatekeeper, new_id, provision
from tests.integration.workers import Cluster, applied_versions, own_entries, running_cluster
from worker.emulators import Emulator
from worker.task_names import HANDLE_EVENT

pytestmark = pytest.mark.integration

PHONE = "msdyn_phonenumberid"


@pytest.fixture
def cluster(redis_url: str, tmp_path: Path, request: pytest.FixtureRequest,
            ) -> Iterator[Cluster]:
    with running_cluster(redis_url, tmp_path, request, emulator=Emulator()) as running:
        yield running


# -- streams of events -----------------------------------------------------------------


def record_stream(rng: random.Random, length: int) -> list[dict[str, Any]]:
    """One record's events: a provision, then a random mix of every other type."""
    record_id, channel_id = new_id(), new_id()
    voice = rng.random() < 0.5
    kind = "voice" if voice else "whatsapp"
    links = {PHONE: new_id()} if voice else None
    events = [provision(record_id, channel_id, kind=kind, links=links)]
    choices = [
        (6, lambda: gatekeeper(record_id, "Inactive", "Error", "probe failed")),
        (6, lambda: gatekeeper(record_id, "Active", "Running")),
        (4, lambda: provision(record_id, channel_id, kind=kind, links=links)),
        (4, lambda: event("calling_test.requested", record_id)),
        (3, lambda: event("calling_test.completed", record_id,
                          {"result": rng.choice(["Success", "Failure"])})),
        (1, lambda: event("deprovision.requested", record_id)),
    ]
    weights = [weight for weight, _ in choices]
    for _ in range(length - 1):
        _, make = rng.choices(choices, weights=weights)[0]
        events.append(make())
    return events


def interleave(rng: random.Random, streams: list[list[dict[str, Any]]],
               ) -> list[dict[str, Any]]:
    """Merge the streams at random, keeping each stream's own order."""
    cursors = [0] * len(streams)
    merged: list[dict[str, Any]] = []
    live = [i for i, stream in enumerate(streams) if stream]
    while live:
        pick = rng.choice(live)
        merged.append(streams[pick][cursors[pick]])
        cursors[pick] += 1
        if cursors[pick] == len(streams[pick]):
            live.remove(pick)
    return merged


def entries_recorded(cluster: Cluster, record_ids: list[str]) -> int:
    store = cluster.service.store
    pipe = store.client.pipeline(transaction=False)  # type: ignore[attr-defined]
    for record_id in record_ids:
        pipe.llen(store.keys.history(record_id))  # type: ignore[attr-defined]
    # Store v2: element 0 of the history list is the record itself.
    return sum(max(0, size - 1) for size in pipe.execute())


def all_applied(cluster: Cluster, events: list[dict[str, Any]]) -> bool:
    """Every event has an entry of its own and no record has work left."""
    if not cluster.settled():
        return False
    seen: set[str] = set()
    for record_id in {e["subject"] for e in events}:
        seen.update(e.event_id for e in own_entries(cluster.history(record_id)))
    return all(e["id"] in seen for e in events)


def check_exactly_once(cluster: Cluster, events: list[dict[str, Any]]) -> None:
    """Each event has exactly one entry of its own (besides a ``create``), none of them a
    duplicate; versions are contiguous; the record holds every invariant."""
    by_record: dict[str, list[str]] = defaultdict(list)
    for e in events:
        by_record[e["subject"]].append(e["id"])
    problems: list[str] = []
    for record_id, event_ids in by_record.items():
        history = cluster.history(record_id)
        mine = [e for e in own_entries(history) if e.trigger != "create"]
        counts = Counter(e.event_id for e in mine)
        for event_id in event_ids:
            if counts[event_id] != 1:
                problems.append(f"{record_id}: event {event_id} has {counts[event_id]} entries")
        extra = set(counts) - set(event_ids)
        if extra:
            problems.append(f"{record_id}: entries of events never sent: {sorted(extra)}")
        duplicates = [e for e in history if e.outcome is Result.DUPLICATE]
        if duplicates:
            problems.append(f"{record_id}: {len(duplicates)} duplicate entries")
        versions = applied_versions(history)
        record = cluster.record(record_id)
        assert record is not None
        if versions != list(range(1, record.version + 1)):
            problems.append(f"{record_id}: versions {versions} for version {record.version}")
        check_invariants(record)
    assert not problems, "\n".join(problems[:20])


def event_order(cluster: Cluster, record_id: str) -> list[str]:
    """The record's events in the order their entries were written."""
    order: list[str] = []
    for entry in own_entries(cluster.history(record_id)):
        if not order or order[-1] != entry.event_id:
            order.append(entry.event_id)
    return order


# -- many workers, one record's order --------------------------------------------------


def test_two_workers_apply_each_records_events_in_acceptance_order(
    redis_url: str, tmp_path: Path, request: pytest.FixtureRequest,
) -> None:
    # Drain tasks of 3 records each: the 4 pool processes contend for the same records.
    with running_cluster(redis_url, tmp_path, request, emulator=Emulator(),
                         settings={"PROVISIONING_BATCH_RECORDS": "3"}) as cluster:
        two_workers_apply_in_order(cluster)


def two_workers_apply_in_order(cluster: Cluster) -> None:
    rng = random.Random(20261127)
    streams = [record_stream(rng, 20) for _ in range(20)]
    events = interleave(rng, streams)
    workers = [cluster.start_worker(concurrency=2), cluster.start_worker(concurrency=2)]
    record_ids = [stream[0]["subject"] for stream in streams]

    waves = [events[i:i + 100] for i in range(0, len(events), 100)]
    for number, wave in enumerate(waves, start=1):
        report = cluster.submit(wave)
        assert report.ok and report.accepted == len(wave)
        if number < len(waves):  # the next wave arrives while this one is being applied
            cluster.wait_for(lambda n=number: entries_recorded(cluster, record_ids) >= 60 * n,
                             f"wave {number} to be under way", timeout=60)
    cluster.wait_for(lambda: all_applied(cluster, events), "every event applied", timeout=90)

    for stream in streams:
        assert event_order(cluster, stream[0]["subject"]) == [e["id"] for e in stream]
    check_exactly_once(cluster, events)
    for worker in workers:  # both took part
        assert '"event": "history"' in worker.log.read_text(encoding="utf-8")


# -- a worker killed with SIGKILL ------------------------------------------------------


def lease_holders(cluster: Cluster) -> set[str]:
    store = cluster.service.store
    keys = store.keys  # type: ignore[attr-defined]
    client = store.client  # type: ignore[attr-defined]
    holders: set[str] = set()
    for shard in range(keys.shards):
        prefix = keys.base(shard) + "l:"
        holders.update(key[len(prefix):] for key in client.scan_iter(
            match=prefix + "*", count=1000))
    return holders


def test_a_killed_worker_loses_no_accepted_event_and_its_records_drain_within_60_s(
    redis_url: str, tmp_path: Path, request: pytest.FixtureRequest,
) -> None:
    # Backends that answer in 20 ms keep the worker holding records while the test looks:
    # batch drains apply 500 queued events in about a second against an instant emulator.
    with running_cluster(redis_url, tmp_path, request, emulator=Emulator(latency_ms=20),
                         ) as cluster:
        killed_worker_loses_nothing(cluster)


def killed_worker_loses_nothing(cluster: Cluster) -> None:
    rng = random.Random(7)
    streams = [record_stream(rng, 25) for _ in range(40)]
    events = interleave(rng, streams)
    assert len(events) == 1000
    record_ids = [stream[0]["subject"] for stream in streams]
    first = cluster.start_worker(concurrency=2, name="doomed")

    for start in range(0, 500, 50):
        assert cluster.submit(events[start:start + 50]).accepted == 50
    cluster.wait_for(lambda: entries_recorded(cluster, record_ids) >= 250,
                     "the first worker to be in the middle of the stream", timeout=60)
    members = first.group_members()
    assert len(members) >= 3  # the main process and its two pool children
    # Kill while it holds records (it may be between two drains for an instant).
    held = cluster.wait_for(lambda: lease_holders(cluster), "the first worker to hold a record")
    first.kill()
    killed_at = time.monotonic()
    assert not first.group_members()
    applied_at_kill = entries_recorded(cluster, record_ids)

    for start in range(500, 1000, 50):
        assert cluster.submit(events[start:start + 50]).accepted == 50
    cluster.start_worker(concurrency=2, name="successor")
    cluster.wait_for(lambda: all_applied(cluster, events),
                     "every accepted event applied after the kill",
                     timeout=60 - (time.monotonic() - killed_at))
    elapsed = time.monotonic() - killed_at

    assert applied_at_kill < entries_recorded(cluster, record_ids)
    assert held <= set(record_ids)
    assert not held & set(cluster.service.store.pending())  # the held records were drained
    assert elapsed < 60
    check_exactly_once(cluster, events)
    for stream in streams:
        assert event_order(cluster, stream[0]["subject"]) == [e["id"] for e in stream]
    # A step re-run after the kill reuses its Idempotency-Key for the same request: the
    # emulator never saw one key with two different requests (it answers those 422).
    assert [r for r in cluster.requests() if r["status"] == 422] == []


# -- bad input at every way in ---------------------------------------------------------


def failed_entry(cluster: Cluster, what: str, match: Any) -> Any:
    def find() -> Any:
        return next((entry for entry in cluster.failed() if match(entry)), None)

    return cluster.wait_for(find, what)


def test_an_invalid_raw_event_goes_to_the_failed_task_store_with_field_paths(
    cluster: Cluster,
) -> None:
    worker = cluster.start_worker(concurrency=1)
    bad = event("provision.requested", "not-a-uuid",
                {"name": "n" * 101, "channel": {"kind": "fax", "id": new_id()}})

    cluster.send(bad)
    entry = failed_entry(cluster, "the invalid event's failed-task entry",
                         lambda e: e.event_id == bad["id"])

    assert entry.task == "provisioning.handle_event"
    assert entry.exception == "InvalidEvent"
    assert entry.event_type == "provision.requested"
    paths = {reason.split(":", 1)[0] for reason in entry.reasons}
    assert {"subject", "data.name", "data.channel.kind"} <= paths
    assert entry.body["args"] == [bad]  # the whole message, for a replay
    record_id = new_id()
    cluster.send(provision(record_id, new_id()))
    cluster.wait_status(record_id, "Running")
    assert worker.alive()


@pytest.mark.parametrize("body", ["provision please", [1, 2, 3], None, 42],
                         ids=["string", "array", "null", "number"])
def test_a_message_that_is_not_an_event_object_goes_to_the_failed_task_store(
    cluster: Cluster, body: Any,
) -> None:
    worker = cluster.start_worker(concurrency=1)

    cluster.send(body)
    entry = failed_entry(cluster, "the message's failed-task entry",
                         lambda e: e.body.get("args") == [body])

    assert entry.exception == "InvalidEvent"
    assert entry.event_id is None
    assert any("JSON object" in reason for reason in entry.reasons)
    record_id = new_id()
    cluster.send(provision(record_id, new_id()))
    cluster.wait_status(record_id, "Running")
    assert worker.alive()


class Canary:
    """Unpickling this creates ``path``: proof that a pickle message was executed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def test_a_pickle_message_is_refused_and_never_unpickled(
    cluster: Cluster, tmp_path: Path,
) -> None:
    worker = cluster.start_worker(concurrency=1)
    canary = tmp_path / "unpickled"

    cluster.send(Canary(canary), serializer="pickle")
    record_id = new_id()
    cluster.send(provision(record_id, new_id()))  # queued after the pickle message
    cluster.wait_status(record_id, "Running")

    assert not canary.exists()
    assert worker.alive()
    cluster.wait_for(lambda: "pickle" in worker.tail(400), "the refusal in the worker's log")


def test_a_refused_pickle_message_is_kept_in_the_failed_task_store(cluster: Cluster) -> None:
    """Bad input is never lost (SPEC §3): the refused message stays for an operator."""
    cluster.start_worker(concurrency=1)
    pickled = provision(new_id(), new_id())

    cluster.send(pickled, serializer="pickle")
    marker = new_id()
    cluster.send(provision(marker, new_id()))  # handled after the pickle message
    cluster.wait_status(marker, "Running")

    assert cluster.record(pickled["subject"]) is None
    entries = cluster.failed()
    assert len(entries) == 1, "the refused pickle message left no failed-task entry"
    assert "pickle" in (entries[0].message + " ".join(entries[0].reasons))


@pytest.mark.parametrize(("args", "kwargs"), [
    ([], {}),
    (["EVENT", "extra"], {}),
], ids=["no-argument", "two-arguments"])
def test_a_message_with_the_wrong_arguments_goes_to_the_failed_task_store(
    cluster: Cluster, args: list[Any], kwargs: dict[str, Any],
) -> None:
    """Bad input never crashes a worker and is never lost (SPEC §3)."""
    worker = cluster.start_worker(concurrency=1)
    sent = provision(new_id(), new_id())
    args = [sent if a == "EVENT" else a for a in args]
    kwargs = {k: sent if v == "EVENT" else v for k, v in kwargs.items()}

    cluster.client.send_task(HANDLE_EVENT, args=args, kwargs=kwargs)
    marker = new_id()
    cluster.send(provision(marker, new_id()))  # handled after the bad message
    cluster.wait_status(marker, "Running")

    assert worker.alive()
    entries = [e for e in cluster.failed() if e.task == HANDLE_EVENT]
    assert len(entries) == 1, "the message with the wrong arguments was dropped"


def test_an_event_for_an_unknown_record_goes_to_the_failed_task_store(
    cluster: Cluster,
) -> None:
    worker = cluster.start_worker(concurrency=1)
    record_id = new_id()
    by_message = event("deprovision.requested", record_id)
    by_submit = gatekeeper(record_id, "Inactive", "Error")

    cluster.send(by_message)
    cluster.submit([by_submit])
    first = failed_entry(cluster, "the raw message's entry",
                         lambda e: e.event_id == by_message["id"])
    second = failed_entry(cluster, "the submitted event's entry",
                          lambda e: e.event_id == by_submit["id"])

    for entry in (first, second):
        assert entry.exception == "UnknownRecord"
        assert entry.record_id == record_id
    assert cluster.record(record_id) is None
    cluster.wait_for(cluster.settled, "the unknown record's inbox to be dropped")
    # The id may still be created later, and its events then apply normally.
    cluster.send(provision(record_id, new_id()))
    cluster.wait_status(record_id, "Running")
    assert worker.alive()


def test_submit_of_a_file_with_a_bad_line_exits_1_and_accepts_the_good_lines(
    cluster: Cluster, tmp_path: Path,
) -> None:
    cluster.start_worker(concurrency=1)
    good_one, good_two = new_id(), new_id()
    bad = event("provision.requested", "not-a-uuid",
                {"name": "n" * 101, "channel": {"kind": "whatsapp", "id": new_id()}})
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join([
        json.dumps(provision(good_one, new_id())),
        json.dumps(bad),
        "{not json",
        "",
        json.dumps(provision(good_two, new_id())),
    ]) + "\n", encoding="utf-8")

    result = cluster.provisioning("submit", str(path))

    assert result.returncode == 1, result.stderr
    errors = result.stderr.splitlines()
    assert "line 2: subject: must be a UUID, not 'not-a-uuid'" in errors
    assert any(line.startswith("line 2: data.name: ") for line in errors)
    assert any(line.startswith("line 3: ") and "JSON" in line for line in errors)
    assert all(line.startswith("line ") for line in errors), result.stderr
    assert "Traceback" not in result.stderr
    assert "accepted 2, refused 2" in result.stdout
    cluster.wait_status(good_one, "Running")
    cluster.wait_status(good_two, "Running")
