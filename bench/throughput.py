"""Throughput benchmark: the provisioning worker against a bare Celery no-op task.

Run it from the project root::

    .venv/bin/python bench/throughput.py -n 2000 --concurrency 1,2,4

What it does, for each concurrency C:

1. starts a real ``celery -A worker.app worker --pool prefork --concurrency C`` on a Redis
   server of its own (``worker.emulators.embedded``, a free loopback port) or on an empty
   database of ``--redis-url`` (``--db``), with the backend emulator served from this process (zero
   latency, no failures);
2. submits N events of a realistic mix through the normal path (``worker.api.submit_events``
   on a Service from ``worker.bootstrap.build_service``, the kick sending
   ``provisioning.drain_record``) and, on a fresh worker, through the raw Celery path
   (``app.send_task("provisioning.handle_event", args=[event])``);
3. measures events/s (events ÷ (last commit - first submit)) and the latency of each event
   from its submit time to the ``at`` of its last history entry (the commit of the change it
   caused), all on ``time.time()``;
4. starts ``celery -A bench.throughput:noop_app worker`` with the same Celery settings
   (``worker.app.celery_config``: acks_late, prefetch 1, JSON only, task events), pool and
   concurrency, sends N no-op tasks the same way and measures tasks/s (each task pushes its
   completion time to a Redis list);
5. prints a table (and the CPU time per event of the worker, Redis and this process) and
   writes it as JSON to bench/results/throughput-<date>.json.

The target (the issue): the worker sustains at least 0.8x the bare no-op task rate.

``--profile-dir DIR`` also records the worker processes with py-spy during the measured
phases at ``--profile-concurrency`` and prints where the time goes (a profiled run is slower;
compare its rates with nothing). Every process this script starts is stopped by its pid
(SIGTERM, then SIGKILL) before it returns, on Ctrl-C and SIGTERM too, and every phase has a
deadline.

Importing this module runs nothing: it only defines ``noop_app`` and its task, for the
no-op worker (``celery -A bench.throughput:noop_app worker``, run from the project root).
"""

from __future__ import annotations

# isort: split
import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from celery import Celery

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
TARGET_RATIO = 0.8  # issue 3: a per-event path against the bare no-op task
BATCH_TARGET_RATIO = 5.0  # issue 6: the batch path against the bare no-op task
TARGET_P99_MS = 25.0  # issue 6: p99 of the batch path at half its sustained rate
# issue 12: events/s with backends answering in this many ms, against instant ones
LATENCY_TARGETS = {100.0: 0.8, 1000.0: 0.5}

# -- the bare no-op app (what ``celery -A bench.throughput:noop_app worker`` runs) ----------

NOOP_TASK = "bench.noop"
NOOP_CONFIG_ENV = "BENCH_NOOP_CELERY_CONFIG"  # JSON: worker.app.celery_config, no beat
NOOP_REDIS_ENV = "BENCH_NOOP_REDIS_URL"

noop_app = Celery("bench-noop", set_as_current=False)
# The same settings as the provisioning app, computed by the benchmark and passed as JSON
# so that the no-op worker never imports the worker package.
noop_app.add_defaults(lambda: json.loads(os.environ.get(NOOP_CONFIG_ENV) or "{}"))
_noop_clients: dict[int, redis.Redis] = {}


@noop_app.task(name=NOOP_TASK)
def noop(key: str, submitted_at: float) -> None:
    """Do nothing but say when: push "<submitted_at> <done_at>" to ``key``."""
    client = _noop_clients.get(os.getpid())
    if client is None:
        client = redis.Redis.from_url(os.environ[NOOP_REDIS_ENV])
        _noop_clients[os.getpid()] = client
    client.rpush(key, f"{submitted_at!r} {time.time()!r}")


# -- helpers ------------------------------------------------------------------------------


class BenchError(Exception):
    """The benchmark could not go on (a worker died, a deadline passed, bad input)."""


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def percentile(values: Sequence[float], share: float) -> float | None:
    """The ``share`` quantile (0-1) by linear interpolation; None when there is no value."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = share * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def epoch(text: str) -> float:
    """An ISO 8601 time (``Z`` or offset) as epoch seconds, the clock of ``time.time()``."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def with_db(url: str, db: int) -> str:
    """``url`` pointing at database ``db``."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        query = [(k, v) for k, v in parse_qsl(parts.query) if k != "db"] + [("db", str(db))]
        return urlunsplit(parts._replace(query=urlencode(query)))
    return urlunsplit(parts._replace(path=f"/{db}"))


def free_port() -> int:
    from worker.emulators import free_port as pick

    return pick()


def source_state() -> dict[str, Any]:
    """The commit the code ran from, and the files changed since (uncommitted)."""
    def git(*argv: str) -> str:
        try:
            return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True,
                                  timeout=10, check=False).stdout.rstrip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "HEAD"),
            "uncommitted": git("status", "--porcelain", "--untracked-files=no").splitlines()}


def redact(url: str) -> str:
    from worker.settings import redact_url

    return redact_url(url) or url


# -- processes ----------------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def _pids() -> Iterator[int]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            yield int(entry.name)


def children(pid: int) -> list[int]:
    found = []
    for other in _pids():
        fields = _stat(other)
        if fields is not None and int(fields[1]) == pid:
            found.append(other)
    return found


def machine_busy() -> float:
    """CPU seconds every CPU of the machine has spent busy since boot."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its live children (prefork pool processes)."""
    total = 0.0
    for each in (pid, *children(pid)):
        fields = _stat(each)
        if fields is not None:
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


@dataclass
class Started:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    output: Path | None = None  # what it writes (py-spy's profile)

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass
class Processes:
    """Every process this run started; each is stopped by its pid."""

    running: list[Started] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> Started:
        with open(log, "wb") as stream:
            process = subprocess.Popen(
                argv, env=env, cwd=ROOT, stdout=stream, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Its own process group: a Ctrl-C here does not reach it half-way, and a
                # pool child orphaned by a SIGKILL can still be found by its group.
                start_new_session=True,
            )
        started = Started(name, process, log)
        self.running.append(started)
        return started

    def stop(self, started: Started, *, first: int = signal.SIGTERM,
             grace: float = 20.0) -> None:
        process = started.process
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(first)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                process.wait(timeout=10)
        # Pool children left in its group (their parent was killed): SIGKILL each by pid.
        for pid in _pids():
            fields = _stat(pid)
            if fields is not None and int(fields[2]) == started.pid and pid != os.getpid():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        if started in self.running:
            self.running.remove(started)

    def check(self, started: Started) -> None:
        if started.process.poll() is not None:
            raise BenchError(f"{started.name} exited with {started.process.returncode}; "
                             f"see {started.log}")

    def stop_all(self) -> None:
        for started in reversed(list(self.running)):
            try:
                self.stop(started)
            except (OSError, subprocess.SubprocessError) as exc:
                print(f"warning: could not stop {started.name} (pid {started.pid}): {exc}",
                      file=sys.stderr)


# -- the workload -------------------------------------------------------------------------

KINDS = ("whatsapp", "facebook", "teams", "line", "voice")
TERMINAL = {"provision.requested": "provisioned", "deprovision.requested": "deprovisioned",
            "gatekeeper.reported": "report_error"}
PROVISIONING, REPORTS = "provisioning", "reports"  # the two mixes (--mix)


