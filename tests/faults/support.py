"""What the fault scenarios share: event streams, the audit that turns a store's history
into figures (applied, lost, doubled), the crash count read from the workers' logs and
process states, a killer thread, and a redis-server of a scenario's own.

The audit reads only what any client can read (each record's history, the record, the
failed-task store); it never trusts the worker's own counters.
"""

from __future__ import annotations

import random
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from statemachine import HistoryEntry, Result, pending_step, violations
from tests.factories import event, gatekeeper, new_id, provision
from tests.faults.conftest import Figures
from tests.integration.workers import CeleryProcess, Cluster, own_entries
from worker.emulators import free_port

PHONE = "msdyn_phonenumberid"
Event = dict[str, Any]

# -- streams of events -----------------------------------------------------------------


def record_stream(rng: random.Random, length: int) -> list[Event]:
    """One record's events, in the order a client sends them: a provision first, then a
    mix that only makes sense in order (GateKeeper errors and recoveries, re-provisions,
    calling tests on voice channels), ending now and then with a deprovision."""
    record_id, channel_id = new_id(), new_id()
    voice = rng.random() < 0.3
    kind = "voice" if voice else "whatsapp"
    links = {PHONE: new_id()} if voice else None
    events = [provision(record_id, channel_id, kind=kind, links=links)]
    choices: list[tuple[int, Callable[[], Event]]] = [
        (6, lambda: gatekeeper(record_id, "Inactive", "Error", "probe failed")),
        (6, lambda: gatekeeper(record_id, "Active", "Running")),
        (3, lambda: provision(record_id, channel_id, kind=kind, links=links)),
        (2, lambda: event("calling_test.requested", record_id)),
        (1, lambda: event("calling_test.completed", record_id,
                          {"result": rng.choice(["Success", "Failure"])})),
    ]
    weights = [weight for weight, _ in choices]
    for _ in range(length - 1):
        _, make = rng.choices(choices, weights=weights)[0]
        events.append(make())
    if rng.random() < 0.2:
        events.append(event("deprovision.requested", record_id))
    return events


def interleave(rng: random.Random, streams: Sequence[Sequence[Event]]) -> list[Event]:
    """Merge the streams at random, keeping each stream's own order."""
    cursors = [0] * len(streams)
    merged: list[Event] = []
    live = [i for i, stream in enumerate(streams) if stream]
    while live:
        slot = rng.randrange(len(live))
        pick = live[slot]
        merged.append(streams[pick][cursors[pick]])
        cursors[pick] += 1
        if cursors[pick] == len(streams[pick]):
            live[slot] = live[-1]
            live.pop()
    return merged


