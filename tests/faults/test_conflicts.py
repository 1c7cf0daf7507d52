"""Four processes applying conflicting events to the same 50 records (SPEC §3: per record,
events are applied in the order they were accepted, even with many worker processes).

"4 processes": two ``celery worker`` processes with two prefork children each, so four
processes take drain tasks at once (two machines' worth of workers, each with a pool).

The 50 records are provisioned first and waited for until Running. Then each gets 60
events (times the scale factor) chosen so that their outcome depends on their order but
never on timing: GateKeeper reports (Inactive, Error) and (Active, Running), which flip a
Running record to Error and back (SPEC §2.2) or are ignored/rejected depending on the
state, a (Inactive, Deprovisioned) report (rejected: not Deprovisioning), and calling-test
events on records with no phone number and no test in progress (rejected, with a reason
that depends on whether the record is Running). None of them starts a backend step, so no
step result (whose place in the history depends on backend timing, and which can make an
event ``stale``) comes between them: the whole sequence is fixed by the order alone.

Four submitting threads race: each owns a quarter of the records and submits their
events interleaved, in small batches (2 to 6 events), as fast as it can; every batch kicks
a drain of each record in it, so the same record is kicked to several processes at once,
and one record's events arrive while a drain of it is under way elsewhere. The acceptance
order of a record is known without reading the store: only its owning thread submits its
events, one call after the other, in the stream's order.

The expectation is computed with the pure core: ``statemachine.apply`` folded over each
record's events in acceptance order, from the record as it was after the setup. The check
compares every history entry after the setup (event, trigger, outcome, reason, version,
from and to) and the final record (all columns and the worker's tracking, except the
modifiedon timestamp and the span ids of the step's trace: only whether it keeps one) with
that expectation.
"""

from __future__ import annotations

import random
import re
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from statemachine import HistoryEntry, ProvisioningState, apply, parse_event
from tests.factories import event, gatekeeper, new_id, provision
from tests.faults.conftest import Figures, Scale
from tests.faults.support import (
    Event,
    audit,
    batches,
    count_crashes,
    interleave,
    settle,
)
from tests.integration.workers import Cluster, running_cluster
from worker.emulators import Emulator

pytestmark = pytest.mark.integration

RECORDS = 50
EVENTS_PER_RECORD = 60
THREADS = 4
SEED = 4242
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
TRACED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"  # any traceparent
HISTORY_LINE = re.compile(r'\{[^{}]*"event": "history"[^{}]*\}')
RECORD_ID = re.compile(r'"record_id": "([0-9a-f-]{36})"')


def conflicting_stream(rng: random.Random, record_id: str, length: int) -> list[Event]:
    """Events whose outcome depends only on the order (none starts a backend step)."""
    choices: list[tuple[int, Any]] = [
        (8, lambda n: gatekeeper(record_id, "Inactive", "Error", f"probe {n} failed")),
        (8, lambda n: gatekeeper(record_id, "Active", "Running")),
        (1, lambda n: gatekeeper(record_id, "Inactive", "Deprovisioned")),
        (2, lambda n: event("calling_test.requested", record_id)),
        (1, lambda n: event("calling_test.completed", record_id, {"result": "Success"})),
    ]
    weights = [weight for weight, _ in choices]
    return [rng.choices(choices, weights=weights)[0][1](n) for n in range(length)]


def expected_history(start: ProvisioningState, events: list[Event],
                     ) -> tuple[ProvisioningState, list[HistoryEntry]]:
    """``apply`` folded over the events in order, from ``start``."""
    record, entries = start, []
    for raw in events:
        outcome = apply(record, parse_event(raw), now=EPOCH, trace=TRACED)
        entries.extend(outcome.entries)
        assert outcome.record is not None
        record = outcome.record
    return record, entries


def comparable_record(record: ProvisioningState) -> ProvisioningState:
    """``record`` without what the expectation cannot know: its modifiedon time and the
    span ids of its step's trace (only whether it keeps one)."""
    kept = TRACED if record.tracking.step_trace is not None else None
    return replace(record, modified_on=EPOCH,
                   tracking=replace(record.tracking, step_trace=kept))


def comparable(entry: HistoryEntry) -> tuple[Any, ...]:
    return (entry.event_id, entry.trigger, entry.outcome, entry.reason, entry.version,
            entry.before, entry.after)