def terminal(event: dict[str, Any]) -> str:
    """The trigger of the last history entry an event leads to (the change it caused)."""
    if event["type"] == "gatekeeper.reported" and event["data"]["reason"] == "Running":
        return "recover"
    return TERMINAL[event["type"]]


@dataclass
class Workload:
    seed: list[dict[str, Any]]  # provision.requested for the records the mix acts on
    events: list[dict[str, Any]]  # the measured events, in submit order
    seeded: int
    provisions: int
    deprovisions: int
    reports: int
    final: tuple[int, int, int] | None = None  # Running, Deprovisioned, Error at the end

    def expect(self) -> tuple[int, int, int]:
        if self.final is not None:
            return self.final
        return (self.seeded - self.deprovisions - self.reports + self.provisions,
                self.deprovisions, self.reports)

    @property
    def mix(self) -> dict[str, int]:
        return {"provision.requested": self.provisions,
                "deprovision.requested": self.deprovisions,
                "gatekeeper.reported": self.reports}


def _event(tag: str, number: int, kind: str, subject: str,
           data: dict[str, Any] | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {
        "specversion": "1.0", "id": f"bench-{tag}-{number:06d}", "source": "bench-throughput",
        "type": kind, "subject": subject,
        "time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
    }
    if data is not None:
        event["data"] = data
    return event


def _provision(tag: str, number: int, rng: random.Random,
               providers: Sequence[str]) -> dict[str, Any]:
    kind = KINDS[number % len(KINDS)]
    return _event(tag, number, "provision.requested", _uuid(rng), {
        "name": f"Bench {kind} channel {number}",
        "channel": {"kind": kind, "id": _uuid(rng)},
        "links": {"msdyn_communicationprovidersettingid": rng.choice(providers)},
    })


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def make_workload(tag: str, n: int, *, deprovision_share: float, report_share: float,
                  warmup: int, seed: int) -> Workload:
    """N measured events: mostly provision.requested for new records, some
    deprovision.requested and gatekeeper.reported (Inactive/Error) for records provisioned
    beforehand (each such record gets one of them, so their order cannot matter)."""
    rng = random.Random(f"{seed}:{tag}")
    providers = [_uuid(rng) for _ in range(5)]
    deprovisions = round(n * deprovision_share)
    reports = round(n * report_share)
    provisions = n - deprovisions - reports
    if provisions < 0:
        raise BenchError("the deprovision and gatekeeper shares add up to more than 1")
    seeded = deprovisions + reports + warmup
    seed_events = [_provision(f"{tag}-seed", i, rng, providers) for i in range(seeded)]
    targets = [event["subject"] for event in seed_events[:deprovisions + reports]]
    events = [_provision(tag, i, rng, providers) for i in range(provisions)]
    number = provisions
    for subject in targets[:deprovisions]:
        events.append(_event(tag, number, "deprovision.requested", subject))
        number += 1
    for subject in targets[deprovisions:]:
        events.append(_event(tag, number, "gatekeeper.reported", subject, {
            "status": "Inactive", "reason": "Error",
            "details": "bench: the gate's health check failed"}))
        number += 1
    rng.shuffle(events)
    return Workload(seed_events, events, seeded, provisions, deprovisions, reports)


def make_reports_workload(tag: str, n: int, *, records: int, seed: int) -> Workload:
    """N gatekeeper.reported events on ``records`` records provisioned beforehand: each
    record gets its share as Inactive/Error, Active/Running, ... flips (Running -> Error ->
    Running: every event changes the record, none calls a backend), in order per record,
    records interleaved at random. An even share per record leaves every record Running."""
    rng = random.Random(f"{seed}:{tag}")
    providers = [_uuid(rng) for _ in range(5)]
    seed_events = [_provision(f"{tag}-seed", i, rng, providers) for i in range(records)]
    subjects = [event["subject"] for event in seed_events]
    queues = {subject: [] for subject in subjects}  # type: dict[str, list[dict[str, Any]]]
    for number in range(n):
        subject = subjects[number % records]
        error = len(queues[subject]) % 2 == 0
        queues[subject].append(_event(tag, number, "gatekeeper.reported", subject, {
            "status": "Inactive" if error else "Active", "reason": "Error" if error
            else "Running", "details": "bench: gate health flapping"}))
    order = [subject for subject in subjects for _ in queues[subject]]
    rng.shuffle(order)
    cursor = dict.fromkeys(subjects, 0)
    events = []
    for subject in order:
        events.append(queues[subject][cursor[subject]])
        cursor[subject] += 1
    errors = sum(len(queue) % 2 for queue in queues.values())
    return Workload(seed_events, events, records, 0, 0, n, (records - errors, 0, errors))


# -- the run ------------------------------------------------------------------------------

NORMAL = "submit_events"  # worker.api.submit_events + provisioning.drain_records kicks (batch)
PER_RECORD = "per_record"  # worker.api.submit_events + one drain_record kick per record
RAW = "send_task"  # app.send_task("provisioning.handle_event", args=[event])
NOOP = "noop"


@dataclass
class Context:
    args: argparse.Namespace
    url: str
    client: redis.Redis
    emulator: Any
    emulator_url: str
    procs: Processes
    logdir: Path
    prefix: str
    run_deadline: float
    created_db: bool  # the database was empty when we started (--redis-url)
    store_url: str = ""  # the record store when it is not ``url`` (--cluster)
    store_client: Any = None

    @property
    def store(self) -> Any:
        """A client of the record store (``client`` unless the store is a cluster)."""
        return self.store_client if self.store_client is not None else self.client

    def deadline(self, seconds: float) -> float:
        return min(time.monotonic() + seconds, self.run_deadline)

    def env(self, key_prefix: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONING_")}
        env.update({
            "PROVISIONING_REDIS_URL": self.store_url or self.url,
            "PROVISIONING_BROKER_URL": self.url,
            "PROVISIONING_PROVISIONER_URL": self.emulator_url,
            "PROVISIONING_GATEKEEPER_URL": self.emulator_url,
            "PROVISIONING_CALLING_TEST_URL": self.emulator_url,
            "PROVISIONING_LOG_LEVEL": "WARNING",
            "PROVISIONING_LOG_FORMAT": "json",
            "PROVISIONING_KEY_PREFIX": key_prefix,
            # The worker's /metrics endpoint stays on, as by default, but on a free port:
            # the default one may be held by another worker on this machine.
            "PROVISIONING_METRICS_PORT": str(free_port()),
            NOOP_REDIS_ENV: self.url,
            NOOP_CONFIG_ENV: os.environ[NOOP_CONFIG_ENV],
        })
        env.update(self.args.worker_settings)
        return env

    def start_worker(self, app: str, concurrency: int, tag: str,
                     env: dict[str, str]) -> Started:
        argv = [sys.executable, "-m", "celery", "-A", app, "worker", "--pool", "prefork",
                "--concurrency", str(concurrency), "--loglevel", "WARNING",
                "--without-gossip", "--without-mingle", "-n", f"bench-{tag}-{os.getpid()}@%h"]
        return self.procs.start(tag, argv, env, self.logdir / f"{tag}.log")

    def queue_idle(self, started: Started, seconds: float) -> bool:
        """Wait until the Celery queue and the unacknowledged set are empty."""
        deadline = self.deadline(seconds)
        while time.monotonic() < deadline:
            self.procs.check(started)
            pipe = self.client.pipeline(transaction=False)
            pipe.llen("celery")
            pipe.hlen("unacked")
            if not any(pipe.execute()):
                return True
            time.sleep(0.05)
        return False


@dataclass
class Resources:
    """CPU seconds used so far by the worker processes, Redis and this process."""

    worker: float
    redis: float
    bench: float
    wall: float
    commands: dict[str, int]  # Redis commands served so far, by name
    machine: float  # CPU seconds the whole machine spent busy (/proc/stat)

    @classmethod
    def now(cls, ctx: Context, started: Started) -> Resources:
        info = ctx.client.info("cpu")
        stats = ctx.client.info("commandstats")
        return cls(cpu_seconds(started.pid),
                   float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
                   time.process_time(), time.monotonic(),
                   {name.removeprefix("cmdstat_"): int(value["calls"])
                    for name, value in stats.items()}, machine_busy())

    def per_item(self, later: Resources, items: int) -> dict[str, Any]:
        def ms(before: float, after: float) -> float:
            return round((after - before) * 1000 / max(items, 1), 3)

        calls = {name: round((count - self.commands.get(name, 0)) / max(items, 1), 2)
                 for name, count in later.commands.items()}
        calls = {name: value for name, value in sorted(calls.items(), key=lambda kv: -kv[1])
                 if value >= 0.01 and name not in ("info", "scard", "zcard", "llen", "hlen")}
        ours = sum(b - a for a, b in ((self.worker, later.worker), (self.redis, later.redis),
                                       (self.bench, later.bench)))
        capacity = (later.wall - self.wall) * len(os.sched_getaffinity(0))
        others = max(0.0, later.machine - self.machine - ours) / capacity if capacity else 0.0
        return {"worker_cpu_ms": ms(self.worker, later.worker),
                "redis_cpu_ms": ms(self.redis, later.redis),
                "bench_cpu_ms": ms(self.bench, later.bench),
                "wall_s": round(later.wall - self.wall, 3),
                # Share of the machine's CPUs busy with processes this run did not start
                # (another workload skews every number; compare runs with low values).
                "others_cpu_pct": round(100 * others, 1),
                # Commands per event/task, the benchmark's own polling left out.
                "redis_commands": round(sum(calls.values()), 2),
                "redis_commands_by_name": calls}


def summarize(submitted: Sequence[float], done: Sequence[float | None]) -> dict[str, Any]:
    latencies = [(d - s) * 1000 for s, d in zip(submitted, done, strict=True) if d is not None]
    finished = [d for d in done if d is not None]
    first = min(submitted)
    elapsed = (max(finished) - first) if finished else None
    rate = len(finished) / elapsed if elapsed else None

    def r(value: float | None) -> float | None:
        return None if value is None else round(value, 2)

    timeline: Counter[int] = Counter(int(d - first) for d in finished)
    return {
        "submitted": len(submitted), "completed": len(finished),
        # completions in each second after the first submit
        "per_second": [timeline.get(i, 0) for i in range(max(timeline, default=-1) + 1)],
        "submit_s": r(max(submitted) - first), "elapsed_s": r(elapsed), "per_s": r(rate),
        "p50_ms": r(percentile(latencies, 0.50)), "p95_ms": r(percentile(latencies, 0.95)),
        "p99_ms": r(percentile(latencies, 0.99)), "max_ms": r(max(latencies, default=None)),
    }


class Submitter:
    """Sends events through one of the two paths; returns each event's submit time."""

    def __init__(self, path: str, settings: Any, batch: int) -> None:
        from worker.app import app
        from worker.bootstrap.services import build_service

        self.path = path
        self.batch = batch
        self.app = app
        self.service = build_service(settings, app=app)
        self.kick_many: Callable[[Sequence[str]], None] = (
            self.service.kick_many if path == NORMAL else self.service._kick_each)

    def close(self) -> None:
        self.service.store.client.close()

    def __call__(self, events: Sequence[dict[str, Any]]) -> list[float]:
        from worker.service import submit_events
        from worker.task_names import HANDLE_EVENT

        times: list[float] = []
        if self.path == RAW:
            for event in events:
                times.append(time.time())
                self.app.send_task(HANDLE_EVENT, args=[event])
            return times
        for start in range(0, len(events), self.batch):
            chunk = events[start:start + self.batch]
            at = time.time()
            report = submit_events(self.service, list(enumerate(chunk, start + 1)),
                                   kick=self.kick_many)
            if report.refused or report.accepted != len(chunk):
                problems = [line for refusal in report.refused for line in refusal.lines()]
                raise BenchError(f"submit refused events: {problems[:3]} "
                                 f"(accepted {report.accepted} of {len(chunk)})")
            times.extend([at] * len(chunk))
        return times

    def paced(self, events: Sequence[dict[str, Any]], rate: float,
              tick: float) -> list[float]:
        """Submit at ``rate`` events/s: every ``tick`` seconds, the events due by then in
        one call (one submit_events call, or one send_task each); returns each event's
        submit time (latency counts from the call, not from when the event fell due)."""
        times: list[float] = []
        began = time.monotonic()
        sent = 0
        while sent < len(events):
            called = time.monotonic()
            due = min(len(events), int((called - began) * rate) + 1)
            if due > sent:
                times.extend(self(events[sent:due]))
                sent = due
            wake = max(called + tick, began + sent / rate)
            time.sleep(max(0.0, wake - time.monotonic()))
        return times


def wait_settled(ctx: Context, started: Started, keys: Any, *, running: int,
                 deprovisioned: int, errors: int, deadline: float) -> bool:
    """Wait until the records are in the states the workload leads to."""
    from statemachine import StatusReason

    want = [running, deprovisioned, errors, 0]
    # Store v2: each status is one set per shard and channel kind (288 sets). They are read
    # only once nothing is pending; until then a poll costs 32 ZCARDs and an LLEN, close to
    # what it cost before (the poll runs inside the measured phase).
    groups = [keys.index_sets(status=s) for s in (
        StatusReason.RUNNING, StatusReason.DEPROVISIONED, StatusReason.ERROR)]
    while True:
        ctx.procs.check(started)
        pipe = ctx.store.pipeline(transaction=False)
        for shard in range(keys.shards):
            pipe.zcard(keys.pending(shard))
            pipe.zcard(keys.failed(shard))
        answers = pipe.execute()
        pending, failed = sum(answers[::2]), sum(answers[1::2])
        queued = ctx.client.llen("celery")
        counts = [-1, -1, -1, pending]
        if not pending and not queued:
            pipe = ctx.store.pipeline(transaction=False)
            for group in groups:
                for key in group:
                    pipe.scard(key)
            sizes, at, counts = pipe.execute(), 0, []
            for group in groups:
                counts.append(sum(sizes[at:at + len(group)]))
                at += len(group)
            counts.append(pending)
        if counts == want:
            return True
        if failed and not counts[3] and not queued:
            print(f"  warning: {failed} failed-task entries; see `provisioning failed list` "
                  f"with PROVISIONING_KEY_PREFIX={keys.prefix}", file=sys.stderr)
            return False
        if time.monotonic() > deadline:
            print(f"  warning: deadline passed at running/deprovisioned/error/pending "
                  f"{counts}, wanted {want}", file=sys.stderr)
            return False
        time.sleep(0.05)


def commit_times(ctx: Context, keys: Any, events: Sequence[dict[str, Any]],
                 ) -> tuple[list[float | None], Counter[str]]:
    """Each event's commit time: the ``at`` of the last history entry carrying its id."""
    record_ids = sorted({event["subject"] for event in events})
    rows: dict[str, list[str]] = {}
    for start in range(0, len(record_ids), 500):
        chunk = record_ids[start:start + 500]
        pipe = ctx.store.pipeline(transaction=False)
        for record_id in chunk:
            pipe.lrange(keys.history(record_id), 2, -1)  # store v2: after record and marks
        rows.update(zip(chunk, pipe.execute(), strict=True))
    from worker.store import codec

    last: dict[str, dict[str, Any]] = {}
    for record_id, history in rows.items():
        for row in history:
            entry = codec.unpack_entry(record_id, row).to_json()
            last[entry["event_id"]] = entry
    done: list[float | None] = []
    outcomes: Counter[str] = Counter()
    for event in events:
        entry = last.get(event["id"])
        if entry is None:
            done.append(None)
            outcomes[f"{event['type']}: not applied"] += 1
            continue
        ok = entry["trigger"] == terminal(event) and entry["outcome"] == "applied"
        done.append(epoch(entry["at"]) if ok else None)
        outcomes[f"{event['type']}: {entry['trigger']} {entry['outcome']}"] += 1
    return done, outcomes


def run_worker_phase(ctx: Context, concurrency: int, path: str, *,
                     rate: float | None = None, latency_ms: float = 0.0) -> dict[str, Any]:
    """One measured phase of the provisioning worker, on a fresh worker and key prefix: a
    burst of N events, or (``rate``) events paced at that rate for --paced-seconds."""
    from worker.keys import Keys
    from worker.settings import Settings

    args = ctx.args
    n = args.n if rate is None else max(2, round(rate * args.paced_seconds))
    tag = (f"c{concurrency}-{path}" + ("" if rate is None else "-paced")
           + (f"-{latency_ms:g}ms" if latency_ms else ""))
    env = ctx.env(f"{ctx.prefix}:{tag}")
    keys = Keys(env["PROVISIONING_KEY_PREFIX"])
    if args.mix == REPORTS:
        workload = make_reports_workload(tag, n, records=args.records, seed=args.seed)
    else:
        workload = make_workload(tag, n, deprovision_share=args.deprovision_share,
                                 report_share=args.report_share, warmup=2 * concurrency,
                                 seed=args.seed)
    ctx.emulator.reset()
    ctx.emulator.latency_ms = latency_ms
    submit = Submitter(path, Settings.from_env(env), args.batch)
    started = ctx.start_worker("worker.app", concurrency, tag, env)
    profiler: Started | None = None
    try:
        # Warm-up, not measured: the worker starts and provisions the records the mix
        # deprovisions or reports on (and 2 per pool process).
        submit(workload.seed)
        if not wait_settled(ctx, started, keys, running=workload.seeded, deprovisioned=0,
                            errors=0, deadline=ctx.deadline(args.start_timeout)):
            raise BenchError(f"{tag}: the warm-up did not settle; see {started.log}")
        if not ctx.queue_idle(started, args.drain_timeout):
            raise BenchError(f"{tag}: the queue did not empty after the warm-up")
        if args.profile_dir and concurrency == args.profile_concurrency:
            profiler = start_profiler(ctx, started, tag)
        measured_from = measure_emulator(ctx)
        before = Resources.now(ctx, started)
        outage = start_outage(ctx, args.outage_s) if args.outage_s else None
        submitted = (submit(workload.events) if rate is None
                     else submit.paced(workload.events, rate, args.tick))
        running, deprovisioned, errors = workload.expect()
        settled = wait_settled(ctx, started, keys, running=running,
                               deprovisioned=deprovisioned, errors=errors,
                               deadline=ctx.deadline(args.phase_timeout))
        after = Resources.now(ctx, started)
        profile = stop_profiler(ctx, profiler) if profiler is not None else None
        profiler = None
        done, outcomes = commit_times(ctx, keys, workload.events)
        ctx.queue_idle(started, args.drain_timeout)
        calls = backend_calls(ctx, measured_from, outage, started)
    finally:
        if args.outage_s:
            ctx.emulator.clear_scripts()
        if profiler is not None:
            ctx.procs.stop(profiler, first=signal.SIGINT)
        ctx.procs.stop(started)
        submit.close()
        ctx.emulator.latency_ms = 0.0
    result = {"concurrency": concurrency, "path": path, "settled": settled,
              "backend_latency_ms": latency_ms,
              "emulator_max_concurrency": ctx.emulator.max_concurrency,
              "emulator_max_concurrency_by_backend": dict(ctx.emulator.max_concurrency_by),
              "paced_rate": rate, "paced_share": None if rate is None else args.paced_share,
              "mix": workload.mix, **summarize(submitted, done),
              "cpu_per_event": before.per_item(after, len(workload.events)),
              "outcomes": dict(sorted(outcomes.items())), "log": str(started.log),
              "backend_calls": calls}
    if profile is not None:
        result["profile"] = profile
    return result


def measure_emulator(ctx: Context) -> int:
    """Start the emulator's peak counts over (the measured part's, not the warm-up's);
    returns how many requests it answered so far."""
    ctx.emulator.max_concurrency = 0
    ctx.emulator.max_concurrency_by = {}
    return len(ctx.emulator.requests)


def start_outage(ctx: Context, seconds: float) -> float:
    """The provisioner answers 503 to every call (PUT and DELETE) for ``seconds`` from now
    (a backend that is down); returns when the outage began."""
    import threading

    from statemachine import BackendStep

    for step in (BackendStep.PROVISION_CHANNEL, BackendStep.DEPROVISION_CHANNEL):
        ctx.emulator.script("*", step, [], then=503)
    threading.Timer(seconds, ctx.emulator.clear_scripts).start()
    return time.time()


def backend_calls(ctx: Context, since: int, outage: float | None,
                  started: Started) -> dict[str, Any]:
    """What the emulator saw in the measured part: provisioner calls per second (503s and
    others), Idempotency-Keys answered with a fresh success more than once (a step done
    twice), and the worker's circuit changes (its log)."""
    requests = ctx.emulator.requests[since:]
    provisioner = [r for r in requests if r.step is not None
                   and r.step.value in ("provision_channel", "deprovision_channel")]
    origin = outage if outage is not None else min((r.at for r in requests), default=0.0)
    per_second: Counter[int] = Counter(int(r.at - origin) for r in provisioner)
    failed: Counter[int] = Counter(int(r.at - origin) for r in provisioner if r.status == 503)
    fresh = Counter(r.idempotency_key for r in requests
                    if r.idempotency_key and 200 <= r.status < 300 and not r.replayed)
    changes = [json.loads(line) for line in started.log.read_text(errors="replace").splitlines()
               if '"backend.circuit"' in line and line.startswith("{")]
    return {
        "provisioner_per_second": [per_second.get(i, 0) for i in range(max(per_second,
                                                                         default=-1) + 1)],
        "provisioner_503_per_second": [failed.get(i, 0) for i in range(max(failed,
                                                                         default=-1) + 1)],
        "keys_answered_twice": sum(1 for count in fresh.values() if count > 1),
        "circuit_changes": [{k: c.get(k) for k in ("timestamp", "backend", "state",
                                                   "failures", "reason")} for c in changes],
    }


def run_noop_phase(ctx: Context, concurrency: int) -> dict[str, Any]:
    """The same number of bare no-op tasks on the same Redis, pool and settings."""
    args = ctx.args
    tag = f"c{concurrency}-{NOOP}"
    env = ctx.env(f"{ctx.prefix}:{tag}")
    warm_key, key = f"{ctx.prefix}:{tag}:warmup", f"{ctx.prefix}:{tag}:done"
    started = ctx.start_worker("bench.throughput:noop_app", concurrency, tag, env)
    try:
        for _ in range(2 * concurrency):
            noop_app.send_task(NOOP_TASK, args=[warm_key, time.time()])
        wait_count(ctx, started, warm_key, 2 * concurrency, ctx.deadline(args.start_timeout))
        if not ctx.queue_idle(started, args.drain_timeout):
            raise BenchError(f"{tag}: the queue did not empty after the warm-up")
        before = Resources.now(ctx, started)
        submitted = []
        for _ in range(args.n):
            at = time.time()
            submitted.append(at)
            noop_app.send_task(NOOP_TASK, args=[key, at])
        settled = wait_count(ctx, started, key, args.n, ctx.deadline(args.phase_timeout))
        after = Resources.now(ctx, started)
        rows = [row.split() for row in ctx.client.lrange(key, 0, -1)]
        ctx.queue_idle(started, args.drain_timeout)
    finally:
        ctx.procs.stop(started)
    by_submit = {float(sent): float(done) for sent, done in rows}
    done = [by_submit.get(at) for at in submitted]
    return {"concurrency": concurrency, "path": NOOP, "settled": settled,
            **summarize(submitted, done),
            "cpu_per_event": before.per_item(after, args.n), "log": str(started.log)}


def wait_count(ctx: Context, started: Started, key: str, count: int, deadline: float) -> bool:
    while ctx.client.llen(key) < count:
        ctx.procs.check(started)
        if time.monotonic() > deadline:
            print(f"  warning: {key}: {ctx.client.llen(key)} of {count} by the deadline",
                  file=sys.stderr)
            return False
        time.sleep(0.05)
    return True


# -- profiling (py-spy) -------------------------------------------------------------------


def start_profiler(ctx: Context, started: Started, tag: str) -> Started:
    binary = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(binary).exists():
        raise BenchError("py-spy is not installed (.venv/bin/pip install py-spy)")
    output = Path(ctx.args.profile_dir) / f"{tag}.txt"
    output.parent.mkdir(parents=True, exist_ok=True)
    argv = [binary, "record", "--pid", str(started.pid), "--subprocesses", "--rate", "250",
            "--format", "raw", "--output", str(output)]
    if ctx.args.profile_idle:
        argv.append("--idle")
    profiler = ctx.procs.start(f"py-spy-{tag}", argv, dict(os.environ),
                               ctx.logdir / f"py-spy-{tag}.log")
    profiler.output = output
    time.sleep(1.0)  # py-spy attaches to every process first
    return profiler


def stop_profiler(ctx: Context, profiler: Started) -> dict[str, Any]:
    ctx.procs.stop(profiler, first=signal.SIGINT, grace=60)
    output = profiler.output
    if output is None or not output.exists():
        return {"error": f"py-spy wrote nothing; see {profiler.log}"}
    return summarize_profile(output)


PROJECT = ("worker/", "statemachine/")
LIBRARIES: dict[str, tuple[str, ...]] = {
    "redis-py": ("redis/",), "httpx/httpcore/h11": ("httpx/", "httpcore/", "h11/"),
    "celery/kombu/billiard": ("celery/", "kombu/", "billiard/"),
    "structlog": ("structlog/",), "transitions": ("transitions/",), "json": ("json/",),
    "threading": ("threading.py",), "socket/selectors": ("socket.py", "selectors.py"),
}


def _module_file(frame: str) -> str:
    """The file of a py-spy frame "func (pkg/mod.py:12)", relative to its sys.path entry."""
    if "(" not in frame:
        return ""
    filename = frame[frame.rfind("(") + 1:].rsplit(":", 1)[0]
    for marker in ("site-packages/", f"{ROOT}/", "/lib/python3."):
        if marker in filename:
            filename = filename.split(marker, 1)[1]
            if marker == "/lib/python3.":
                filename = filename.split("/", 1)[-1]
    return filename


def summarize_profile(path: Path, top: int = 25) -> dict[str, Any]:
    """Self and inclusive sample shares from py-spy's raw (collapsed) output: every line is
    "process A;process B;frame;...;frame count", outermost first (B: a pool child of A)."""
    total = 0
    by_process: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    library: Counter[str] = Counter()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        depth = 0
        while depth < len(frames) and frames[depth].startswith("process "):
            depth += 1
        frames = frames[depth:]
        if not frames:
            continue
        total += count
        by_process["pool child" if depth > 1 else "main (consumer)"] += count
        own[_short(frames[-1])] += count
        seen: set[str] = set()
        libs: set[str] = set()
        for frame in frames:
            filename = _module_file(frame)
            if filename.startswith(PROJECT):
                name = _short(frame)
                if name not in seen:
                    seen.add(name)
                    inclusive[name] += count
            for label, marks in LIBRARIES.items():
                if filename.startswith(marks):
                    libs.add(label)
        for label in libs:
            library[label] += count

    def share(counter: Counter[str]) -> list[list[Any]]:
        return [[name, round(100 * value / max(total, 1), 1)]
                for name, value in counter.most_common(top)]

    return {"file": str(path), "samples": total,
            "processes": {k: round(100 * v / max(total, 1), 1) for k, v in by_process.items()},
            "self_pct": share(own), "project_inclusive_pct": share(inclusive),
            "library_inclusive_pct": share(library)}


def _short(frame: str) -> str:
    """"func (/long/path/pkg/mod.py:12)" -> "func (pkg/mod.py)"."""
    name = frame.partition(" (")[0]
    filename = _module_file(frame)
    return f"{name} ({filename})" if filename else name


def print_profile(tag: str, profile: dict[str, Any]) -> None:
    if "error" in profile:
        print(f"\nprofile {tag}: {profile['error']}")
        return
    print(f"\nprofile {tag}: {profile['samples']} samples, {profile['file']}")
    print(f"  by process: {profile['processes']}")
    for title, rows in (("self (leaf) time", profile["self_pct"][:15]),
                        ("inclusive, project functions", profile["project_inclusive_pct"][:20]),
                        ("inclusive, by library", profile["library_inclusive_pct"])):
        print(f"  {title}:")
        for name, pct in rows:
            print(f"    {pct:5.1f}%  {name}")


# -- machine, table, JSON -----------------------------------------------------------------


def machine(ctx: Context) -> dict[str, Any]:
    import celery
    import kombu

    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    binary = shutil.which("redis-server")
    server_binary = ""
    if binary:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            server_binary = subprocess.run([binary, "--version"], capture_output=True,
                                           text=True, timeout=10, check=False).stdout.strip()
    return {
        "nproc": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
        "cpu_model": model, "platform": platform.platform(),
        "python": platform.python_version(), "celery": celery.__version__,
        "kombu": kombu.__version__, "redis_py": redis.__version__,
        "redis_server": str(ctx.client.info("server").get("redis_version")),
        "redis_server_binary": server_binary,
    }


def _fmt(value: Any, width: int, digits: int = 1) -> str:
    if value is None:
        return "-".rjust(width)
    return f"{value:{width}.{digits}f}"


def label(row: dict[str, Any]) -> str:
    rate = row.get("paced_rate")
    text = row["path"] if rate is None else f"{row['path']} @{rate:.0f}/s"
    latency = row.get("backend_latency_ms") or 0
    return f"{text} {latency:g}ms" if latency else text


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'C':>2}  {'path':<24}{'events/s':>10}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
          f"{'no-op tasks/s':>15}{'ratio':>8}{'vs instant':>11}{'max conc':>9}")
    for row in rows:
        print(f"{row['concurrency']:>2}  {label(row):<24}{_fmt(row['per_s'], 10)}"
              f"{_fmt(row['p50_ms'], 9)}{_fmt(row['p95_ms'], 9)}{_fmt(row['p99_ms'], 9)}"
              f"{_fmt(row['noop_per_s'], 15)}{_fmt(row['ratio'], 8, 2)}"
              f"{_fmt(row.get('vs_instant'), 11, 2)}"
              f"{_fmt(row.get('emulator_max_concurrency'), 9, 0)}"
              f"{'' if row['settled'] else '  (incomplete)'}")
    print(f"\n{'C':>2}  {'path':<24}{'completed':>10}{'submit s':>9}{'worker':>9}"
          f"{'redis':>8}{'bench':>8}{'cmds':>7}{'others %':>10}   per event (task): CPU ms "
          f"of the worker, Redis, this process (submitter+emulator); Redis commands; "
          f"machine CPU used by processes not ours")
    for row in rows:
        cpu = row["cpu_per_event"]
        print(f"{row['concurrency']:>2}  {label(row):<24}{row['completed']:>10}"
              f"{_fmt(row['submit_s'], 9, 2)}{_fmt(cpu['worker_cpu_ms'], 9, 2)}"
              f"{_fmt(cpu['redis_cpu_ms'], 8, 2)}{_fmt(cpu['bench_cpu_ms'], 8, 2)}"
              f"{_fmt(cpu['redis_commands'], 7, 1)}{_fmt(cpu['others_cpu_pct'], 10)}")


