"""Backend faults (SPEC §4): the emulator answers too late for the worker's read timeout
and in bursts of 503, 500 and 429 (with Retry-After) across many records, while a stream
of provision and deprovision events is applied by real worker processes, with beat.

Every accepted event is applied exactly once; a record in Error always carries its
exception details, and beat's retries take every record to the state its events ask for
once the burst is over; every mutating call carries the Idempotency-Key of the step start
it belongs to, and no effect is applied twice for one step start.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from statemachine import ProvisioningState, Result, check_invariants
from statemachine.effects import BackendStep
from tests.factories import event, new_id, provision
from tests.faults.conftest import Figures, Scale
from tests.integration.workers import Cluster, applied_versions, own_entries, running_cluster
from worker.emulators import ANY_TARGET, Answer, Emulator

pytestmark = pytest.mark.integration

RECORDS = 30  # at ci scale; times scale.factor for long
READ_TIMEOUT = 0.4  # seconds; a delayed answer takes 1 s
SLOW_MS = 1000.0
SETTINGS = {
    "PROVISIONING_READ_TIMEOUT": str(READ_TIMEOUT),
    "PROVISIONING_CONNECT_TIMEOUT": "2",
    "PROVISIONING_RETRY_AFTER_CAP": "2",
    "PROVISIONING_RETRY_BASE_SECONDS": "1",
    "PROVISIONING_RETRY_CAP_SECONDS": "2",
    "PROVISIONING_MAX_RETRIES": "50",  # the burst ends long before; none is exhausted
}
MUTATING = ("PUT", "DELETE", "POST")
KEY = re.compile(r"^(?P<record>[0-9a-f-]{36}):(?P<version>\d+):(?P<step>[a-z_]+)$")
STARTS = ("provision", "deprovision", "retry")  # triggers that start a step


@pytest.fixture
def emulator() -> Emulator:
    return Emulator(seed=11)


@pytest.fixture
def cluster(redis_url: str, tmp_path: Path, request: pytest.FixtureRequest,
            emulator: Emulator) -> Iterator[Cluster]:
    with running_cluster(redis_url, tmp_path, request, emulator=emulator,
                         settings=SETTINGS) as running:
        yield running


def burst(rng: random.Random, size: int) -> list[Answer]:
    """``size`` bad answers: 503, 500, 429 with Retry-After, and late ones (a late 2xx has
    acted before its client gave up: the retry must get it replayed, not act again)."""
    shapes = [Answer(503), Answer(500), Answer(502),
              Answer(429, headers={"Retry-After": "1"}),
              Answer(503, headers={"Retry-After": "1"}),
              Answer(200, delay_ms=SLOW_MS), Answer(503, delay_ms=SLOW_MS)]
    return [rng.choice(shapes) for _ in range(size)]


def start_burst(emulator: Emulator, rng: random.Random, size: int,
                steps: tuple[BackendStep, ...]) -> None:
    for step in steps:
        answers = burst(rng, size)
        if step is BackendStep.DEPROVISION_CHANNEL:  # its successes are 200, 202, 204
            answers = [Answer(204, delay_ms=a.delay_ms) if a.status == 200 else a
                       for a in answers]
        emulator.script(ANY_TARGET, step, answers)


class Watch:
    """Reads every record twice a second while the stream runs: any record in Error must
    carry its exception details (SPEC §2.4 invariant 5, §4), and every invariant holds."""

    def __init__(self, cluster: Cluster, record_ids: list[str]) -> None:
        self.cluster = cluster
        self.record_ids = record_ids
        self.errors_seen: set[str] = set()
        self.problems: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            for record_id in self.record_ids:
                record = self.cluster.record(record_id)
                if record is not None:
                    self.look(record)

    def look(self, record: ProvisioningState) -> None:
        if record.status.label == "Error":
            self.errors_seen.add(record.id)
            if not record.exception_details or not record.error_message:
                self.problems.append(f"{record.id} in Error without details: "
                                     f"{record.exception_details!r} {record.error_message!r}")
        try:
            check_invariants(record)
        except AssertionError as exc:
            self.problems.append(f"{record.id}: {exc}")


def streams(rng: random.Random, count: int) -> list[dict[str, Any]]:
    """One plan per record: provision; maybe provision again; maybe deprovision."""
    plans = []
    for _ in range(count):
        record_id, channel_id = new_id(), new_id()
        kind = rng.choice(["whatsapp", "teams", "line", "facebook"])
        plans.append({
            "record": record_id, "channel": channel_id, "kind": kind,
            "first": provision(record_id, channel_id, kind=kind),
            "again": (provision(record_id, channel_id, kind=kind, name="Contoso again")
                      if rng.random() < 0.3 else None),
            "deprovision": (event("deprovision.requested", record_id)
                            if rng.random() < 0.5 else None),
        })
    return plans


def own_counts(cluster: Cluster, events: list[dict[str, Any]]) -> Counter[str]:
    """Entries of each event's own (``create`` apart), over every record."""
    counts: Counter[str] = Counter()
    for record_id in {e["subject"] for e in events}:
        counts.update(e.event_id for e in own_entries(cluster.history(record_id))
                      if e.trigger != "create")
    return counts


