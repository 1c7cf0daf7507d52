"""A graceful Redis restart in the middle of a run, append-only on (SPEC §7: at-least-once
delivery; docker-compose runs Redis append-only).

The scenario starts a redis-server of its own (not the session's shared one) on a free
loopback port, in its own directory, with ``--appendonly yes --appendfsync always`` (every
write fsynced before it is answered, so an accepted event is on disk). Two ``celery
worker`` processes (prefork, concurrency 2) use it as their broker and record store.

A submitter thread sends a stream of 2,000 events (times the scale factor; the mix of
test_kills) in batches of 20 to 60, as a client would: a call that fails while Redis is
down is retried until it succeeds (the events' ids make the retry safe: what an
interrupted call accepted is a ``duplicate`` on the retry, counted once). When 40 % of
the stream is in, the test sends SHUTDOWN (Redis flushes and fsyncs the AOF and exits),
waits ``DOWNTIME`` seconds and starts redis-server again on the same port and directory.

The workers are never restarted: the test checks that the same worker processes are alive
at the end and that each applied events after the restart (they reconnected by themselves),
then audits every accepted event as test_kills does. Notes: the downtime, the submitter's
failed calls, and the time to drain everything after Redis came back.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
import redis
from kombu.exceptions import OperationalError

from tests.conftest import IN_CI
from tests.faults.conftest import Figures, Scale
from tests.faults.support import (
    Background,
    Event,
    RedisServer,
    audit,
    batches,
    count_crashes,
    entries_recorded,
    mixed_events,
    settle,
)
from tests.integration.workers import CeleryProcess, Cluster, running_cluster
from worker.emulators import Emulator
from worker.errors import StoreError

pytestmark = pytest.mark.integration

EVENTS = 2000
DOWNTIME = 2.0  # seconds between the SHUTDOWN and the new redis-server
SEED = 7001

# What a client sees while Redis is down: the store's error, the broker's, redis-py's.
DOWN = (StoreError, OperationalError, redis.RedisError, OSError)


class Submitter(Background):
    """Sends the batches in order; retries a failed call until it succeeds."""

    def __init__(self, cluster: Cluster, batches: list[list[Event]]) -> None:
        super().__init__("submitter")
        self.cluster = cluster
        self.batches = batches
        self.accepted: list[Event] = []
        self.failed_calls: dict[str, int] = {}
        self.retried_duplicates = 0

    def work(self) -> None:
        for batch in self.batches:
            while not self.stopping.is_set():
                try:
                    report = self.cluster.submit(batch)
                except DOWN as exc:
                    name = type(exc).__name__
                    self.failed_calls[name] = self.failed_calls.get(name, 0) + 1
                    time.sleep(0.2)
                    continue
                # Every id is new, so a duplicate is an event that an interrupted
                # call of ours accepted before it failed: accepted once, all the same.
                if not report.ok or report.accepted + report.duplicates != len(batch):
                    raise AssertionError(f"batch not accepted whole: {report}")
                self.retried_duplicates += report.duplicates
                self.accepted.extend(batch)
                break
            time.sleep(0.05)



@pytest.fixture
def own_redis(tmp_path: Path) -> RedisServer:
    try:
        server = RedisServer(tmp_path / "redis", appendfsync="always")
    except RuntimeError as exc:
        if IN_CI:
            pytest.fail(f"the Redis restart scenario needs redis-server under CI=true: {exc}")
        pytest.skip(str(exc))
    return server


def history_lines(log: Path, offset: int = 0) -> int:
    with open(log, "rb") as stream:
        stream.seek(offset)
        return stream.read().count(b'"event": "history"')


def probe_until_both_work(cluster: Cluster, workers: list[CeleryProcess],
                          offsets: list[int], rng: random.Random, accepted: list[Event],
                          timeout: float = 60.0) -> list[int]:
    """Submit one new record at a time until every worker has written history since
    ``offsets``; returns the entries each wrote. Probes are added to ``accepted``."""
    deadline = time.monotonic() + timeout
    while True:
        after = [history_lines(w.log, offset) for w, offset in zip(workers, offsets,
                                                                    strict=True)]
        if all(after) or time.monotonic() > deadline:
            return after
        probe = mixed_events(rng, 1)[:1]
        if cluster.submit(probe).accepted:
            accepted.extend(probe)
        time.sleep(0.05)


def test_redis_restart_loses_and_doubles_nothing(
    own_redis: RedisServer, tmp_path: Path, request: pytest.FixtureRequest,
    figures: Figures, scale: Scale,
) -> None:
    rng = random.Random(SEED)
    events = mixed_events(rng, EVENTS * scale.factor)
    record_ids = list(dict.fromkeys(e["subject"] for e in events))
    (tmp_path / "cluster").mkdir()
    own_redis.start()
    try:
        with running_cluster(own_redis.url, tmp_path / "cluster", request,
                             emulator=Emulator(latency_ms=2)) as cluster:
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
            own_redis.shutdown()
            time.sleep(DOWNTIME)
            own_redis.start()
            up_at = time.monotonic()

            submitter.finish(timeout=120 * scale.factor, must_end=True)
            waited = settle(cluster, submitter.accepted, timeout=120 * scale.factor)
            settled = time.monotonic()
            # One worker may have drained everything while the other was still in its
            # reconnect back-off: probe with one-record tasks until both have applied
            # events since the restart (a worker that never reconnects fails here).
            accepted = list(submitter.accepted)
            after = probe_until_both_work(cluster, workers, offsets, rng, accepted)
            waited = waited and settle(cluster, accepted, timeout=60)

            result = audit(cluster, accepted)
            crashes = count_crashes(cluster.processes)
            result.fill(figures)
            crashes.fill(figures)
            figures.notes.update({
                "appendfsync": own_redis.appendfsync,
                "downtime_s": round(up_at - down_at, 1),
                "drain_after_restart_s": round(settled - up_at, 1),
                "failed_submit_calls": sum(submitter.failed_calls.values()),
                "accepted_by_failed_calls": submitter.retried_duplicates,
                "entries_after_restart": "/".join(map(str, after)),
                "probe_events": len(accepted) - len(submitter.accepted),
                "total_s": round(settled - started, 1),
            })

            assert waited is not None, "not every accepted event was processed"
            assert len(submitter.accepted) == len(events)
            assert own_redis.starts == 2
            assert not result.problems(), result.details()
            # The same two worker processes, never restarted, both applied events after
            # Redis came back: each reconnected by itself (a crash fails the next line).
            assert len(cluster.processes) == 2
            assert all(count > 0 for count in after) or crashes.exits, after
            figures.check()
    finally:
        own_redis.close()
