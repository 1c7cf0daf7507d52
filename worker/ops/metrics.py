"""Prometheus metrics of the worker, served by its main process (docs/deploy.md).

Celery's prefork pool runs tasks in child processes, so the counters and histograms use
prometheus-client's multiprocess mode: every process writes its samples to memory-mapped
files in one directory (PROVISIONING_METRICS_DIR, or a fresh temporary one), and the main
process serves the sum of them all. :func:`prepare` runs in the main process before the
pool forks (the ``Metrics`` bootstep in ``worker/app.py``): it empties the directory and
exports it as ``PROMETHEUS_MULTIPROC_DIR`` to the children. A child that exits is marked
dead (``worker_process_shutdown``); its counts stay in the sums, as counters must.

The size of the store is not recorded but read at scrape time by :class:`StoreCollector`
(``SCARD`` of each status index set, ``ZCARD`` of the failed-task store, the age of beat's
heartbeat, the pending set's oldest member and the mirror outbox's head): cheap, and true
whichever process changed it.

The endpoint also answers ``/healthz``: 200 while the main process's event loop ticks (a
timer of the bootstep), 503 before the first tick and when the loop has stalled. It is the
worker's cheap liveness and startup probe.
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any, ParamSpec
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import redis
import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    make_wsgi_app,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric

from statemachine import HistoryEntry
from worker.backends.limits import BACKENDS
from worker.dataverse.errors import UnreadableEntry
from worker.dataverse.outbox import OutboxEntry
from worker.errors import StoreError
from worker.keys import Keys
from worker.ops.heartbeat import read_heartbeat
from worker.settings import Settings
from worker.store.counts import Backlog, StoreCounts

log = structlog.get_logger("worker")

# Every metric family the endpoint serves (docs/deploy.md lists them with their labels).
COUNTERS = (
    "provisioning_events_total",
    "provisioning_backend_failures_total",
    "provisioning_backend_tries_total",
    "provisioning_retries_scheduled_total",
    "provisioning_task_failures_total",
)
HISTOGRAMS = ("provisioning_transition_seconds", "provisioning_backend_call_seconds")
GAUGES = ("provisioning_records", "provisioning_failed_tasks", "provisioning_store_up",
          "provisioning_beat_heartbeat_age_seconds", "provisioning_backend_circuit_state",
          "provisioning_pending_records", "provisioning_inbox_oldest_age_seconds",
          "provisioning_mirror_outbox_entries", "provisioning_mirror_lag_seconds")

# /healthz: the loop ticks every LIVENESS_TICK seconds; older than LIVENESS_MAX_AGE is a
# stall. Generous, so that a slow Redis (whose calls the recovery timer makes in the same
# loop) is not mistaken for a dead worker.
LIVENESS_TICK = 2.0
LIVENESS_MAX_AGE = 90.0

P = ParamSpec("P")
TEMPORARY_PREFIX = "provisioning-metrics-"  # + the worker's pid + "-" + random


# -- the multiprocess directory ---------------------------------------------------------

@dataclass
class _State:
    directory: str | None = None
    owned: bool = False  # a temporary directory we made (and remove at stop)


_state = _State()


def prepare(settings: Settings) -> str:
    """Make this process (and the children it forks from now on) write multiprocess
    metrics to a fresh directory. Call in the worker's main process before the pool starts."""
    directory = settings.metrics_dir
    owned = directory is None
    if directory is None:
        _remove_orphans()
        directory = tempfile.mkdtemp(prefix=f"{TEMPORARY_PREFIX}{os.getpid()}-")
    os.makedirs(directory, exist_ok=True)
    # prometheus-client: "the directory must be wiped between runs" (old pids' files).
    for stale in glob.glob(os.path.join(directory, "*.db")):
        os.remove(stale)
    # prometheus-client reads its directory from this variable, in this process and in
    # the pool children that inherit it; choosing the value class again makes metrics
    # created from now on multiprocess even if the library was imported before.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    _state.directory, _state.owned = directory, owned
    return directory


