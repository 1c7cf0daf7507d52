"""Health: the checks of ``provisioning health``.

Checks, one line each (for probes and for humans)::

    store   the record store answers PING and holds this release's format (or none yet)
    broker  a connection to the Celery broker can be opened
    beat    beat's heartbeat is younger than PROVISIONING_HEALTH_BEAT_MAX_AGE
    failed_tasks  the failed-task store holds at most PROVISIONING_HEALTH_FAILED_MAX entries
    circuits  no worker process has a backend's circuit open (worker/backends/breaker.py)
    outbox  with the mirror on, the outbox is under PROVISIONING_OUTBOX_MAX_ENTRIES

Beat's heartbeat is written by beat itself (worker/ops/heartbeat.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from kombu import Connection

from worker.errors import ConfigurationError, StoreError
from worker.keys import Keys
from worker.ops.heartbeat import read_heartbeat
from worker.settings import Settings, redact_url
from worker.store.circuits import CircuitBoard, CircuitEntry
from worker.store.counts import StoreCounts
from worker.store.stamp import ensure as ensure_format

CHECKS = ("store", "broker", "beat", "failed_tasks", "circuits", "outbox")


@dataclass(frozen=True)
class Check:
    """The result of one check."""

    name: str
    ok: bool
    detail: str
    seconds: float = 0.0

    def line(self) -> str:
        return f"{self.name:<12} {'ok' if self.ok else 'FAIL':<4}  {self.detail}"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail,
                "seconds": round(self.seconds, 6)}


def scrub(text: str, settings: Settings) -> str:
    """``text`` with every password of a configured URL replaced (errors may quote URLs)."""
    backends = settings.backends
    for url in (settings.redis_url, settings.broker_url, backends.provisioner_url,
                backends.gatekeeper_url, backends.calling_test_url):
        if not url:
            continue
        redacted = redact_url(url)
        if redacted is not None and redacted != url:
            text = text.replace(url, redacted)
        password = urlsplit(url).password
        if password:
            for secret in {password, unquote(password)}:
                text = text.replace(secret, "***")
    return text


def run_checks(settings: Settings, client: redis.Redis, names: Sequence[str] = CHECKS, *,
               broker_check: Callable[[Settings], str] | None = None) -> list[Check]:
    """Run the named checks, in CHECKS order, reading the store through ``client`` (a
    probe client: short timeouts, no retries). Never raises: a failure is a failing Check.
    When the store is unreachable the checks that read it fail without trying again.
    ``broker_check`` replaces the real broker check (tests)."""
    counts = StoreCounts(client, Keys(settings.key_prefix, settings.store_shards))
    probes: dict[str, Callable[[], tuple[bool, str]]] = {
        "store": lambda: _store(client, counts, settings),
        "broker": lambda: (True, (broker_check or check_broker)(settings)),
        "beat": lambda: _beat(client, settings),
        "failed_tasks": lambda: _failed(counts, settings),
        "circuits": lambda: _circuits(CircuitBoard(
            client, Keys(settings.key_prefix, settings.store_shards))),
        "outbox": lambda: _outbox(counts, settings),
    }
    where = {"store": redact_url(settings.redis_url), "broker": redact_url(settings.broker)}
    store_error: str | None = None
    results: list[Check] = []
    for name in (n for n in CHECKS if n in names):
        if name in ("beat", "failed_tasks", "circuits", "outbox") and store_error is not None:
            results.append(Check(name, False, f"store unreachable: {store_error}"))
            continue
        started = time.perf_counter()
        try:
            ok, detail = probes[name]()
        except StoreError as exc:
            ok, detail = False, str(exc)
        except Exception as exc:  # noqa: BLE001 - every failure is a failing line
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        detail = scrub(detail, settings)
        if not ok and name == "store" and not detail.startswith(FORMAT_REFUSED):
            store_error = detail
        if not ok and name in where:
            detail = f"{detail} ({where[name]})"
        results.append(Check(name, ok, detail, time.perf_counter() - started))
    return results


def check_broker(settings: Settings) -> str:
    """Open (and close) a connection to the broker; the detail says where, redacted."""
    started = time.perf_counter()
    options = {"socket_timeout": settings.health_timeout,
               "socket_connect_timeout": settings.health_timeout}
    with Connection(settings.broker, connect_timeout=settings.health_timeout,
                    transport_options=options) as connection:
        # max_retries=0: one attempt; a probe must not wait out kombu's retry intervals.
        connection.ensure_connection(max_retries=0,
                                      timeout=math.ceil(settings.health_timeout))
    return (f"connected in {(time.perf_counter() - started) * 1000:.1f} ms "
            f"({redact_url(settings.broker)})")


FORMAT_REFUSED = "format: "


def _store(client: redis.Redis, counts: StoreCounts, settings: Settings) -> tuple[bool, str]:
    """The store answers, and holds the format this release reads (an unmigrated v1 store
    fails here: workers refuse it at start, docs/store.md)."""
    rtt = counts.ping()
    try:
        ensure_format(client, Keys(settings.key_prefix, settings.store_shards), stamp=False)
    except ConfigurationError as exc:
        return False, FORMAT_REFUSED + str(exc)
    return True, f"PING {rtt * 1000:.1f} ms ({redact_url(settings.redis_url)})"


def _beat(client: redis.Redis, settings: Settings) -> tuple[bool, str]:
    max_age = settings.health_beat_max_age
    beat = read_heartbeat(client, Keys(settings.key_prefix, settings.store_shards), max_age)
    if beat is None:
        return False, f"no heartbeat in the last {max_age:g} s (is one celery beat running?)"
    return True, f"heartbeat {beat.age:.1f} s ago from {beat.host} pid {beat.pid}"


def _failed(counts: StoreCounts, settings: Settings) -> tuple[bool, str]:
    size = counts.failed_tasks()
    limit = settings.health_failed_max
    entries = f"{size} entr{'y' if size == 1 else 'ies'}"
    if size > limit:
        return False, f"{entries}, more than {limit} (see: provisioning failed list)"
    return True, f"{entries} (at most {limit})"


def _circuits(board: CircuitBoard) -> tuple[bool, str]:
    """Fails while any process holds a backend's circuit open (or half-open): the backend
    is failing and the steps that call it wait (docs/operations.md)."""
    entries = board.read()
    if not entries:
        return True, "every backend's circuit is closed"
    now = time.time()
    by_backend: dict[str, list[CircuitEntry]] = {}
    for entry in entries:
        by_backend.setdefault(entry.backend, []).append(entry)
    parts = []
    for backend, held in sorted(by_backend.items()):
        oldest = min(entry.since for entry in held)
        states = sorted({entry.state for entry in held})
        parts.append(f"{backend} {'/'.join(states)} in {len(held)} "
                     f"process{'es' if len(held) > 1 else ''} for {now - oldest:.0f} s "
                     f"(last failure: {held[-1].reason})")
    return False, "; ".join(parts) + " - steps calling it wait"


def _outbox(counts: StoreCounts, settings: Settings) -> tuple[bool, str]:
    """With the mirror on, a full outbox fails (the consumer is not keeping up; nothing is
    dropped). With it off, beat trims it (worker/store/retention.py)."""
    size = counts.outbox_entries()
    cap = settings.outbox_max_entries
    if not settings.dataverse_url:
        return True, f"mirror off; {size} entries (trimmed to {cap} by beat)"
    if size >= cap:
        return False, (f"{size} entries, the cap PROVISIONING_OUTBOX_MAX_ENTRIES={cap}: the "
                       "mirror is not keeping up (see: provisioning dataverse status)")
    return True, f"{size} entries (cap {cap})"


def summary(checks: Iterable[Check]) -> dict[str, Any]:
    """The ``--json`` form: overall ``ok`` and every check."""
    listed = list(checks)
    return {"ok": all(c.ok for c in listed), "checks": [c.to_json() for c in listed]}