def finished(cluster: Cluster, plans: list[dict[str, Any]], events: list[dict[str, Any]],
             ) -> bool:
    if not cluster.settled():
        return False
    counts = own_counts(cluster, events)
    if any(counts[e["id"]] == 0 for e in events):
        return False
    for plan in plans:
        record = cluster.record(plan["record"])
        want = "Deprovisioned" if plan["deprovision"] else "Running"
        if record is None or record.status.label != want:
            return False
    return True


def step_starts(cluster: Cluster, record_id: str) -> set[int]:
    """The versions at which a step started (the ``<version>`` its keys must carry)."""
    return {e.version for e in cluster.history(record_id)
            if e.outcome is Result.APPLIED and e.trigger in STARTS and e.version is not None}


def audit_requests(cluster: Cluster, plans: list[dict[str, Any]],
                   ) -> tuple[list[str], int, Counter[str]]:
    """(problems, effects applied twice for one step start, answers by kind)."""
    requests = cluster.requests()
    by_channel = {plan["channel"]: plan["record"] for plan in plans}
    starts = {plan["record"]: step_starts(cluster, plan["record"]) for plan in plans}
    problems: list[str] = []
    effects: Counter[str] = Counter()  # non-replayed successes per key
    answers: Counter[str] = Counter()
    for request in requests:
        if request["method"] not in MUTATING or request["step"] is None:
            continue
        status, key = request["status"], request["idempotency_key"]
        answers[str(status)] += 1
        if request["delay_ms"]:
            answers["late"] += 1
        if request["replayed"]:
            answers["replayed"] += 1
        if status == 422:
            problems.append(f"key {key} reused for another request")
        match = KEY.match(key or "")
        if match is None:
            problems.append(f"{request['method']} {request['path']}: key {key!r}")
            continue
        record_id = (by_channel.get(request["target"]) if request["step"].endswith("_channel")
                     else request["target"])
        if match["record"] != record_id or match["step"] != request["step"]:
            problems.append(f"key {key} on {request['step']} of record {record_id}")
        elif int(match["version"]) not in starts.get(record_id, set()):
            problems.append(f"key {key}: no step started at version {match['version']} "
                            f"(starts {sorted(starts.get(record_id, set()))})")
        if 200 <= status < 300 and not request["replayed"]:
            effects[key] += 1
    doubled = sum(count - 1 for count in effects.values() if count > 1)
    return problems, doubled, answers


def check_end_state(cluster: Cluster, emulator: Emulator, plans: list[dict[str, Any]],
                    ) -> list[str]:
    """Records, channels and gates agree with what each record's events asked for."""
    problems = []
    channels = {channel_id for _kind, channel_id in emulator.channels}
    gates = emulator.gates
    for plan in plans:
        record = cluster.record(plan["record"])
        assert record is not None
        check_invariants(record)
        gate = gates.get(plan["record"])
        if plan["deprovision"]:
            ok = (record.status.label == "Deprovisioned" and plan["channel"] not in channels
                  and (gate is None or gate.status == "Inactive"))
        else:
            ok = (record.status.label == "Running" and plan["channel"] in channels
                  and gate is not None and gate.status == "Active"
                  and record.exception_details == "" and record.error_message is None)
        if not ok:
            problems.append(f"{plan['record']}: {record.status.label}, channel "
                            f"{plan['channel'] in channels}, gate {gate}")
        versions = applied_versions(cluster.history(plan["record"]))
        if versions != list(range(1, record.version + 1)):
            problems.append(f"{plan['record']}: versions {versions}")
    return problems


