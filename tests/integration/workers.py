"""Helpers for the integration tests that run real ``celery worker`` processes.

A :class:`Cluster` owns everything one test starts: the backend emulator served over HTTP
on loopback, ``celery -A worker.app worker`` and ``beat`` subprocesses (each in a session
of its own, so the whole worker, pool children included, can be stopped or killed by its
process group), a Celery client for raw messages and kicks, and a Service for
``worker.api.submit_events`` and for reading the store. ``Cluster.close()`` stops only
what it started, by pid.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import celery
import httpx
import pytest

from statemachine import HistoryEntry, ProvisioningState, Result
from worker.bootstrap.services import build_service
from worker.emulators import Emulator, EmulatorServer, serve
from worker.service import Service, SubmitReport, submit_events
from worker.settings import Settings
from worker.store.failed import FailedTask
from worker.task_names import DRAIN_RECORD, DRAIN_RECORDS, HANDLE_EVENT

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")

# Short delays so that leases, recovery and beat retries happen within seconds.
MAX_TRIES = 3  # in-task tries of a backend step (SPEC §4: at least 3)
FAST_SETTINGS: dict[str, str] = {
    "PROVISIONING_MAX_TRIES": str(MAX_TRIES),
    "PROVISIONING_LEASE_SECONDS": "3",
    "PROVISIONING_RECOVERY_INTERVAL": "1",
    "PROVISIONING_BACKOFF_BASE": "0.01",
    "PROVISIONING_BACKOFF_CAP": "0.05",
    "PROVISIONING_RETRY_BASE_SECONDS": "1",
    "PROVISIONING_RETRY_SWEEP_INTERVAL": "1",
    "PROVISIONING_LOG_FORMAT": "json",
    "PROVISIONING_METRICS_PORT": "0",  # tests that want the endpoint set a free port
}

# -- events ----------------------------------------------------------------------------










# -- processes -------------------------------------------------------------------------


_REFUSAL_LOGS = ("Can't decode message body", "Received invalid task message")


class CeleryProcess:
    """One ``celery -A worker.app …`` subprocess, leader of its own process group."""

    def __init__(self, name: str, args: list[str], env: Mapping[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        with open(log, "ab") as stream:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "worker.app", *args],
                cwd=ROOT, env=dict(env), stdout=stream, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid = self.process.pid  # also the process group id (start_new_session)
        self.expected_alive = True

    def alive(self) -> bool:
        return self.process.poll() is None

    def group_members(self) -> list[int]:
        """The pids still in this process's group (the main process and pool children)."""
        members = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                # Fields after the ")" that ends the command name: state ppid pgrp ...
                fields = stat.rsplit(")", 1)[1].split()
                if int(fields[2]) == self.pid and fields[0] != "Z":
                    members.append(int(entry.name))
        return members

    def kill(self) -> None:
        """SIGKILL the whole worker at once: the main process and its pool children."""
        self.expected_alive = False
        with suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        deadline = time.monotonic() + 30
        while self.group_members() and time.monotonic() < deadline:  # children dying
            time.sleep(0.02)

    def stop(self, timeout: float = 20.0) -> None:
        """Warm shutdown (SIGTERM to the main process), then SIGKILL what is left."""
        self.expected_alive = False
        if self.alive():
            with suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        if self.group_members():  # orphaned pool children of a dead main process
            with suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)

    def pool_children(self) -> set[int]:
        """The pids of the pool children now (the group's members but the main process)."""
        return set(self.group_members()) - {self.pid}

    def error_lines(self) -> list[str]:
        """One line per error in the log outside the failed-task handling: a task that
        raised, a lost pool child, an error logged, a traceback of anything else. Celery
        logs a refused (undecodable, invalid) message with a traceback after
        worker.consumer kept it in the failed-task store: handled, not counted."""
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return []
        found: list[str] = []
        header, counted = "", False
        for line in text.splitlines():
            if line.startswith(("[20", "{")):
                header, counted = line, False
            if ("raised unexpected" in line or "WorkerLostError" in line
                    or '"level": "error"' in line or '"level": "critical"' in line):
                found.append(line[:300])
                counted = True
            elif line.startswith("Traceback") and not counted and not any(
                    refusal in header for refusal in _REFUSAL_LOGS):
                found.append(f"{header[:200]} ... {line}")
                counted = True
        return found

    def tail(self, lines: int = 80) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