def records_per_worker(cluster: Cluster) -> list[set[str]]:
    """The records each worker process wrote history for (from its log lines)."""
    found = []
    for process in cluster.processes:
        # Two pool children share a log file, so lines may be cut into each other: find
        # the JSON objects, not the lines.
        text = process.log.read_text(encoding="utf-8", errors="replace")
        found.append({match.group(1) for line in HISTORY_LINE.findall(text)
                      if (match := RECORD_ID.search(line))})
    return found


class Submitter(threading.Thread):
    def __init__(self, cluster: Cluster, batches: list[list[Event]]) -> None:
        super().__init__(name="submitter", daemon=True)
        self.cluster = cluster
        self.batches = batches
        self.accepted: list[Event] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for batch in self.batches:
                report = self.cluster.submit(batch)
                if not report.ok or report.accepted != len(batch):
                    raise AssertionError(f"batch not accepted whole: {report}")
                self.accepted.extend(batch)
        except BaseException as exc:  # noqa: BLE001 - raised in the test's thread
            self.error = exc


def test_conflicting_events_apply_in_acceptance_order(
    redis_url: str, tmp_path: Path, request: pytest.FixtureRequest, figures: Figures,
    scale: Scale,
) -> None:
    run_conflicts(redis_url, tmp_path, request, figures, scale, RECORDS,
                  EVENTS_PER_RECORD * scale.factor)


def run_conflicts(store_url: str, tmp_path: Path, request: pytest.FixtureRequest,
                  figures: Figures, scale: Scale, records: int, per_record: int,
                  broker_url: str | None = None) -> None:
    """The scenario, with the store at ``store_url`` (tests/faults/test_cluster.py runs it
    on a Redis Cluster, its broker a plain Redis)."""
    rng = random.Random(SEED)
    record_ids = [new_id() for _ in range(records)]
    streams = {record_id: conflicting_stream(rng, record_id, per_record)
               for record_id in record_ids}
    with running_cluster(store_url, tmp_path, request, emulator=Emulator(),
                         broker_url=broker_url) as cluster:
        for _ in range(2):
            cluster.start_worker(concurrency=2)
        setup = [provision(record_id, new_id()) for record_id in record_ids]
        assert cluster.submit(setup).accepted == records
        starts = {record_id: cluster.wait_status(record_id, "Running", timeout=60)
                  for record_id in record_ids}
        cluster.wait_for(cluster.settled, "the setup to settle", timeout=30)
        prefix = {record_id: len(cluster.history(record_id)) for record_id in record_ids}

        started = time.monotonic()
        submitters = []
        for number in range(THREADS):
            mine = [streams[record_id] for record_id in record_ids[number::THREADS]]
            merged = interleave(rng, mine)
            submitters.append(Submitter(cluster, batches(merged, rng, 2, 6)))
        for submitter in submitters:
            submitter.start()
        for submitter in submitters:
            submitter.join(120 * scale.factor)
            assert not submitter.is_alive(), "a submitter did not finish"
            if submitter.error is not None:
                raise submitter.error
        submitted = time.monotonic()
        accepted = [e for submitter in submitters for e in submitter.accepted]
        waited = settle(cluster, accepted, timeout=120 * scale.factor)
        settled = time.monotonic()

        result = audit(cluster, accepted)
        crashes = count_crashes(cluster.processes)
        result.fill(figures)
        crashes.fill(figures)
        mismatched = []
        for record_id in record_ids:
            want_record, want_entries = expected_history(starts[record_id], streams[record_id])
            got_entries = cluster.history(record_id)[prefix[record_id]:]
            got_record = cluster.record(record_id)
            if ([comparable(e) for e in got_entries] != [comparable(e) for e in want_entries]
                    or got_record is None
                    or comparable_record(got_record) != comparable_record(want_record)):
                mismatched.append(record_id)
        on_each = records_per_worker(cluster)
        figures.notes.update({
            "processes": "2 workers x 2", "records": records,
            "submit_calls": sum(len(s.batches) for s in submitters),
            "records_on_both_workers": len(set.intersection(*on_each)),
            "mismatched_records": len(mismatched),
            "submit_s": round(submitted - started, 1), "total_s": round(settled - started, 1),
        })

        assert waited is not None, "not every accepted event was processed:\n" + result.details()
        assert len(accepted) == records * per_record
        assert not mismatched, f"{len(mismatched)} records differ from the expectation, " \
                               f"e.g. {mismatched[:3]}"
        assert not result.problems(), result.details()
        figures.check()