def mixed_events(rng: random.Random, total: int, per_record: int = 10) -> list[Event]:
    """About ``total`` events over ``total / per_record`` records, interleaved."""
    streams: list[list[Event]] = []
    count = 0
    while count < total:
        stream = record_stream(rng, min(rng.randint(per_record // 2, per_record * 3 // 2),
                                        max(1, total - count)))
        stream = stream[:total - count]
        streams.append(stream)
        count += len(stream)
    return interleave(rng, streams)


def batches(events: Sequence[Event], rng: random.Random, low: int, high: int,
            ) -> list[list[Event]]:
    """Consecutive slices of random sizes between ``low`` and ``high``."""
    out: list[list[Event]] = []
    start = 0
    while start < len(events):
        size = rng.randint(low, high)
        out.append(list(events[start:start + size]))
        start += size
    return out


# -- reading the store -----------------------------------------------------------------


def entries_recorded(cluster: Cluster, record_ids: Iterable[str]) -> int:
    """The number of history entries of these records (one pipelined round trip)."""
    store = cluster.service.store
    pipe = store.client.pipeline(transaction=False)  # type: ignore[attr-defined]
    for record_id in record_ids:
        pipe.llen(store.keys.history(record_id))  # type: ignore[attr-defined]
    # Store v2: element 0 of the history list is the record itself.
    return sum(max(0, size - 1) for size in pipe.execute())


def histories(cluster: Cluster, record_ids: Iterable[str]) -> dict[str, list[HistoryEntry]]:
    return {record_id: cluster.history(record_id) for record_id in record_ids}


def all_processed(cluster: Cluster, accepted: Sequence[Event]) -> bool:
    """No record has queued work or a step in flight, and every accepted event has an entry
    of its own (or is kept in the failed-task store)."""
    if not cluster.settled():
        return False
    seen: set[str] = {e.event_id for e in cluster.failed() if e.event_id}
    for entries in histories(cluster, {e["subject"] for e in accepted}).values():
        seen.update(entry.event_id for entry in own_entries(entries))
    return all(e["id"] in seen for e in accepted)


def settle(cluster: Cluster, accepted: Sequence[Event], timeout: float) -> float | None:
    """Wait until ``all_processed``; the seconds it took, or None past ``timeout``. Unlike
    ``Cluster.wait_for`` it goes on when a worker dies: the figures count that crash, and
    the workers left must still process every accepted event."""
    started = time.monotonic()
    while not all_processed(cluster, accepted):
        if time.monotonic() - started > timeout:
            return None
        time.sleep(0.5)
    return time.monotonic() - started


@dataclass
class Audit:
    """Every accepted event checked against its record's history.

    ``applied``: accepted events with an entry of their own (any outcome: a rejection is
    the event processed). ``lost``: accepted events with no entry and no failed-task entry.
    ``doubled``: (event id, trigger) pairs applied more than once, and events with more than
    one entry of their own besides ``create`` and ``duplicate`` entries (invariant 8).
    ``version_breaks``: records whose applied versions are not exactly 1..versionnumber
    (invariant 7). ``out_of_order``: records whose events were processed in another order
    than accepted. ``invariants``: records breaking an invariant of SPEC §2.4.
    ``unfinished``: records still holding a step whose result was never applied.
    """

    accepted: int = 0
    applied: int = 0
    kept_as_failed: int = 0
    lost: list[str] = field(default_factory=list)
    doubled: list[str] = field(default_factory=list)
    duplicate_entries: int = 0
    version_breaks: list[str] = field(default_factory=list)
    out_of_order: list[str] = field(default_factory=list)
    invariants: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)

    def fill(self, figures: Figures) -> None:
        figures.accepted = self.accepted
        figures.applied = self.applied
        figures.lost = len(self.lost)
        figures.doubled = len(self.doubled)
        if self.kept_as_failed:
            figures.notes["kept_as_failed"] = self.kept_as_failed
        if self.duplicate_entries:
            figures.notes["duplicate_entries"] = self.duplicate_entries
        for name in ("version_breaks", "out_of_order", "invariants", "unfinished"):
            if getattr(self, name):
                figures.notes[name] = len(getattr(self, name))

    def problems(self) -> list[str]:
        """Everything wrong besides the three figures (they have ``Figures.check``)."""
        return [*(f"version break: {p}" for p in self.version_breaks),
                *(f"out of order: {p}" for p in self.out_of_order),
                *(f"invariant: {p}" for p in self.invariants),
                *(f"unfinished step: {p}" for p in self.unfinished)]

    def details(self, limit: int = 10) -> str:
        lines = [*(f"lost: {p}" for p in self.lost[:limit]),
                 *(f"doubled: {p}" for p in self.doubled[:limit]), *self.problems()[:limit]]
        return "\n".join(lines)