# -- the cluster -----------------------------------------------------------------------


class Cluster:
    """Redis (from the ``redis_url`` fixture), the emulator and the processes of one test."""

    def __init__(self, redis_url: str, workdir: Path, *, emulator: Emulator | None = None,
                 settings: Mapping[str, str] | None = None,
                 broker_url: str | None = None) -> None:
        """``broker_url``: Celery's broker when it is not the store (a cluster store)."""
        self.redis_url = redis_url
        broker = broker_url or redis_url
        self.workdir = workdir
        self.processes: list[CeleryProcess] = []
        self.server: EmulatorServer = serve("127.0.0.1", 0, emulator or Emulator())
        self.env: dict[str, str] = {
            key: value for key, value in os.environ.items()
            if not key.startswith("PROVISIONING_")
        }
        self.env.update(FAST_SETTINGS)
        self.env.update(settings or {})
        self.env.update({
            "PROVISIONING_REDIS_URL": redis_url,
            "PROVISIONING_BROKER_URL": broker,
            "PROVISIONING_PROVISIONER_URL": self.server.url,
            "PROVISIONING_GATEKEEPER_URL": self.server.url,
            "PROVISIONING_CALLING_TEST_URL": self.server.url,
        })
        try:
            self.client = celery.Celery("integration-client", broker=broker,
                                        set_as_current=False)
            self.client.conf.update(task_serializer="json", accept_content=["json"],
                                    broker_connection_retry_on_startup=True)
            self.service: Service = build_service(
                Settings.from_env({k: v for k, v in self.env.items()
                                   if k.startswith("PROVISIONING_")}),
                kick=self.kick, kick_many=self.kick_many)
        except BaseException:
            self.server.shutdown()
            raise

    # -- processes ---------------------------------------------------------------------

    def start_worker(self, concurrency: int = 2, name: str | None = None) -> CeleryProcess:
        name = name or f"w{len(self.processes)}-{uuid.uuid4().hex[:6]}"
        process = CeleryProcess(name, [
            "worker", "--pool", "prefork", "--concurrency", str(concurrency),
            "--without-gossip", "--without-mingle", "-n", f"{name}@%h", "--loglevel", "WARNING",
        ], self.env, self.workdir / f"worker-{name}.log")
        self.processes.append(process)
        return process

    def start_beat(self) -> CeleryProcess:
        name = f"beat{len(self.processes)}"
        process = CeleryProcess(name, [
            "beat", "--loglevel", "WARNING", "-s", str(self.workdir / f"{name}-schedule"),
        ], self.env, self.workdir / f"{name}.log")
        self.processes.append(process)
        return process

    def close(self) -> None:
        for process in self.processes:
            process.stop()
        self.client.close()
        self.service.close()  # its backends, and its step loop if a drain started one
        self.service.store.client.close()  # type: ignore[attr-defined]
        self.server.shutdown()

    def logs(self, lines: int = 80) -> str:
        return "\n".join(f"----- {p.log.name} (pid {p.pid}) -----\n{p.tail(lines)}"
                         for p in self.processes)

    # -- input -------------------------------------------------------------------------

    def kick(self, record_id: str) -> None:
        self.client.send_task(DRAIN_RECORD, args=[record_id])

    def kick_many(self, record_ids: Sequence[str]) -> None:
        """``drain_records`` tasks of PROVISIONING_BATCH_RECORDS records each, as
        ``worker.app.kick_many`` sends them."""
        size = self.service.settings.batch_records
        for start in range(0, len(record_ids), size):
            self.client.send_task(DRAIN_RECORDS, args=[list(record_ids[start:start + size])])

    def submit(self, events: Iterable[Mapping[str, Any]]) -> SubmitReport:
        """``worker.api.submit_events``: validate, accept in order, kick the records in
        one batch."""
        return submit_events(self.service, enumerate(events, start=1))

    def send(self, body: Any, **options: Any) -> None:
        """A raw Celery message to ``provisioning.handle_event`` (any Celery client)."""
        self.client.send_task(HANDLE_EVENT, args=[body], **options)

    def provisioning(self, *args: str, stdin: str | None = None,
                     ) -> subprocess.CompletedProcess[str]:
        """Run the ``provisioning`` console script against this cluster's Redis."""
        script = Path(sys.executable).with_name("provisioning")
        return subprocess.run(
            [str(script), *args], cwd=ROOT, env=self.env, input=stdin, capture_output=True,
            text=True, timeout=60, check=False,
        )

    # -- reading -----------------------------------------------------------------------

    def record(self, record_id: str) -> ProvisioningState | None:
        return self.service.store.load(record_id)

    def history(self, record_id: str) -> list[HistoryEntry]:
        return self.service.store.history(record_id)

    def failed(self) -> list[FailedTask]:
        return self.service.failed.all()

    def failed_count(self) -> int:
        """How many failed-task entries there are (one round trip, for polling)."""
        return self.service.failed.count()

    def requests(self) -> list[dict[str, Any]]:
        """What the emulator answered, over its admin API (as any client would see it)."""
        reply = httpx.get(f"{self.server.url}/_emulator/requests", timeout=10)
        reply.raise_for_status()
        answer: list[dict[str, Any]] = reply.json()
        return answer

    def wait_for(self, check: Callable[[], T | None], what: str, timeout: float = 30.0,
                 interval: float = 0.1) -> T:
        """Poll ``check`` until it returns something truthy; fail with the logs if not."""
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            # The processes' logs are printed when the test fails (running_cluster).
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
            for process in list(self.processes):
                # alive() first: a kill clears expected_alive before it signals, so a
                # process found dead with the flag still set died on its own (the other
                # order races with a killer thread).
                if not process.alive() and process.expected_alive:
                    pytest.fail(f"{process.name} exited with {process.process.returncode} "
                                f"while waiting for {what}")
            time.sleep(interval)

    def wait_status(self, record_id: str, label: str, timeout: float = 30.0,
                    ) -> ProvisioningState:
        def check() -> ProvisioningState | None:
            record = self.record(record_id)
            return record if record is not None and record.status.label == label else None

        return self.wait_for(check, f"record {record_id} to be {label} "
                                    f"(now {self.describe(record_id)})", timeout)

    def describe(self, record_id: str) -> str:
        record = self.record(record_id)
        if record is None:
            return "no record"
        return f"{record.status.label} v{record.version}"

    def settled(self) -> bool:
        """No record has queued work or a step in flight."""
        return not self.service.store.pending()


