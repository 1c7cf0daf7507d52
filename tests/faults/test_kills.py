"""SIGKILL of whole workers at random moments in a stream of events (SPEC §7: at-least-once
delivery, a worker killed at any instant loses no accepted event, and re-delivery never
applies an event twice, invariant 8).

Two ``celery worker`` processes (prefork, concurrency 2) drain a stream of 5,000 events
(times the scale factor) over about 500 records: a provision first for each record, then
GateKeeper errors and recoveries, re-provisions, calling tests on voice channels and now
and then a deprovision, so that each record's result depends on the order of its events.
The stream is submitted in batches of 50 to 150 through ``worker.api.submit_events``, at
most ``LAG`` events ahead of the workers. Meanwhile a killer thread SIGKILLs one worker's
whole process group (main process and pool children) at 5 random moments (times the factor),
wherever it is (mid-commit, mid-step, between two drains), and starts a new worker at once.

Then, once nothing is pending: every accepted event must have exactly one entry of its
own in its record's history, in acceptance order, versions rising by exactly one, every
step finished, and no worker process or pool child dead other than by our kills.
"""

from __future__ import annotations

import random
import time
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

pytestmark = pytest.mark.integration

EVENTS = 5000
KILLS = 5
LAG = 1000  # events the submitter may be ahead of the history (a queue the kills hit)
SEED = 20261127


def test_kills_lose_and_double_nothing(
    redis_url: str, tmp_path: Path, request: pytest.FixtureRequest, figures: Figures,
    scale: Scale,
) -> None:
    run_kills(redis_url, tmp_path, request, figures, scale, EVENTS * scale.factor,
              KILLS * scale.factor)


def run_kills(store_url: str, tmp_path: Path, request: pytest.FixtureRequest,
              figures: Figures, scale: Scale, total: int, kills: int,
              broker_url: str | None = None) -> None:
    """The scenario, with the store at ``store_url`` (tests/faults/test_cluster.py runs it
    on a Redis Cluster, its broker a plain Redis)."""
    rng = random.Random(SEED)
    events = mixed_events(rng, total)
    record_ids = list(dict.fromkeys(e["subject"] for e in events))
    # Steps take a little time, so that kills also land while backend calls are in flight.
    emulator = Emulator(latency_ms=2)
    with running_cluster(store_url, tmp_path, request, emulator=emulator,
                         broker_url=broker_url) as cluster:
        started = time.monotonic()
        for _ in range(2):
            cluster.start_worker(concurrency=2)

        def progress() -> int:
            return entries_recorded(cluster, record_ids)

        killer = Killer(cluster, random.Random(SEED + 1), kills, total, progress)
        killer.start()
        accepted: list[Event] = []
        for batch in batches(events, rng, 50, 150):
            cluster.wait_for(lambda: progress() >= len(accepted) - LAG,
                             "the workers to catch up with the submitter",
                             timeout=60 * scale.factor, interval=0.1)
            report = cluster.submit(batch)
            assert report.ok and report.accepted == len(batch), report
            accepted.extend(batch)
        submitted = time.monotonic()
        killer.finish(timeout=120 * scale.factor)
        waited = settle(cluster, accepted, timeout=120 * scale.factor)
        settled = time.monotonic()

        result = audit(cluster, accepted)
        crashes = count_crashes(cluster.processes)
        result.fill(figures)
        crashes.fill(figures)
        figures.notes.update({
            "records": len(record_ids), "kills": len(killer.killed),
            "workers_started": len(cluster.processes),
            "submit_s": round(submitted - started, 1), "total_s": round(settled - started, 1),
        })

        assert waited is not None, "not every accepted event was processed:\n" + result.details()
        assert len(killer.killed) == kills, killer.killed
        assert all(members > 2 for _, members, _ in killer.killed), killer.killed
        assert not result.problems(), result.details()
        figures.check()
