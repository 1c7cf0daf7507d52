"""``provisioning demo``: the bundled example, end to end, on an embedded default.

Starts an embedded Redis on a free loopback port (or uses ``--redis-url``, only when given
and only when that database is empty), the backend emulator in this process on another,
real ``celery worker`` and ``celery beat`` processes, then submits the example in two
phases (onboarding, then operations) and prints the final records, one record's history
and the failed-task entries. Everything it started is stopped by pid before it returns.

Safe next to a real system: the PROVISIONING_* environment is not handed to what it starts
(no exported Redis, broker or Dataverse URL is used), a given database holding any key is
refused before anything is written, and every wait ends with a message after a timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import redis
from celery import Celery

from statemachine import AutomatedCallingStatus, BackendStep, StatusReason
from worker import bootstrap
from worker.app import celery_config
from worker.bootstrap.services import build_service
from worker.cli.common import OK, CommandFailed, UsageError
from worker.cli.logs import quiet_logs
from worker.cli.render import describe_record, format_history, format_records
from worker.console import OneTimeLogins
from worker.emulators import Emulator, embedded, serve
from worker.emulators.embedded import free_port
from worker.http.auth import Role
from worker.keys import Keys
from worker.service import submit_events
from worker.settings import Settings, redact_url

# The example's records and channels (worker/examples/*.jsonl).
WHATSAPP = "6f1c0000-0000-4000-8000-000000000001"
FACEBOOK = "6f1c0000-0000-4000-8000-000000000002"
VOICE = "6f1c0000-0000-4000-8000-000000000003"
TEAMS = "6f1c0000-0000-4000-8000-000000000004"
LINE = "6f1c0000-0000-4000-8000-000000000005"
FABRIKAM = "6f1c0000-0000-4000-8000-000000000006"
TEAMS_CHANNEL = "00000000-0000-4000-8000-000000000107"
LINE_CHANNEL = "00000000-0000-4000-8000-000000000108"

DEMO_SETTINGS = {
    # Short delays so the demo's retry lands within seconds.
    "PROVISIONING_RETRY_BASE_SECONDS": "1",
    "PROVISIONING_RETRY_SWEEP_INTERVAL": "1",
    "PROVISIONING_MAX_RETRIES": "2",
    "PROVISIONING_BACKOFF_BASE": "0.05",
    "PROVISIONING_BACKOFF_CAP": "0.2",
    "PROVISIONING_RECOVERY_INTERVAL": "2",
    "PROVISIONING_METRICS_PORT": "0",  # a worker already running here may hold 9839
    # `--console` serves the console on plain HTTP on loopback: cookies without Secure.
    "PROVISIONING_CONSOLE_SECURE_COOKIE": "off",
}
CONSOLE_WAIT = 30.0  # seconds `serve` may take to answer /healthz


def _example(name: str) -> Path:
    return Path(__file__).parent.parent / "examples" / name


def run_demo(*, workers: int = 2, as_json: bool = False, timeout: float = 90.0,
             redis_url: str | None = None, console: bool = False,
             port: int | None = None) -> int:
    """Run the example; ``redis_url`` (``--redis-url``) replaces the embedded Redis and
    must name an empty database (UsageError, nothing written, otherwise). ``console``
    (``--console``): then serve the operator console on ``port`` (a free one by
    default), print a one-time login link, and keep everything running until Ctrl-C."""
    out = sys.stdout
    say: Callable[[str], None] = (lambda text: print(text, file=sys.stderr)) if as_json \
        else (lambda text: print(text, file=out, flush=True))
    redis_server: embedded.EmbeddedRedis | None = None
    if redis_url is None:
        try:
            redis_server = embedded.start(bootstrap.current_settings().embedded_redis)
        except RuntimeError as exc:  # it did not answer within its timeout
            raise CommandFailed(f"demo: {exc}") from None
        url = redis_server.url
        say(f"embedded Redis ({redis_server.engine}) on {url}")
    else:
        _refuse_unless_empty(redis_url)
        url = redis_url
        say(f"using the empty database at {redact_url(url)}")
    emulator = Emulator()
    # A flaky provisioner for the Teams channel: every in-task try fails, so the record
    # goes to Error and beat's retry brings it to Running.
    emulator.script(TEAMS_CHANNEL, BackendStep.PROVISION_CHANNEL, [503] * 8)
    emulator.fail_permanently(LINE_CHANNEL, BackendStep.PROVISION_CHANNEL, 400,
                              {"error": "LINE channel secret was rejected"})
    server = serve("127.0.0.1", 0, emulator)
    say(f"backend emulator on {server.url}")
    # None of this shell's PROVISIONING_* settings reach the demo's processes: an exported
    # Redis, broker or Dataverse URL must not be written to by a demo.
    env = {
        **{key: value for key, value in os.environ.items()
           if not key.startswith("PROVISIONING_")},
        **DEMO_SETTINGS,
        "PROVISIONING_REDIS_URL": url,
        "PROVISIONING_BROKER_URL": url,
        "PROVISIONING_PROVISIONER_URL": server.url,
        "PROVISIONING_GATEKEEPER_URL": server.url,
        "PROVISIONING_CALLING_TEST_URL": server.url,
        "PROVISIONING_LOG_FORMAT": "json",
    }
    settings = Settings.from_env(env)
    logdir = tempfile.mkdtemp(prefix="provisioning-demo-")
    processes: list[subprocess.Popen[bytes]] = []
    ok = False
    try:
        processes.append(_start(
            ["worker", "--pool", "prefork", "--concurrency", str(workers), "--loglevel",
             "WARNING", "--without-gossip", "--without-mingle", "-n", f"demo-{os.getpid()}@%h"],
            env, Path(logdir, "worker.log")))
        processes.append(_start(
            ["beat", "--loglevel", "WARNING", "-s", str(Path(logdir, "beat-schedule"))],
            env, Path(logdir, "beat.log")))
        say(f"celery worker ({workers} processes) and beat started; logs in {logdir}")
        code = _play(settings, say, as_json, timeout, processes, logdir)
        if console and code == OK:
            _console(env, settings, say, processes, logdir, port)
        ok = True
        return code
    finally:
        for process in processes:
            _stop(process)
        server.shutdown()
        if redis_server is not None:
            redis_server.stop()
        if ok and redis_url is not None:
            say(f"\nthe demo's records stay in {redact_url(redis_url)}: empty that "
                "database before running the demo on it again")


def _refuse_unless_empty(url: str) -> None:
    """UsageError unless the database at ``url`` answers and holds no key: the demo writes
    only where it cannot damage anything, and changes nothing when it refuses."""
    client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
    try:
        keys = int(client.dbsize())
    except redis.RedisError as exc:
        raise CommandFailed(f"demo: cannot reach the Redis at {redact_url(url)} (5 s "
                            f"timeout): {exc}") from None
    finally:
        client.close()
    if keys:
        raise UsageError(
            f"demo: the database at {redact_url(url)} holds {keys} key"
            f"{'' if keys == 1 else 's'}: the demo runs only on an empty database, so as to "
            "touch nothing it did not create (use another database number, or no "
            "--redis-url for an embedded Redis); nothing was changed")


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as stream:
        return subprocess.Popen(  # noqa: S603 - our own argument list, no shell
            [sys.executable, "-m", "celery", "-A", "worker.app", *args],
            env=env, stdout=stream, stderr=subprocess.STDOUT,
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _play(settings: Settings, say: Callable[[str], None], as_json: bool, timeout: float,
          processes: list[subprocess.Popen[bytes]], logdir: str) -> int:
    # The demo's own producer: its settings come from the demo's environment for the
    # processes it started, not from this process's (which it leaves as it found it).
    producer = Celery("provisioning-demo", set_as_current=False)
    producer.conf.update(celery_config(settings))
    service = build_service(settings, app=producer)

    def submit(name: str) -> None:
        lines = _example(name).read_text(encoding="utf-8").splitlines()
        report = submit_events(service, [(n, json.loads(t)) for n, t in enumerate(lines, 1)
                                         if t.strip()])
        say(f"submitted {name}: accepted {report.accepted}, refused {len(report.refused)}, "
            f"already accepted {report.duplicates}")

    def settled(check: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            for process, name in zip(processes, ("worker", "beat"), strict=False):
                if process.poll() is not None:
                    raise CommandFailed(
                        f"demo: celery {name} exited with {process.returncode} before "
                        f"{what}; its log: {Path(logdir, name + '.log')}")
            if time.monotonic() > deadline:
                raise CommandFailed(f"demo: {what} did not happen within {timeout:g} s; "
                                    f"the logs are in {logdir}")
            time.sleep(0.2)
        say(f"settled: {what}")

    def status(record_id: str) -> StatusReason | None:
        record = service.store.load(record_id)
        return None if record is None else record.status

    submit("demo-onboard.jsonl")
    # LINE settles once beat's retries are spent and it is handed to an operator (a
    # RetriesExhausted entry); in Error alone it may still have a retry to come.
    settled(lambda: all(status(r) is StatusReason.RUNNING
                        for r in (WHATSAPP, FACEBOOK, VOICE, FABRIKAM, TEAMS))
            and status(LINE) is StatusReason.ERROR
            and any(e.exception == "RetriesExhausted" and e.record_id == LINE
                    for e in service.failed.all()),
            "onboarding (Teams recovered by a beat retry, LINE in Error)")
    submit("demo-operate.jsonl")

    def operated() -> bool:
        voice = service.store.load(VOICE)
        whatsapp = service.store.load(WHATSAPP)
        return (voice is not None and voice.calling_status is AutomatedCallingStatus.SUCCESS
                and status(FACEBOOK) is StatusReason.DEPROVISIONED
                and service.store.load(FABRIKAM) is None
                and whatsapp is not None
                and whatsapp.links["msdyn_communicationprovidersettingid"] is None
                and any(e.exception == "UnknownRecord" for e in service.failed.all()))

    settled(operated, "calling test, deprovision, parent deletions")
    records = service.store.list_records()
    if as_json:
        print(json.dumps([r.to_dataverse() for r in records], indent=2, ensure_ascii=False))
        return OK
    say("\n== records (provisioning list) ==")
    say(format_records(records))
    line = service.store.load(LINE)
    if line is not None:
        say(f"\n== {LINE} (provisioning show) ==")
        say(describe_record(line))
    say(f"\n== history of {TEAMS} (Teams: transient failures, beat retry) ==")
    say(format_history(service.store.history(TEAMS)))
    say(f"\n== history of {FABRIKAM} (Fabrikam: deleted by a Cascade) ==")
    say(format_history(service.store.history(FABRIKAM)))
    say("\n== failed tasks ==")
    for entry in service.failed.all():
        say(f"{entry.id}  {entry.task}  {entry.exception}: {entry.message}")
    return 0




def _console(env: dict[str, str], settings: Settings, say: Callable[[str], None],
             processes: list[subprocess.Popen[bytes]], logdir: str, port: int | None) -> None:
    """``provisioning serve`` over the demo's Redis (stopped with the other processes),
    a one-time login link printed, then wait for Ctrl-C (or a process to end)."""
    port = port or free_port()
    log = Path(logdir, "serve.log")
    with open(log, "wb") as stream:
        server = subprocess.Popen(  # noqa: S603 - our own argument list, no shell
            [sys.executable, "-c", "import sys; from worker.cli import main; sys.exit(main())",
             "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=stream, stderr=subprocess.STDOUT)
    processes.append(server)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + CONSOLE_WAIT
    while not _answers(f"{url}/healthz"):
        if server.poll() is not None or time.monotonic() > deadline:
            raise CommandFailed(f"demo: the console's server did not start on port {port}; "
                                f"its log: {log}")
        time.sleep(0.2)
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        code = OneTimeLogins(client, Keys(settings.key_prefix)).issue("demo", Role.OPERATOR)
    finally:
        client.close()
    say(f"\nthe operator console is at {url}/ui/ ; log in once with this link (an operator "
        f"session named demo; the link works once, within 10 minutes):\n"
        f"  {url}/ui/login/once?code={code}\n"
        f"or with a token: PROVISIONING_REDIS_URL={redact_url(settings.redis_url)} "
        f"provisioning token create --name you --role operator\n"
        "everything keeps running; Ctrl-C stops it all")
    # Ctrl-C or SIGTERM ends the wait (also where SIGINT was ignored: a shell's `&`); the
    # caller then stops every process by its pid.
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while all(process.poll() is None for process in processes):
            if stop.wait(0.5):
                say("stopping")
                return
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    ended = next(p for p in processes if p.poll() is not None)
    raise CommandFailed(f"demo: a process it started (pid {ended.pid}) exited with "
                        f"{ended.returncode}; the logs are in {logdir}")


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def cmd_demo(args: argparse.Namespace) -> int:
    quiet_logs()
    return run_demo(workers=args.workers, as_json=args.json, timeout=args.timeout,
                    redis_url=args.redis_url, console=args.console, port=args.port)