def own_entries(entries: Iterable[HistoryEntry]) -> list[HistoryEntry]:
    """The entries an event made itself (not the worker's steps, retries or timeouts)."""
    worker_made = ("step.", "retry.", "calling_test.timed_out")
    return [e for e in entries if not e.event_type.startswith(worker_made)]


def applied_versions(entries: Iterable[HistoryEntry]) -> list[int]:
    return [e.version for e in entries if e.outcome is Result.APPLIED and e.version is not None]


def dataverse(record: ProvisioningState) -> dict[str, Any]:
    """The record as ``show --json`` prints it (SPEC §5.1), through a JSON round trip."""
    loaded: dict[str, Any] = json.loads(json.dumps(record.to_dataverse()))
    return loaded


@contextmanager
def running_cluster(redis_url: str, workdir: Path, request: pytest.FixtureRequest, *,
                    emulator: Emulator | None = None,
                    settings: Mapping[str, str] | None = None,
                    broker_url: str | None = None) -> Iterator[Cluster]:
    """A Cluster for one test; on failure its processes' logs are printed."""
    failures = request.session.testsfailed
    cluster = Cluster(redis_url, workdir, emulator=emulator, settings=settings,
                      broker_url=broker_url)
    try:
        yield cluster
    finally:
        try:
            if request.session.testsfailed > failures:
                _print_on_failure(request, cluster.logs(lines=200))
        finally:
            cluster.close()


def _print_on_failure(request: pytest.FixtureRequest, text: str) -> None:
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_sep("-", f"worker logs of {request.node.nodeid}")
        reporter.write_line(text)
    else:  # pragma: no cover - without the terminal plugin
        sys.__stderr__.write(text + "\n")
