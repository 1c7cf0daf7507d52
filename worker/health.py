"""Health: the checks of ``provisioning health``, and beat's heartbeat.

Checks, one line each (for probes and for humans)::

    store   the record store answers PING
    broker  a connection to the Celery broker can be opened
    beat    beat's heartbeat is younger than PROVISIONING_HEALTH_BEAT_MAX_AGE
    failed_tasks  the failed-task store holds at most PROVISIONING_HEALTH_FAILED_MAX entries

Beat's heartbeat is written by beat itself, not by a task: the app's ``beat_scheduler`` is
:class:`HeartbeatScheduler`, Celery's default scheduler that also sets
``<prefix>:beat:heartbeat`` on its ticks (every few seconds) with a time to live of
PROVISIONING_HEALTH_BEAT_MAX_AGE. So the heartbeat proves that beat's loop runs and reaches
Redis, whether or not a worker is free, and a stopped beat's key expires by itself. Its age
is read from the key's remaining time to live, so the clocks of beat's host and of the
checking host are never compared.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
import structlog
from celery.beat import PersistentScheduler

from worker.counts import StoreCounts, probe_client
from worker.errors import StoreError
from worker.keys import Keys
from worker.settings import Settings, redact_url

log = structlog.get_logger("worker")

CHECKS = ("store", "broker", "beat", "failed_tasks", "outbox")


def heartbeat_key(keys: Keys) -> str:
    return f"{keys.prefix}:beat:heartbeat"


@dataclass(frozen=True)
class Heartbeat:
    """The last heartbeat beat wrote: from where, and how long ago."""

    host: str
    pid: int
    age: float


def write_heartbeat(client: redis.Redis, keys: Keys, max_age: float) -> None:
    """Set the heartbeat key, expiring after ``max_age`` seconds."""
    value = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "at": time.time()})
    client.set(heartbeat_key(keys), value, px=max(1, int(max_age * 1000)))


def read_heartbeat(client: redis.Redis, keys: Keys, max_age: float) -> Heartbeat | None:
    """The live heartbeat, or None when beat wrote none within ``max_age`` seconds."""
    try:
        pipe = client.pipeline(transaction=False)
        pipe.get(heartbeat_key(keys))
        pipe.pttl(heartbeat_key(keys))
        raw, remaining = pipe.execute()
    except redis.RedisError as exc:
        raise StoreError(f"{type(exc).__name__}: {exc}") from exc
    if raw is None or remaining is None or remaining < 0:
        return None
    try:
        value = json.loads(raw)
        host, pid = str(value["host"]), int(value["pid"])
    except (ValueError, KeyError, TypeError):
        host, pid = "?", 0
    return Heartbeat(host=host, pid=pid, age=max(0.0, max_age - remaining / 1000))


def heartbeat_interval(max_age: float) -> float:
    """How often beat writes: often enough that one late write never looks like a death."""
    return max(0.5, min(10.0, max_age / 4))


class BeatHeartbeat:
    """Writes the heartbeat when it is due; what HeartbeatScheduler calls on every tick."""

    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.keys = Keys(settings.key_prefix, settings.store_shards)
        self.interval = heartbeat_interval(settings.health_beat_max_age)
        self._client = client
        self._next = 0.0

    def __call__(self) -> float:
        """Write the heartbeat if it is due; return the seconds until the next one."""
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.interval
            try:
                if self._client is None:
                    self._client = probe_client(self.settings)
                write_heartbeat(self._client, self.keys, self.settings.health_beat_max_age)
            except redis.RedisError as exc:  # beat goes on scheduling; the check will fail
                log.warning("beat_heartbeat_failed", error=f"{type(exc).__name__}: {exc}")
        return max(0.0, self._next - now)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


class HeartbeatScheduler(PersistentScheduler):
    """Celery's default beat scheduler, plus the heartbeat (``beat_scheduler`` in app.py)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from worker import bootstrap

        self._heartbeat = BeatHeartbeat(bootstrap.current_settings())
        super().__init__(*args, **kwargs)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """One scheduler tick, then the heartbeat; sleep no longer than its interval."""
        delay = super().tick(*args, **kwargs)
        return min(delay, self._heartbeat())

    def close(self) -> None:
        super().close()
        self._heartbeat.close()


# -- the checks ---------------------------------------------------------------------------


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
    from urllib.parse import unquote, urlsplit

    for url in (settings.redis_url, settings.broker_url, settings.provisioner_url,
                settings.gatekeeper_url, settings.calling_test_url):
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


def run_checks(settings: Settings, names: Sequence[str] = CHECKS, *,
               client: redis.Redis | None = None,
               broker_check: Callable[[Settings], str] | None = None) -> list[Check]:
    """Run the named checks, in CHECKS order. Never raises: a failure is a failing Check.
    When the store is unreachable the checks that read it fail without trying again.
    ``client`` and ``broker_check`` replace the real store client and broker check (tests)."""
    own_client = client is None
    client = probe_client(settings) if client is None else client
    counts = StoreCounts(client, Keys(settings.key_prefix, settings.store_shards))
    probes: dict[str, Callable[[], tuple[bool, str]]] = {
        "store": lambda: (True, f"PING {counts.ping() * 1000:.1f} ms "
                                f"({redact_url(settings.redis_url)})"),
        "broker": lambda: (True, (broker_check or check_broker)(settings)),
        "beat": lambda: _beat(client, settings),
        "failed_tasks": lambda: _failed(counts, settings),
        "outbox": lambda: _outbox(counts, settings),
    }
    where = {"store": redact_url(settings.redis_url), "broker": redact_url(settings.broker)}
    store_error: str | None = None
    results: list[Check] = []
    try:
        for name in (n for n in CHECKS if n in names):
            if name in ("beat", "failed_tasks", "outbox") and store_error is not None:
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
            if not ok and name == "store":
                store_error = detail
            if not ok and name in where:
                detail = f"{detail} ({where[name]})"
            results.append(Check(name, ok, detail, time.perf_counter() - started))
    finally:
        if own_client:
            client.close()
    return results


def check_broker(settings: Settings) -> str:
    """Open (and close) a connection to the broker; the detail says where, redacted."""
    from kombu import Connection

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


def _outbox(counts: StoreCounts, settings: Settings) -> tuple[bool, str]:
    """With the mirror on, a full outbox fails (the consumer is not keeping up; nothing is
    dropped). With it off, beat trims it (worker/retention.py)."""
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