def _remove_orphans() -> None:
    """Remove the temporary directories of workers that died without cleaning up (SIGKILL):
    their name carries the pid of the worker that made them."""
    pattern = os.path.join(tempfile.gettempdir(), f"{TEMPORARY_PREFIX}*-*")
    for path in glob.glob(pattern):
        pid = os.path.basename(path)[len(TEMPORARY_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def enabled() -> bool:
    """True in a worker whose main process called :func:`prepare` (and in its children)."""
    return _state.directory is not None


def process_exited(pid: int) -> None:
    """Bookkeeping for an exited pool child (its live gauges go; counters stay)."""
    if _state.directory is not None:
        multiprocess.mark_process_dead(  # type: ignore[no-untyped-call]
            pid, _state.directory)


def release() -> None:
    """Forget the directory; remove it if it was a temporary one of ours."""
    directory, owned = _state.directory, _state.owned
    _state.directory, _state.owned = None, False
    if directory is not None and owned:
        shutil.rmtree(directory, ignore_errors=True)


# -- what the service reports (worker.service.observer.Observer) -------------------

class _Metrics:
    """The recorded metrics; created after :func:`prepare`, once per process tree."""

    def __init__(self) -> None:
        # registry=None: the multiprocess collector reads the files; registering in the
        # default registry would only serve this one process's share.
        self.events = Counter(
            "provisioning_events_total",
            "History entries committed, by event type and outcome "
            "(applied, ignored, rejected, duplicate, stale).",
            ["type", "outcome"], registry=None)
        self.transition = Histogram(
            "provisioning_transition_seconds",
            "From loading the record to the committed change, per command, by trigger.",
            ["trigger"], registry=None,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))
        self.backend_seconds = Histogram(
            "provisioning_backend_call_seconds",
            "One backend call with all its in-task tries, by step.",
            ["step"], registry=None,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0))
        self.backend_failures = Counter(
            "provisioning_backend_failures_total",
            "Backend calls that failed for good, by step and error class "
            "(HTTP status or exception class).",
            ["step", "error_class"], registry=None)
        self.backend_tries = Counter(
            "provisioning_backend_tries_total",
            "HTTP tries of backend calls (more than the calls: in-task retries).",
            ["step"], registry=None)
        self.retries = Counter(
            "provisioning_retries_scheduled_total",
            "Beat retries scheduled for records in Error (or Deprovisioning), by attempt.",
            ["attempt"], registry=None)
        self.task_failures = Counter(
            "provisioning_task_failures_total",
            "Entries written to the failed-task store, by task and exception.",
            ["task", "exception"], registry=None)
        # The worst state over the live processes: 0 closed, 1 half-open, 2 open.
        self.circuit = Gauge(
            "provisioning_backend_circuit_state",
            "A backend's circuit breaker: 0 closed, 1 half-open, 2 open (the highest over "
            "the worker's live processes).",
            ["backend"], registry=None, multiprocess_mode="livemax")


_metrics_lock = threading.Lock()
_metrics: _Metrics | None = None


def _recorded() -> _Metrics:
    global _metrics  # noqa: PLW0603 - one set of metric objects per process tree
    with _metrics_lock:
        if _metrics is None:
            _metrics = _Metrics()
        return _metrics


