"""SIGTERM in the middle of a batch: what a worker has in flight is finished or requeued,
and nothing accepted is lost or applied twice (docs/deploy.md, docs/contract.md).

The worker runs as in the container image: ``REMAP_SIGTERM=SIGQUIT``, so SIGTERM starts
Celery's soft shutdown (PROVISIONING_SOFT_SHUTDOWN_TIMEOUT) and then a cold one that
cancels what is still running and puts unacknowledged messages back on the queue.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from statemachine import Result
from tests.factories import new_id, provision
from tests.integration.workers import applied_versions, running_cluster
from worker.emulators import Emulator

pytestmark = pytest.mark.integration

EVENTS = 300
SHUTDOWN = {
    "REMAP_SIGTERM": "SIGQUIT",  # as the Dockerfile, worker.yaml and the systemd unit set
    "PROVISIONING_SOFT_SHUTDOWN_TIMEOUT": "2",
    "PROVISIONING_METRICS_PORT": "0",
}


def test_sigterm_mid_batch_loses_nothing_and_applies_every_event_once(
    redis_url: str, tmp_path: Path, request: pytest.FixtureRequest,
) -> None:
    emulator = Emulator(latency_ms=15)  # two calls per event: about 30 ms of backend time
    with running_cluster(redis_url, tmp_path, request, emulator=emulator,
                         settings=SHUTDOWN) as cluster:
        first = cluster.start_worker(concurrency=4, name="first")
        records = {new_id(): new_id() for _ in range(EVENTS)}
        sent = [provision(record_id, channel_id, event_id=f"evt-{record_id}")
                for record_id, channel_id in records.items()]
        for body in sent:  # raw Celery messages: accepted only when a worker records them
            cluster.send(body)

        def running() -> int:
            return sum(1 for record_id in records
                       if (r := cluster.record(record_id)) is not None
                       and r.status.label == "Running")

        cluster.wait_for(lambda: running() >= EVENTS // 5, "a fifth of the batch applied")
        first.expected_alive = False
        first.process.send_signal(15)  # SIGTERM, as docker stop and Kubernetes send it
        started = time.monotonic()
        first.process.wait(timeout=30)
        shutdown_seconds = time.monotonic() - started
        done_at_shutdown = running()
        assert done_at_shutdown < EVENTS, "the batch ended before SIGTERM: nothing in flight"
        assert not first.group_members(), "pool children outlived the main process"

        second = cluster.start_worker(concurrency=4, name="second")
        cluster.wait_for(lambda: running() == EVENTS, f"all {EVENTS} records Running",
                         timeout=45)
        cluster.wait_for(cluster.settled, "no queued work left")

        # Every event applied exactly once: one create and one provision per record, and
        # the step's result once; redeliveries may add `duplicate` entries, never a change.
        applied: Counter[tuple[str, str]] = Counter()
        duplicates = 0
        for record_id in records:
            entries = cluster.history(record_id)
            assert applied_versions(entries) == [1, 2, 3], (record_id, entries)
            for entry in entries:
                assert entry.outcome in (Result.APPLIED, Result.DUPLICATE), entry
                if entry.outcome is Result.APPLIED:
                    applied[(entry.event_id, entry.trigger)] += 1
                else:
                    duplicates += 1
        assert set(applied.values()) == {1}
        assert {event_id for event_id, _ in applied} == {body["id"] for body in sent}
        assert cluster.failed() == []

        # A step retried after the shutdown carries the same Idempotency-Key (SPEC §4).
        keys: defaultdict[str, set[str]] = defaultdict(set)
        calls = cluster.requests()
        for call in calls:
            if call["method"] == "PUT" and call["path"].startswith("/v1/channels/"):
                keys[call["target"]].add(call["idempotency_key"])
        assert len(keys) == EVENTS
        assert all(len(distinct) == 1 for distinct in keys.values())
        assert second.alive()
        print(f"\nSIGTERM with {done_at_shutdown}/{EVENTS} records done; the worker exited "
              f"in {shutdown_seconds:.1f} s with {first.process.returncode}; "
              f"{duplicates} duplicate deliveries recorded, "
              f"{sum(1 for c in calls if c.get('replayed'))} backend calls replayed")


def test_steps_longer_than_the_soft_shutdown_are_cancelled_requeued_and_finished_once(
    redis_url: str, tmp_path: Path, request: pytest.FixtureRequest,
) -> None:
    emulator = Emulator(latency_ms=1200)  # a step (two calls) outlives the 1 s soft shutdown
    settings = {**SHUTDOWN, "PROVISIONING_SOFT_SHUTDOWN_TIMEOUT": "1"}
    with running_cluster(redis_url, tmp_path, request, emulator=emulator,
                         settings=settings) as cluster:
        first = cluster.start_worker(concurrency=4, name="first")
        records = {new_id(): new_id() for _ in range(8)}
        for record_id, channel_id in records.items():
            cluster.send(provision(record_id, channel_id, event_id=f"evt-{record_id}"))

        def in_step() -> list[str]:
            return [record_id for record_id in records
                    if (r := cluster.record(record_id)) is not None
                    and r.status.label == "Processing"]

        cluster.wait_for(lambda: len(in_step()) >= 4, "four steps in flight")
        interrupted = in_step()
        first.expected_alive = False
        first.process.send_signal(15)
        first.process.wait(timeout=30)
        assert all(cluster.describe(r).startswith("Processing") for r in interrupted)

        cluster.start_worker(concurrency=4, name="second")
        for record_id in records:
            cluster.wait_status(record_id, "Running", timeout=40)
        for record_id in records:
            assert applied_versions(cluster.history(record_id)) == [1, 2, 3]
        assert cluster.failed() == []
        # The interrupted steps ran again with the same Idempotency-Key, so the emulator
        # answered from its idempotency store instead of provisioning twice.
        calls = [c for c in cluster.requests()
                 if c["method"] == "PUT" and c["path"].startswith("/v1/channels/")]
        by_channel: defaultdict[str, set[str]] = defaultdict(set)
        for call in calls:
            by_channel[call["target"]].add(call["idempotency_key"])
        assert all(len(keys) == 1 for keys in by_channel.values())
        assert len(by_channel) == len(records)