def table_rows(phases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    noop_rate = {p["concurrency"]: p["per_s"] for p in phases if p["path"] == NOOP}
    rows = []
    for phase in phases:
        base = noop_rate.get(phase["concurrency"])
        ratio = (phase["per_s"] / base) if phase["path"] != NOOP and base and phase["per_s"] \
            and phase.get("paced_rate") is None else None
        rows.append({**{k: v for k, v in phase.items() if k not in ("outcomes", "profile")},
                     "noop_per_s": base, "ratio": None if ratio is None else round(ratio, 3),
                     "vs_instant": _vs_instant(phase, phases)})
    return rows


def _vs_instant(phase: dict[str, Any], phases: list[dict[str, Any]]) -> float | None:
    """events/s with slow backends ÷ events/s of the same path and concurrency with
    instant ones (issue 12's targets)."""
    if not phase.get("backend_latency_ms") or phase.get("paced_rate") or not phase["per_s"]:
        return None
    for other in phases:
        if (other["path"], other["concurrency"]) == (phase["path"], phase["concurrency"]) \
                and not other.get("backend_latency_ms") and not other.get("paced_rate") \
                and other["per_s"]:
            return round(phase["per_s"] / other["per_s"], 3)
    return None


def print_backend_calls(phase: dict[str, Any], outage_s: float) -> None:
    """The provisioner's calls per second and the circuit's changes (an --outage-s run)."""
    calls = phase.get("backend_calls")
    if not calls or not outage_s:
        return
    opened = sum(1 for c in calls["circuit_changes"] if c["state"] == "open")
    probes = sum(1 for c in calls["circuit_changes"] if c["state"] == "half-open")
    closed = sum(1 for c in calls["circuit_changes"] if c["state"] == "closed")
    print(f"\nc{phase['concurrency']} {label(phase)}: provisioner down {outage_s:g} s; "
          f"circuit opened {opened}x, probed {probes}x, closed {closed}x; "
          f"{phase['completed']}/{phase['submitted']} completed, "
          f"lost {phase['submitted'] - phase['completed']}, "
          f"keys answered twice {calls['keys_answered_twice']}")
    print(f"  provisioner calls per second from the outage's start: "
          f"{calls['provisioner_per_second'][:int(outage_s) + 10]}")
    print(f"  of which 503: {calls['provisioner_503_per_second'][:int(outage_s) + 10]}")


def print_verdicts(rows: list[dict[str, Any]]) -> None:
    """Each path against its target: the batch path 5x the no-op rate and p99 <= 25 ms
    at half its rate; a per-event path 0.8x the no-op rate."""
    for path, target in ((NORMAL, BATCH_TARGET_RATIO), (PER_RECORD, TARGET_RATIO),
                         (RAW, TARGET_RATIO)):
        ratios = [r["ratio"] for r in rows if r["path"] == path and r["ratio"] is not None]
        if ratios:
            verdict = "met" if min(ratios) >= target else "NOT met"
            print(f"{path}: target {target}x the no-op rate: {verdict} "
                  f"(ratios {min(ratios):.2f} to {max(ratios):.2f})")
    for latency, target in LATENCY_TARGETS.items():
        shares = [r["vs_instant"] for r in rows
                  if r.get("backend_latency_ms") == latency and r.get("vs_instant")]
        if shares:
            verdict = "met" if min(shares) >= target else "NOT met"
            print(f"{latency:g} ms backends: target {target}x the instant-backend rate: "
                  f"{verdict} ({min(shares):.2f} to {max(shares):.2f})")
    paced = [r for r in rows if r["path"] == NORMAL and r.get("paced_rate")
             and r["p99_ms"] is not None and r.get("paced_share", 0.5) == 0.5]
    if paced:
        worst = max(r["p99_ms"] for r in paced)
        verdict = "met" if worst <= TARGET_P99_MS else "NOT met"
        print(f"{NORMAL}: target p99 <= {TARGET_P99_MS} ms at half the sustained rate: "
              f"{verdict} (worst p99 {worst:.1f} ms)")


# -- main ---------------------------------------------------------------------------------


def _redis_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the broker and the record store run."""
    parser.add_argument("--redis-url", help="use this Redis (an EMPTY database, --db) instead "
                        "of starting a redis-server")
    parser.add_argument("--cluster", action="store_true",
                        help="the record store on a Redis Cluster of 3 masters this run starts "
                             "(tests/cluster.py); the broker stays the plain Redis. Redis "
                             "CPU figures are then the broker's only")
    parser.add_argument("--db", type=int, help="database number (required with --redis-url; "
                        "it must be empty; default 0 on the embedded server)")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/throughput.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("-n", type=int, default=2000, help="events (and no-op tasks) per phase")
    parser.add_argument("--concurrency", default="1,2,4",
                        help="comma-separated prefork pool sizes")
    parser.add_argument("--paths", default=f"{NORMAL},{PER_RECORD},{RAW}",
                        help=f"which submit paths to measure: {NORMAL} (batch drain tasks), "
                        f"{PER_RECORD} (a drain task per record), {RAW} (a Celery message "
                        f"per event)")
    parser.add_argument("--mix", choices=(PROVISIONING, REPORTS), default=PROVISIONING,
                        help=f"{PROVISIONING}: mostly new channels provisioned (two backend "
                        f"calls each); {REPORTS}: GateKeeper status flips on --records "
                        f"provisioned records (no backend call)")
    parser.add_argument("--records", type=int, default=200,
                        help=f"records the {REPORTS} mix spreads its events over")
    parser.add_argument("--paced", action="store_true",
                        help="after each burst phase, a phase paced at half its rate "
                        "(the latency target's load)")
    parser.add_argument("--paced-share", type=float, default=0.5,
                        help="a paced phase's rate as a share of its burst's events/s (the "
                        "latency target is at 0.5)")
    parser.add_argument("--paced-seconds", type=float, default=10.0,
                        help="length of a paced phase")
    parser.add_argument("--tick", type=float, default=0.01,
                        help="a paced submitter sends what fell due every TICK seconds")
    _redis_arguments(parser)
    parser.add_argument("--batch", type=int, default=50,
                        help="events per submit_events call on the normal path")
    parser.add_argument("--deprovision-share", type=float, default=0.1)
    parser.add_argument("--report-share", type=float, default=0.1,
                        help="share of gatekeeper.reported (Inactive/Error) events")
    parser.add_argument("--seed", type=int, default=1, help="seed of the workload")
    parser.add_argument("--start-timeout", type=float, default=60.0,
                        help="seconds for a worker to start and settle its warm-up")
    parser.add_argument("--phase-timeout", type=float, default=180.0,
                        help="seconds for one measured phase")
    parser.add_argument("--drain-timeout", type=float, default=15.0,
                        help="seconds for the queue to empty between phases")
    parser.add_argument("--max-runtime", type=float, default=1800.0,
                        help="seconds for the whole run; later deadlines are cut to it")
    parser.add_argument("--output", type=Path, help="JSON file (default "
                        "bench/results/throughput-<date>.json)")
    parser.add_argument("--log-dir", type=Path, help="worker logs (default: a new temp dir)")
    parser.add_argument("--profile-dir", type=Path,
                        help="record the worker with py-spy (raw format) into this folder")
    parser.add_argument("--profile-concurrency", type=int, default=1,
                        help="the concurrency whose phases are profiled")
    parser.add_argument("--profile-idle", action="store_true",
                        help="sample waiting threads too (wall clock instead of CPU)")
    parser.add_argument("--set", dest="settings", action="append", default=[],
                        metavar="PROVISIONING_NAME=VALUE",
                        help="a setting of the workers (and the submitter), e.g. "
                        "--set PROVISIONING_STEP_THREADS=4; repeatable")
    parser.add_argument("--no-noop", action="store_true", help="skip the no-op baseline")
    parser.add_argument("--outage-s", type=float, default=0.0,
                        help="the provisioner answers 503 to every call for this many seconds "
                        "from the start of each measured phase (the circuit breaker's run)")
    parser.add_argument("--backend-latency-ms", default="0",
                        help="comma-separated latencies of the emulator's answers; each "
                        "worker phase runs once per latency (e.g. 0,100,1000)")
    parser.add_argument("--emulator-nagle", action="store_true",
                        help="serve the emulator without TCP_NODELAY (it writes each answer "
                        "in one send, so Nagle's algorithm should cost nothing)")
    args = parser.parse_args(argv)
    try:
        args.levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    except ValueError:
        parser.error("--concurrency: comma-separated integers, e.g. 1,2,4")
    args.path_list = [p.strip() for p in args.paths.split(",") if p.strip()]
    args.latencies = latencies(parser, args.backend_latency_ms)
    args.worker_settings = worker_settings(parser, args.settings)
    if not args.levels or any(c < 1 for c in args.levels):
        parser.error("--concurrency: every level must be at least 1")
    if not args.path_list or not set(args.path_list) <= {NORMAL, PER_RECORD, RAW}:
        parser.error(f"--paths: any of {NORMAL}, {PER_RECORD}, {RAW}")
    if not 0 < args.paced_share <= 1:
        parser.error("--paced-share must be in (0, 1]")
    if args.records < 1 or args.paced_seconds <= 0 or args.tick < 0:
        parser.error("--records and --paced-seconds must be positive, --tick not negative")
    if args.n < 2 or args.batch < 1:
        parser.error("-n must be at least 2 and --batch at least 1")
    if args.redis_url and args.db is None:
        parser.error("--redis-url needs --db N, the number of an EMPTY database to use")
    return args


def latencies(parser: argparse.ArgumentParser, text: str) -> list[float]:
    """The --backend-latency-ms list."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        parser.error("--backend-latency-ms: comma-separated numbers, e.g. 0,100,1000")
    if not values or any(v < 0 for v in values):
        parser.error("--backend-latency-ms: at least one latency, none negative")
    return values


def worker_settings(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, str]:
    """The --set PROVISIONING_NAME=VALUE pairs."""
    settings = {}
    for item in items:
        name, equals, value = item.partition("=")
        if not name.startswith("PROVISIONING_") or not equals:
            parser.error(f"--set {item!r}: expected PROVISIONING_NAME=VALUE")
        settings[name] = value
    return settings


def open_redis(args: argparse.Namespace) -> tuple[str, Any]:
    """The Redis URL to use and the embedded server this run started (or None)."""
    if args.redis_url:
        url = with_db(args.redis_url, args.db)
        client = redis.Redis.from_url(url, socket_connect_timeout=5)
        try:
            size = int(client.dbsize())
        finally:
            client.close()
        if size:
            raise BenchError(f"database {args.db} of {redact(url)} holds {size} keys; this "
                             f"benchmark shares Celery's default queue, so it needs an empty "
                             f"database: pass --db with an unused one")
        return url, None
    from worker.emulators import embedded

    server = embedded.start("redis-server")
    return with_db(server.url, args.db or 0), server


def open_cluster(args: argparse.Namespace) -> Any:
    """With --cluster, a 3-master Redis Cluster started for this run (tests/cluster.py)."""
    if not args.cluster:
        return None
    sys.path.insert(0, str(ROOT))
    from tests.cluster import RedisCluster

    return RedisCluster(Path(tempfile.mkdtemp(prefix="bench-cluster-"))).start()


def use_cluster(ctx: Context, cluster: Any) -> None:
    """The record store on ``cluster`` (when there is one), the broker where it was."""
    if cluster is None:
        return
    from worker.store.connect import store_client

    ctx.store_url, ctx.store_client = cluster.url, store_client(cluster.url)


def cleanup_redis(ctx: Context) -> None:
    """Delete what this run created in a database it did not start (it was empty)."""
    names = ["celery", "unacked", "unacked_index", "unacked_mutex"]
    for pattern in (f"{ctx.prefix}:*", "_kombu.*"):
        names.extend(ctx.client.scan_iter(match=pattern, count=1000))
    for start in range(0, len(names), 500):
        ctx.client.delete(*names[start:start + 500])


def run(args: argparse.Namespace) -> int:
    from worker.emulators import Emulator, EmulatorServer

    stamp = datetime.now(UTC)
    procs = Processes()
    server = embedded_redis = cluster = None
    ctx: Context | None = None
    try:
        url, embedded_redis = open_redis(args)
        cluster = open_cluster(args)
        # One event loop answers every request (latency awaited, not slept in a thread
        # each), each answer in one write with TCP_NODELAY (--emulator-nagle: without it).
        server = EmulatorServer(("127.0.0.1", 0), Emulator(latency_ms=0, failure_rate=0.0),
                                nodelay=not args.emulator_nagle).start()
        host, port = server.server_address[:2]
        logdir = args.log_dir or Path(tempfile.mkdtemp(prefix="bench-throughput-"))
        logdir.mkdir(parents=True, exist_ok=True)
        ctx = Context(args, url, redis.Redis.from_url(url, decode_responses=True), server.emulator,
                      f"http://{host}:{port}", procs, logdir,
                      f"bench-{stamp:%Y%m%d%H%M%S}-{os.getpid()}",
                      time.monotonic() + args.max_runtime, embedded_redis is None)
        use_cluster(ctx, cluster)
        configure_clients(url, ctx.store_url or url)
        info = machine(ctx)
        source = source_state()
        print(f"machine: {info['nproc']} CPUs ({info['usable_cpus']} usable), "
              f"{info['cpu_model']}; Python {info['python']}, Celery {info['celery']}, "
              f"kombu {info['kombu']}, redis-py {info['redis_py']}, "
              f"redis-server {info['redis_server']}")
        print(f"redis: {redact(url)} ({'started here' if embedded_redis else 'given'}); "
              f"emulator: {ctx.emulator_url}; logs: {logdir}")
        phases = run_phases(ctx)
        rows = table_rows(phases)
        print_table(rows)
        for phase in phases:
            if "profile" in phase:
                print_profile(f"c{phase['concurrency']}-{phase['path']}", phase["profile"])
        output = write_json(args, stamp, info, source, phases, rows)
        print(f"\nresults: {output}")
        print_verdicts(rows)
        for phase in phases:
            print_backend_calls(phase, args.outage_s)
            print(f"c{phase['concurrency']} {label(phase)}: the emulator's most calls at once "
                  f"by backend: {phase.get('emulator_max_concurrency_by_backend')}")
        return 0
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the clean-up finish
        try:
            procs.stop_all()
            if ctx is not None and ctx.created_db:
                with contextlib.suppress(redis.RedisError):
                    cleanup_redis(ctx)
            if server is not None:
                server.shutdown()
            if embedded_redis is not None:
                embedded_redis.stop()
            if cluster is not None:
                cluster.stop()
        finally:
            signal.signal(signal.SIGINT, previous)


def configure_clients(url: str, store_url: str | None = None) -> None:
    """Point the provisioning app (the submitting side) and the no-op app at ``url`` (the
    record store at ``store_url`` when given)."""
    from worker import bootstrap
    from worker.app import celery_config
    from worker.logs import configure as configure_logging
    from worker.settings import Settings

    for name in [k for k in os.environ if k.startswith("PROVISIONING_")]:
        del os.environ[name]
    os.environ["PROVISIONING_REDIS_URL"] = store_url or url
    os.environ["PROVISIONING_BROKER_URL"] = url
    os.environ["PROVISIONING_LOG_LEVEL"] = "WARNING"
    bootstrap.reset()
    configure_logging(bootstrap.current_settings())  # the emulator logs each request at debug
    config = celery_config(Settings.from_env())
    config.pop("beat_schedule", None)
    os.environ[NOOP_CONFIG_ENV] = json.dumps(config)


def run_phases(ctx: Context) -> list[dict[str, Any]]:
    phases: list[dict[str, Any]] = []
    steps: list[tuple[int, str, Callable[[], dict[str, Any]]]] = []
    for level in ctx.args.levels:
        for path in ctx.args.path_list:
            for latency in ctx.args.latencies:
                steps.append((level, path if not latency else f"{path} {latency:g}ms",
                              lambda c=level, p=path, ms=latency: run_worker_phase(
                                  ctx, c, p, latency_ms=ms)))
        if not ctx.args.no_noop:
            steps.append((level, NOOP, lambda c=level: run_noop_phase(ctx, c)))
    while steps:
        level, path, step = steps.pop(0)
        if time.monotonic() > ctx.run_deadline:
            print(f"skipped c{level} {path}: --max-runtime passed", file=sys.stderr)
            continue
        began = time.monotonic()
        print(f"c{level} {path}: running ...", end="", flush=True)
        result = step()
        phases.append(result)
        print(f" {result['completed']}/{result['submitted']} in {result['elapsed_s']} s, "
              f"{result['per_s']}/s, p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms "
              f"(phase {time.monotonic() - began:.1f} s)", flush=True)
        if ctx.args.paced and path != NOOP and result["paced_rate"] is None \
                and result["per_s"] and not result.get("backend_latency_ms"):
            rate = result["per_s"] * ctx.args.paced_share
            steps.insert(0, (level, f"{path} @{rate:.0f}/s", lambda c=level, p=path, r=rate:
                             run_worker_phase(ctx, c, p, rate=r)))
    return phases


def write_json(args: argparse.Namespace, stamp: datetime, info: dict[str, Any],
               source: dict[str, Any], phases: list[dict[str, Any]],
               rows: list[dict[str, Any]]) -> Path:
    output = args.output or RESULTS / f"throughput-{stamp:%Y-%m-%d}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": "bench/throughput.py", "started_at": stamp.isoformat(),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "targets": {"ratio": TARGET_RATIO, "batch_ratio": BATCH_TARGET_RATIO,
                    "batch_p99_ms": TARGET_P99_MS}, "machine": info, "source": source,
        "settings": {"n": args.n, "concurrency": args.levels, "paths": args.path_list,
                     "batch": args.batch, "mix": args.mix, "records": args.records,
                     "worker_settings": args.worker_settings,
                     "paced_seconds": args.paced_seconds, "paced_share": args.paced_share,
                     "tick": args.tick,
                     "deprovision_share": args.deprovision_share,
                     "report_share": args.report_share, "seed": args.seed,
                     "emulator_latency_ms": args.latencies, "pool": "prefork",
                     "emulator_tcp_nodelay": not args.emulator_nagle},
        "table": [{k: row.get(k) for k in ("concurrency", "path", "paced_rate", "per_s",
                                           "p50_ms", "p95_ms", "p99_ms", "noop_per_s",
                                           "ratio", "backend_latency_ms", "vs_instant",
                                           "emulator_max_concurrency", "settled")}
                  for row in rows],
        "phases": phases,
    }
    tmp = output.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    tmp.replace(output)
    return output


def entry(parse: Callable[[Sequence[str] | None], argparse.Namespace],
          run_with: Callable[[argparse.Namespace], int],
          argv: Sequence[str] | None = None) -> int:
    """A benchmark's main: parse, then run with SIGTERM and Ctrl-C stopping the run (every
    process it started is stopped by the run's own clean-up); a BenchError is one line."""
    args = parse(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    # Even when started in the background of a shell, which starts it ignoring SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return run_with(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; every process this run started was stopped", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    return entry(parse_args, run, argv)


__all__ = ["entry", "main", "noop", "noop_app"]

if __name__ == "__main__":
    raise SystemExit(main())