def _never_raises(method: Callable[P, None]) -> Callable[P, None]:
    """A metric must never fail the work it measures."""

    @functools.wraps(method)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            method(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - logged, and the work goes on
            log.warning("metrics_failed", metric=method.__name__,
                        error=f"{type(exc).__name__}: {exc}")

    return guarded


class PrometheusObserver:
    """Implements ``worker.service.observer.Observer`` with the metrics above."""

    def __init__(self) -> None:
        self.metrics = _recorded()
        for backend in BACKENDS:  # every circuit starts closed, and is shown so
            self.circuit_changed(backend, 0)

    @_never_raises
    def entry_committed(self, entry: HistoryEntry) -> None:
        self.metrics.events.labels(type=entry.event_type, outcome=entry.outcome.value).inc()

    @_never_raises
    def transition_seconds(self, trigger: str, seconds: float) -> None:
        self.metrics.transition.labels(trigger=trigger).observe(seconds)

    @_never_raises
    def backend_call(self, step: str, seconds: float, ok: bool, error_class: str | None,
                     attempts: int) -> None:
        self.metrics.backend_seconds.labels(step=step).observe(seconds)
        if attempts:
            self.metrics.backend_tries.labels(step=step).inc(attempts)
        if not ok:
            self.metrics.backend_failures.labels(
                step=step, error_class=error_class or "unknown").inc()

    @_never_raises
    def retry_scheduled(self, attempt: int) -> None:
        self.metrics.retries.labels(attempt=str(attempt)).inc()

    @_never_raises
    def task_failed(self, task: str, exception: str) -> None:
        self.metrics.task_failures.labels(task=task, exception=exception).inc()

    @_never_raises
    def circuit_changed(self, backend: str, state: int) -> None:
        self.metrics.circuit.labels(backend=backend).set(state)


def observer(settings: Settings) -> PrometheusObserver | None:
    """The observer for a Service of this process: metrics in a worker that serves them
    (PROVISIONING_METRICS_PORT not 0, directory prepared), none elsewhere (the CLI)."""
    if settings.metrics_port and enabled():
        return PrometheusObserver()
    return None


# -- read at scrape time --------------------------------------------------------------------

class StoreCollector:
    """Gauges read from Redis on every scrape: records by status reason, the failed-task
    store's size, beat's heartbeat age, the backlog (records waiting to be drained and the
    age of the oldest, the mirror's outbox and its lag), and whether the store answered.
    ``clock`` gives epoch seconds (tests)."""

    def __init__(self, settings: Settings, client: redis.Redis,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.keys = Keys(settings.key_prefix, settings.store_shards)
        self.client = client  # a probe client: a scrape must not hang on a dead Redis
        self.counts = StoreCounts(self.client, self.keys)
        self.clock = clock

    def describe(self) -> Iterable[Metric]:
        return ()  # registering must not touch Redis

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("provisioning_store_up",
                               "1 when the record store answered this scrape, else 0.")
        try:
            by_status = self.counts.records_by_status()
            failed = self.counts.failed_tasks()
            beat = read_heartbeat(self.client, self.keys, self.settings.health_beat_max_age)
            backlog = self.counts.backlog()
        except StoreError as exc:
            log.warning("metrics_store_unreachable", error=str(exc))
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        records = GaugeMetricFamily(
            "provisioning_records", "Live records by status reason (statuscode).",
            labels=["status", "statuscode"])
        for status, count in by_status.items():
            records.add_metric([status.label, str(int(status))], count)
        yield records
        yield GaugeMetricFamily("provisioning_failed_tasks",
                                "Entries in the failed-task store.", value=failed)
        if beat is not None:
            yield GaugeMetricFamily(
                "provisioning_beat_heartbeat_age_seconds",
                "Seconds since beat's last heartbeat (absent: none within "
                "PROVISIONING_HEALTH_BEAT_MAX_AGE).", value=beat.age)
        yield from self._backlog(backlog)

    def _backlog(self, backlog: Backlog) -> Iterator[Metric]:
        now = self.clock()
        yield GaugeMetricFamily("provisioning_pending_records",
                                "Records with accepted events not yet applied.",
                                value=backlog.pending)
        since = backlog.oldest_pending_since
        # Clocks of the accepting and the scraping host may differ: never a negative age.
        yield GaugeMetricFamily(
            "provisioning_inbox_oldest_age_seconds",
            "Seconds since the longest-waiting record with unapplied events got work "
            "(0: none waiting).", value=max(0.0, now - since) if since is not None else 0.0)
        yield GaugeMetricFamily("provisioning_mirror_outbox_entries",
                                "Outbox entries the Dataverse mirror has not sent yet.",
                                value=backlog.outbox)
        lag: float | None = 0.0
        for head in backlog.outbox_heads:  # one per shard: the oldest of them counts
            try:
                at = OutboxEntry.decode(head).at
            except UnreadableEntry:
                at = None
            if at is None:
                lag = None
                break
            lag = max(lag or 0.0, now - at.timestamp())
        if lag is not None:  # an unreadable head has no age (dataverse status names it)
            yield GaugeMetricFamily(
                "provisioning_mirror_lag_seconds",
                "Seconds since the oldest outbox entry not yet sent to Dataverse was "
                "committed (0: the outbox is empty).", value=lag)

    def close(self) -> None:
        self.client.close()


# -- the endpoint ---------------------------------------------------------------------------

class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes and probes are not worth a log line each."""


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


WsgiStart = Callable[[str, list[tuple[str, str]]], Any]


class MetricsEndpoint:
    """``/metrics`` (everything above) and ``/healthz`` over HTTP, from a daemon thread."""

    def __init__(self, settings: Settings, directory: str, store: StoreCollector) -> None:
        self.settings = settings
        self.registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
            self.registry, path=directory)
        self.store = store
        self.registry.register(self.store)
        self._metrics_app = make_wsgi_app(self.registry)
        self.last_tick: float | None = None
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def tick(self) -> None:
        """Called by the main process's event loop: it is alive."""
        self.last_tick = time.monotonic()

    def liveness(self) -> tuple[bool, str]:
        if self.last_tick is None:
            return False, "starting: the event loop has not ticked yet"
        age = time.monotonic() - self.last_tick
        if age > LIVENESS_MAX_AGE:
            return False, f"stalled: the event loop last ticked {age:.0f} s ago"
        return True, f"ok: the event loop ticked {age:.1f} s ago"

    def __call__(self, environ: dict[str, Any], start_response: WsgiStart) -> list[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            ok, text = self.liveness()
            start_response("200 OK" if ok else "503 Service Unavailable",
                           [("Content-Type", "text/plain; charset=utf-8")])
            return [text.encode() + b"\n"]
        body: list[bytes] = self._metrics_app(environ, start_response)
        return body

    def start(self) -> MetricsEndpoint:
        address = self.settings.metrics_address
        server_class = _Server6 if ":" in address else _Server
        self._server = make_server(address, self.settings.metrics_port, self,
                                   server_class=server_class, handler_class=_QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="metrics-endpoint", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self.store.close()


def serve(settings: Settings, client: redis.Redis) -> MetricsEndpoint | None:
    """Start the endpoint on PROVISIONING_METRICS_ADDRESS:PORT, reading the store's gauges
    through ``client`` (a probe client); None (logged) when the address cannot be bound:
    the worker goes on without it."""
    if _state.directory is None:
        raise RuntimeError("metrics.prepare() must run first")
    endpoint = MetricsEndpoint(settings, _state.directory, StoreCollector(settings, client))
    try:
        endpoint.start()
    except OSError as exc:
        endpoint.stop()
        log.warning("metrics_endpoint_unavailable", address=settings.metrics_address,
                    port=settings.metrics_port, error=str(exc))
        return None
    log.info("metrics_endpoint", address=settings.metrics_address, port=endpoint.port,
             directory=_state.directory)
    return endpoint