def log_counts(cluster: Cluster) -> Counter[str]:
    counts: Counter[str] = Counter()
    for process in cluster.processes:
        for line in process.log.read_text(encoding="utf-8", errors="replace").splitlines():
            if '"event": "backend.try"' not in line:
                continue
            if "ReadTimeout" in line:
                counts["read_timeouts"] += 1
            if '"attempt": 1,' not in line:
                counts["in_task_retries"] += 1
    return counts


def test_timeouts_and_5xx_bursts_apply_every_event_once_and_no_effect_twice(
    cluster: Cluster, emulator: Emulator, figures: Figures, scale: Scale,
) -> None:
    figures.scenario = "backend timeouts and 5xx bursts"
    started = time.monotonic()
    rng = random.Random(4)
    count = RECORDS * scale.factor
    plans = streams(rng, count)
    record_ids = [plan["record"] for plan in plans]
    workers = [cluster.start_worker(concurrency=2), cluster.start_worker(concurrency=2)]
    cluster.start_beat()
    for process in workers:
        cluster.wait_for(lambda p=process: len(p.pool_children()) == 2, "the worker's pool")
    children = {p.pid: p.pool_children() for p in workers}
    accepted: list[dict[str, Any]] = []

    def submit(events: list[dict[str, Any]]) -> None:
        report = cluster.submit(events)
        assert report.ok and report.accepted == len(events)
        accepted.extend(events)

    with Watch(cluster, record_ids) as watch:
        # Burst 1: the provisioning steps, as the first wave arrives.
        start_burst(emulator, rng, 2 * count,
                    (BackendStep.PROVISION_CHANNEL, BackendStep.ACTIVATE_GATE))
        first = [plan["first"] for plan in plans]
        for start in range(0, len(first), 10):
            submit(first[start:start + 10])
        cluster.wait_for(lambda: len(watch.errors_seen) >= min(5, count),
                         "records in Error during the first burst", timeout=60)
        # Burst 2: every step, while re-provisions and deprovisions arrive.
        start_burst(emulator, rng, count, tuple(BackendStep)[:4])
        second = [plan["again"] for plan in plans if plan["again"]]
        second += [plan["deprovision"] for plan in plans if plan["deprovision"]]
        rng.shuffle(second)
        for start in range(0, len(second), 10):
            submit(second[start:start + 10])
        cluster.wait_for(lambda: finished(cluster, plans, accepted),
                         "every record in the state its events ask for",
                         timeout=90.0 * scale.factor)

    counts = own_counts(cluster, accepted)
    figures.accepted = len(accepted)
    figures.applied = sum(1 for e in accepted if counts[e["id"]] == 1)
    figures.lost = sum(1 for e in accepted if counts[e["id"]] == 0)
    problems, doubled_effects, answers = audit_requests(cluster, plans)
    figures.doubled = sum(1 for e in accepted if counts[e["id"]] > 1) + doubled_effects
    crash_lines: list[str] = []
    for process in workers:
        crash_lines += process.error_lines()
        gone = children[process.pid] - process.pool_children()
        crash_lines += [f"{process.name}: pool child {pid} gone" for pid in gone]
        if not process.alive():
            crash_lines.append(f"{process.name} died")
    figures.crashes = len(crash_lines)
    from_logs = log_counts(cluster)
    retries = sum(1 for record_id in record_ids for e in cluster.history(record_id)
                  if e.trigger == "retry" and e.outcome is Result.APPLIED)
    figures.notes.update({
        "records": count, "late_answers": answers["late"],
        "read_timeouts": from_logs["read_timeouts"],
        "5xx": sum(n for k, n in answers.items() if k[:1] == "5"),
        "429": answers["429"], "in_task_retries": from_logs["in_task_retries"],
        "beat_retries": retries, "replayed": answers["replayed"],
        "records_in_error": len(watch.errors_seen),
        "seconds": round(time.monotonic() - started, 1),
    })

    summary = "\n".join([figures.line(), *problems[:10], *watch.problems[:10],
                         *crash_lines[:10]])
    assert not problems, summary
    assert not watch.problems, summary
    assert not check_end_state(cluster, emulator, plans), summary
    assert from_logs["read_timeouts"] > 0 and answers["429"] > 0 and retries > 0, summary
    figures.check()
