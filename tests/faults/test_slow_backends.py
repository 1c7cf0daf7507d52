"""Slow backends with SIGKILLs (issue 12): the backends answer every call in 200 ms, so a
worker has hundreds of steps in flight on its step loops when it is killed.

Two ``celery worker`` processes (prefork, concurrency 2) drain 1,600 events (times the
scale factor) over about 400 records (the kill scenario's mix, four events a record:
provisions, GateKeeper errors and recoveries, re-provisions, calling tests, deprovisions),
submitted in batches of 100 to 300. A killer SIGKILLs one worker's whole process group at
2 random moments (times the factor) and starts a new worker at once. Then: every accepted
event has exactly one entry of its own, in acceptance order, versions rising by one, every
step finished, no worker crashed other than by our kills, and the emulator answered each
Idempotency-Key with a fresh success at most once (a re-run step replays its answer).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.faults.conftest import Figures, Scale
from tests.faults.support import (
    Event,
    Killer,
    audit,
    batches,
    count_crashes,
    entries_recorded,
    mixed_events,
    settle,
)
from tests.integration.workers import running_cluster
from worker.emulators import Emulator

EVENTS = 1600
KILLS = 2
LATENCY_MS = 200.0
SEED = 20261207


def test_slow_backends_with_kills_lose_and_double_nothing(
    redis_url: str, tmp_path: Path, request: pytest.FixtureRequest, figures: Figures,
    scale: Scale,
) -> None:
    rng = random.Random(SEED)
    total, kills = EVENTS * scale.factor, KILLS * scale.factor
    events = mixed_events(rng, total, per_record=4)
    record_ids = list(dict.fromkeys(e["subject"] for e in events))
    emulator = Emulator(latency_ms=LATENCY_MS)
    with running_cluster(redis_url, tmp_path, request, emulator=emulator) as cluster:
        started = time.monotonic()
        for _ in range(2):
            cluster.start_worker(concurrency=2)

        def progress() -> int:
            return entries_recorded(cluster, record_ids)

        killer = Killer(cluster, random.Random(SEED + 1), kills, total, progress)
        killer.start()
        accepted: list[Event] = []
        for batch in batches(events, rng, 100, 300):
            report = cluster.submit(batch)
            assert report.ok and report.accepted == len(batch), report
            accepted.extend(batch)
        killer.finish(timeout=120 * scale.factor)
        waited = settle(cluster, accepted, timeout=120 * scale.factor)
        settled = time.monotonic()

        result = audit(cluster, accepted)
        crashes = count_crashes(cluster.processes)
        fresh = Counter(r.idempotency_key for r in emulator.requests
                        if r.idempotency_key and 200 <= r.status < 300 and not r.replayed)
        doubled_keys = sum(1 for count in fresh.values() if count > 1)
        result.fill(figures)
        crashes.fill(figures)
        figures.notes.update({
            "records": len(record_ids), "kills": len(killer.killed),
            "backend_latency_ms": LATENCY_MS,
            "most_calls_at_once": emulator.max_concurrency,
            "keys_answered_twice": doubled_keys,
            "total_s": round(settled - started, 1),
        })

        assert waited is not None, "not every accepted event was processed:\n" + result.details()
        assert len(killer.killed) == kills, killer.killed
        assert not result.problems(), result.details()
        assert doubled_keys == 0
        assert emulator.max_concurrency > 50  # many steps in flight when the kills land
        figures.check()