def audit(cluster: Cluster, accepted: Sequence[Event], *, check_order: bool = True) -> Audit:
    """Check every accepted event (in acceptance order) against the store."""
    result = Audit(accepted=len(accepted))
    failed_ids = {e.event_id for e in cluster.failed() if e.event_id}
    by_record: dict[str, list[str]] = defaultdict(list)
    for e in accepted:
        by_record[e["subject"]].append(e["id"])
    for record_id, event_ids in by_record.items():
        history = cluster.history(record_id)
        mine = own_entries(history)
        seen = {entry.event_id for entry in mine}
        for event_id in event_ids:
            if event_id in seen:
                result.applied += 1
            elif event_id in failed_ids:
                result.kept_as_failed += 1
            else:
                result.lost.append(f"{record_id}: {event_id}")
        result.duplicate_entries += sum(e.outcome is Result.DUPLICATE for e in history)
        applied = Counter((e.event_id, e.trigger) for e in history
                          if e.outcome is Result.APPLIED)
        doubled = {f"{record_id}: {event_id} {trigger} applied {n} times"
                   for (event_id, trigger), n in applied.items() if n > 1}
        entries = Counter(e.event_id for e in mine
                          if e.trigger != "create" and e.outcome is not Result.DUPLICATE)
        doubled |= {f"{record_id}: {event_id} has {n} entries of its own"
                    for event_id, n in entries.items() if n > 1}
        result.doubled.extend(sorted(doubled))
        versions = [e.version for e in history if e.outcome is Result.APPLIED]
        record = cluster.record(record_id)
        last = record.version if record is not None else len(versions)
        if versions != list(range(1, last + 1)):
            result.version_breaks.append(f"{record_id}: versions {versions} for {last}")
        if record is not None:
            broken = violations(record)
            if broken:
                result.invariants.append(f"{record_id}: {broken}")
            if pending_step(record) is not None:
                result.unfinished.append(f"{record_id}: {record.tracking.step} "
                                         f"started at v{record.tracking.step_version}")
        if check_order:
            ours = set(event_ids)  # an audit may cover only part of a record's events
            order: list[str] = []
            for entry in mine:
                if entry.event_id in ours and (not order or order[-1] != entry.event_id):
                    order.append(entry.event_id)
            expected = [event_id for event_id in event_ids if event_id in seen]
            if order != expected:
                result.out_of_order.append(record_id)
    return result


# -- crashes ---------------------------------------------------------------------------

# billiard's supervisor: "Process 'ForkPoolWorker-2' pid:123 exited with 'signal 9 (SIGKILL)'"
CHILD_EXIT = re.compile(r"Process '[^']+' pid:\d+ exited with '([^']+)'")
# Celery with worker_cancel_long_running_tasks_on_connection_loss: a task it cannot
# acknowledge after a broker connection loss is terminated (SIGTERM) on purpose.
CANCELLED = "cannot be acknowledged after a connection loss"


@dataclass
class Crashes:
    """Worker processes and pool children that died without the scenario killing them."""

    exits: list[str] = field(default_factory=list)  # main processes gone unexpectedly
    children: list[str] = field(default_factory=list)  # pool children gone unexpectedly
    cancelled: int = 0  # children Celery itself terminated after a connection loss
    worker_lost: int = 0  # WorkerLostError lines (a job whose child died)
    task_errors: int = 0  # "raised unexpected": a task failed with an exception
    unrecoverable: int = 0  # "Unrecoverable error": Celery gave up and the worker exits
    unready_killed: int = 0  # new pool children billiard killed for not reporting UP in time
    tracebacks: int = 0

    @property
    def count(self) -> int:
        return len(self.exits) + len(self.children)

    def fill(self, figures: Figures) -> None:
        figures.crashes = self.count
        for name in ("cancelled", "worker_lost", "task_errors", "unrecoverable",
                     "unready_killed", "tracebacks"):
            if getattr(self, name):
                figures.notes[name] = getattr(self, name)


def count_crashes(processes: Iterable[CeleryProcess]) -> Crashes:
    """Read each process's state and log. A process we killed (``expected_alive`` False)
    ends its log abruptly and is not counted; anything else that died is a crash, except
    pool children Celery terminated itself after a broker connection loss (counted in
    ``cancelled``, since the project's configuration asks for exactly that)."""
    crashes = Crashes()
    for process in processes:
        if process.expected_alive and not process.alive():
            crashes.exits.append(f"{process.name} exited with {process.process.returncode}")
        text = process.log.read_text(encoding="utf-8", errors="replace")
        cancels = text.count(CANCELLED)
        for match in CHILD_EXIT.finditer(text):
            if cancels and "SIGTERM" in match.group(1):
                cancels -= 1
                crashes.cancelled += 1
                continue
            crashes.children.append(f"{process.name}: {match.group(0)}")
        crashes.worker_lost += text.count("WorkerLostError")
        crashes.task_errors += text.count("raised unexpected")
        crashes.unrecoverable += text.count("Unrecoverable error")
        # Counted in ``children`` too (it exits with SIGKILL): these say why.
        crashes.unready_killed += text.count("Timed out waiting for UP message")
        crashes.tracebacks += text.count("Traceback (most recent call last)")
    return crashes


