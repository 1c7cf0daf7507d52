"""Beat's heartbeat: proof that ``celery beat``'s loop runs and reaches Redis.

Beat writes it itself, not through a task (``worker.beat.HeartbeatScheduler`` calls
:class:`BeatHeartbeat` on every tick): ``<prefix>:beat:heartbeat`` is set every few seconds
with a time to live of PROVISIONING_HEALTH_BEAT_MAX_AGE, so the heartbeat proves beat is
alive whether or not a worker is free, and a stopped beat's key expires by itself. Its age
is read from the key's remaining time to live, so the clocks of beat's host and of the
checking host are never compared.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
import structlog

from worker.keys import Keys
from worker.store.translate import translated

log = structlog.get_logger("worker")


@dataclass(frozen=True)
class Heartbeat:
    """The last heartbeat beat wrote: from where, and how long ago."""

    host: str
    pid: int
    age: float


def write_heartbeat(client: redis.Redis, keys: Keys, max_age: float) -> None:
    """Set the heartbeat key, expiring after ``max_age`` seconds."""
    value = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "at": time.time()})
    client.set(keys.beat_heartbeat, value, px=max(1, int(max_age * 1000)))


def read_heartbeat(client: redis.Redis, keys: Keys, max_age: float) -> Heartbeat | None:
    """The live heartbeat, or None when beat wrote none within ``max_age`` seconds."""
    with translated():
        pipe = client.pipeline(transaction=False)
        pipe.get(keys.beat_heartbeat)
        pipe.pttl(keys.beat_heartbeat)
        raw, remaining = pipe.execute()
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
    """Writes the heartbeat when it is due; what the beat scheduler calls on every tick.

    ``connect`` makes the Redis client on first use (beat must start, and keep scheduling,
    while Redis is down: the health check is what reports it)."""

    def __init__(self, keys: Keys, max_age: float,
                 connect: Callable[[], redis.Redis]) -> None:
        self.keys = keys
        self.max_age = max_age
        self.interval = heartbeat_interval(max_age)
        self._connect = connect
        self._client: redis.Redis | None = None
        self._next = 0.0

    def __call__(self) -> float:
        """Write the heartbeat if it is due; return the seconds until the next one."""
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.interval
            try:
                if self._client is None:
                    self._client = self._connect()
                write_heartbeat(self._client, self.keys, self.max_age)
            except redis.RedisError as exc:  # beat goes on scheduling; the check will fail
                log.warning("beat_heartbeat_failed", error=f"{type(exc).__name__}: {exc}")
        return max(0.0, self._next - now)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
