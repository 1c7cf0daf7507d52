"""Slow backends do not slow the worker (issue 12): real worker processes, the emulator
answering every call in 200 ms, hundreds of steps in flight at once.

* 500 provisions take at most twice the wall time of 500 with instant backends (same
  workers, the emulator's latency switched between the two batches);
* order and exactly-once hold: every record's versions 1, 2, 3, each event applied once,
  each channel provisioned once, one Idempotency-Key per call, answered once;
* a SIGKILL of a whole worker while hundreds of slow steps are in flight loses nothing:
  the other worker and a new one finish every record, with the same keys.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from statemachine import Result
from tests.factories import new_id, provision
from tests.integration.workers import Cluster, applied_versions, running_cluster
from worker.emulators import Emulator

pytestmark = pytest.mark.integration

RECORDS = 500
LATENCY_MS = 200.0


def batch() -> list[dict[str, Any]]:
    return [provision(new_id(), new_id()) for _ in range(RECORDS)]


def run(cluster: Cluster, events: list[dict[str, Any]], timeout: float = 120.0) -> float:
    """Submit ``events`` (in calls of 100) and wait until every record is Running."""
    started = time.monotonic()
    for start in range(0, len(events), 100):
        report = cluster.submit(events[start:start + 100])
        assert report.ok and report.accepted == len(events[start:start + 100]), report
    wait_running(cluster, events, timeout)
    return time.monotonic() - started


def wait_running(cluster: Cluster, events: list[dict[str, Any]], timeout: float) -> None:
    store = cluster.service.store
    ids = [event["subject"] for event in events]

    def all_running() -> bool:
        return all(r is not None and r.status.label == "Running"
                   for r in (store.load(record_id) for record_id in ids))

    cluster.wait_for(all_running, f"{len(ids)} records Running", timeout=timeout, interval=0.2)


def check_exactly_once(cluster: Cluster, emulator: Emulator,
                       events: list[dict[str, Any]]) -> None:
    for event in events:
        entries = cluster.history(event["subject"])
        assert applied_versions(entries) == [1, 2, 3], entries
        applied = Counter((e.event_id, e.trigger) for e in entries
                          if e.outcome is Result.APPLIED)
        assert set(applied.values()) == {1}, entries
    subjects = {event["subject"] for event in events}
    ours = [r for r in emulator.requests
            if r.idempotency_key and r.idempotency_key.split(":")[0] in subjects]
    # One key per call; a key answered with a fresh success once (repeats replay it).
    fresh = Counter(r.idempotency_key for r in ours if 200 <= r.status < 300 and not r.replayed)
    assert len(fresh) == 2 * len(events) and set(fresh.values()) == {1}
    channels = emulator.channels
    for event in events:
        channel = channels[("whatsapp", event["data"]["channel"]["id"])]
        assert channel["revision"] == 1  # provisioned once, never twice
    assert cluster.failed() == []


def test_slow_backends_keep_the_pace_of_instant_ones_and_lose_nothing_to_a_kill(
    redis_url: str, tmp_path: Path, request: pytest.FixtureRequest,
) -> None:
    emulator = Emulator()
    with running_cluster(redis_url, tmp_path, request, emulator=emulator) as cluster:
        first = cluster.start_worker(concurrency=2)
        cluster.start_worker(concurrency=2)
        run(cluster, batch()[:20], timeout=60)  # both workers up and warm

        instant_events = batch()
        instant = run(cluster, instant_events)
        emulator.latency_ms = LATENCY_MS
        slow_events = batch()
        slow = run(cluster, slow_events)
        print(f"\n500 provisions: {instant:.1f} s with instant backends, {slow:.1f} s with "
              f"{LATENCY_MS:g} ms backends; at most {emulator.max_concurrency} calls at once")
        assert slow <= 2 * instant, (instant, slow)
        assert emulator.max_concurrency > 100  # hundreds of steps in flight, not 8 or 16
        check_exactly_once(cluster, emulator, instant_events + slow_events)

        # A SIGKILL of a whole worker while its slow steps are in flight.
        killed_events = batch()
        for start in range(0, RECORDS, 100):
            assert cluster.submit(killed_events[start:start + 100]).ok
        store = cluster.service.store
        cluster.wait_for(lambda: sum(1 for e in killed_events
                                     if (r := store.load(e["subject"])) is not None
                                     and r.status.label == "Running") >= RECORDS // 10,
                         "a tenth of the batch Running", interval=0.05)
        first.kill()
        cluster.start_worker(concurrency=2)
        wait_running(cluster, killed_events, timeout=120)
        cluster.wait_for(cluster.settled, "no queued work left")
        check_exactly_once(cluster, emulator, instant_events + slow_events + killed_events)