# -- killing ---------------------------------------------------------------------------


class Background(threading.Thread):
    """A scenario's helper thread: whatever it raises is raised again in the test's thread
    by ``finish``; ``stopping`` asks it to stop early."""

    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.error: BaseException | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        try:
            self.work()
        except BaseException as exc:  # noqa: BLE001 - raised in the test's thread by finish()
            self.error = exc

    def work(self) -> None:
        raise NotImplementedError

    def finish(self, timeout: float, *, must_end: bool = False) -> None:
        """Wait up to ``timeout``; then stop it (an AssertionError with ``must_end``)."""
        self.join(timeout)
        if self.is_alive():
            self.stopping.set()
            self.join(10)
            if must_end:
                raise AssertionError(f"{self.name} did not finish within {timeout:.0f} s")
        if self.error is not None:
            raise self.error


class Killer(Background):
    """SIGKILLs a worker's whole process group at random moments and starts a new one.

    The moments are drawn by progress (history entries written, read from Redis), one in
    each of ``kills`` equal slices of [5 %, 90 %] of ``total``, then a random delay of up to
    ``jitter`` seconds, so they land anywhere in the run whatever the machine's speed.
    """

    def __init__(self, cluster: Cluster, rng: random.Random, kills: int, total: int,
                 progress: Callable[[], int], *, concurrency: int = 2,
                 jitter: float = 0.4) -> None:
        super().__init__("killer")
        low, high = 0.05, 0.90
        width = (high - low) / kills
        self.thresholds = [int(total * (low + width * (i + rng.random()))) for i in range(kills)]
        self.cluster = cluster
        self.rng = rng
        self.progress = progress
        self.concurrency = concurrency
        self.jitter = jitter
        self.killed: list[tuple[str, int, int]] = []  # (name, pids in the group, progress)

    def work(self) -> None:
        for threshold in self.thresholds:
            while self.progress() < threshold:
                if self.stopping.wait(0.05):
                    return
            if self.stopping.wait(self.rng.random() * self.jitter):
                return
            # A worker whose pool is up (main process and its children).
            live: list[CeleryProcess] = []
            while not live:
                live = [p for p in self.cluster.processes
                        if p.expected_alive and len(p.group_members()) > self.concurrency]
                if not live and self.stopping.wait(0.05):
                    return
            victim = self.rng.choice(live)
            members = len(victim.group_members())
            victim.kill()
            self.killed.append((victim.name, members, self.progress()))
            self.cluster.start_worker(concurrency=self.concurrency)


# -- a redis-server of a scenario's own ------------------------------------------------


class RedisServer:
    """A redis-server this test starts on a free loopback port, append-only, in ``workdir``.

    ``shutdown()`` is the graceful stop (SHUTDOWN: the AOF is flushed and fsynced, clients
    are disconnected); ``start()`` starts it again on the same port and directory, so the
    data comes back from the AOF. ``close()`` stops it, by its pid only.
    """

    def __init__(self, workdir: Path, *, appendfsync: str = "always") -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on the PATH")
        self.binary = binary
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.appendfsync = appendfsync
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float = 20.0) -> None:
        assert self.process is None or self.process.poll() is not None
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.workdir), "--appendonly", "yes",
             "--appendfsync", self.appendfsync, "--save", "",
             "--maxmemory-policy", "noeviction",
             "--logfile", str(self.workdir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        self.starts += 1
        deadline = time.monotonic() + timeout
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        try:
            while True:
                try:
                    # LOADING answers BusyLoadingError until the AOF is read back.
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.BusyLoadingError):
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(
                            f"redis-server did not start: {self.log_tail()}") from None
                    time.sleep(0.05)
        finally:
            client.close()

    def shutdown(self, timeout: float = 30.0) -> None:
        """SHUTDOWN (graceful, the AOF flushed), then wait for the process to end."""
        assert self.process is not None
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        try:
            client.shutdown()
        finally:
            client.close()
        self.process.wait(timeout=timeout)

    def dbsize(self) -> int:
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        try:
            return int(client.dbsize())
        finally:
            client.close()

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = (self.workdir / "redis.log").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
