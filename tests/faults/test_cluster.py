"""The fault suite on a Redis Cluster of 3 masters (tests/cluster.py): the store at
``redis+cluster://``, Celery's broker on the session's plain redis-server (kombu has no
cluster transport; docs/store.md).

* kills: test_kills' scenario, 2,000 events (times the scale factor) and 3 SIGKILLs;
* conflicts: test_conflicts' scenario on 30 records with 40 events each;
* a master restart: like test_redis_restart, but only one of the three masters (append-only,
  ``appendfsync always``) stops gracefully (SIGTERM) 40 % into 2,000 events and starts
  again 2 s later on its port with its data; the broker and the workers stay up, and the
  worker processes are never restarted.

Each: 0 lost, 0 doubled, 0 crashes, every history in acceptance order.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest

from tests.faults.conftest import Figures, Scale
from tests.faults.support import (
    audit,
    batches,
    count_crashes,
    entries_recorded,
    mixed_events,
    settle,
)
from tests.faults.test_conflicts import run_conflicts
from tests.faults.test_kills import run_kills
from tests.faults.test_redis_restart import Submitter, probe_until_both_work
from tests.integration.workers import running_cluster
from worker.emulators import Emulator

EVENTS = 2000
KILLS = 3
RESTART_EVENTS = 2000
DOWNTIME = 2.0
SEED = 1313


def test_kills_on_a_redis_cluster(
    redis_cluster: Any, redis_url: str, tmp_path: Path, request: pytest.FixtureRequest,
    figures: Figures, scale: Scale,
) -> None:
    redis_cluster.flush()
    run_kills(redis_cluster.url, tmp_path, request, figures, scale, EVENTS * scale.factor,
              KILLS * scale.factor, broker_url=redis_url)


def test_conflicts_on_a_redis_cluster(
    redis_cluster: Any, redis_url: str, tmp_path: Path, request: pytest.FixtureRequest,
    figures: Figures, scale: Scale,
) -> None:
    redis_cluster.flush()
    run_conflicts(redis_cluster.url, tmp_path, request, figures, scale, 30,
                  40 * scale.factor, broker_url=redis_url)


def test_a_cluster_master_restart_loses_and_doubles_nothing(
    redis_cluster: Any, redis_url: str, tmp_path: Path, request: pytest.FixtureRequest,
    figures: Figures, scale: Scale,
) -> None:
    redis_cluster.flush()
    rng = random.Random(SEED)
    events = mixed_events(rng, RESTART_EVENTS * scale.factor)
    record_ids = list(dict.fromkeys(e["subject"] for e in events))
    with running_cluster(redis_cluster.url, tmp_path, request, emulator=Emulator(latency_ms=2),
                         broker_url=redis_url) as cluster:
        workers = [cluster.start_worker(concurrency=2) for _ in range(2)]
        started = time.monotonic()
        submitter = Submitter(cluster, batches(events, rng, 20, 60))
        submitter.start()
        cluster.wait_for(lambda: len(submitter.accepted) >= 0.4 * len(events)
                         and entries_recorded(cluster, record_ids) >= 0.2 * len(events),
                         "40 % of the stream to be in and under way",
                         timeout=60 * scale.factor)
        offsets = [worker.log.stat().st_size for worker in workers]
        down_at = time.monotonic()
        redis_cluster.restart(1, down_seconds=DOWNTIME)
        up_at = time.monotonic()

        submitter.finish(timeout=120 * scale.factor, must_end=True)
        waited = settle(cluster, submitter.accepted, timeout=120 * scale.factor)
        settled = time.monotonic()
        accepted = list(submitter.accepted)
        after = probe_until_both_work(cluster, workers, offsets, rng, accepted)
        waited = waited and settle(cluster, accepted, timeout=60)

        result = audit(cluster, accepted)
        crashes = count_crashes(cluster.processes)
        result.fill(figures)
        crashes.fill(figures)
        figures.notes.update({
            "masters": len(redis_cluster.nodes), "restarted": "master 2 of 3 (SIGTERM)",
            "downtime_s": round(up_at - down_at, 1),
            "drain_after_restart_s": round(settled - up_at, 1),
            "failed_submit_calls": sum(submitter.failed_calls.values()),
            "accepted_by_failed_calls": submitter.retried_duplicates,
            "entries_after_restart": "/".join(map(str, after)),
            "total_s": round(settled - started, 1),
        })
        assert waited is not None, "not every accepted event was processed"
        assert len(submitter.accepted) == len(events)
        assert not result.problems(), result.details()
        assert len(cluster.processes) == 2
        assert all(count > 0 for count in after) or crashes.exits, after
        figures.check()
