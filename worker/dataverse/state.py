"""What the mirror keeps between runs: its lock, the rows' etags, and its status.

``MirrorState`` is a port with a Redis implementation and an in-memory twin (for unit
tests). Keys (``worker.keys.Keys``): ``<p>:dataverse:lock`` the single consumer's lock
(``SET NX PX``), ``<p>:dataverse:etags`` hash record id -> the row's etag in Dataverse,
``<p>:dataverse:status`` hash of the status fields (``STATUS_FIELDS``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, cast

import redis

from worker.keys import Keys
from worker.store.translate import translated as _translated

# The status hash: what `provisioning dataverse status` prints.
STATUS_FIELDS = (
    "last_success_at",  # ISO time of the last entry sent
    "last_success",  # JSON {op, record_id, version, event_id}
    "last_error_at",
    "last_error",  # JSON {code, message, status, kind, op, record_id, version}
    "paused_until",  # epoch seconds: no request before then (429 or backoff)
    "pause_reason",
    "failures",  # consecutive failed runs (backoff)
    "sent",  # entries sent, ever
    "conflicts",  # 412s (or missing rows) reconciled, ever
    "pace_tat",  # the pacer's theoretical arrival time (epoch seconds)
)

# Compare-and-delete and compare-and-extend: only the owner may release or renew the lock.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class MirrorState(Protocol):
    def acquire(self, owner: str, seconds: float) -> bool:
        """Take the consumer lock unless someone holds it; it expires after ``seconds``."""
        ...

    def renew(self, owner: str, seconds: float) -> bool:
        """Extend the lock when ``owner`` still holds it; False when it was lost."""
        ...

    def release(self, owner: str) -> None: ...

    def etag(self, record_id: str) -> str | None: ...

    def set_etag(self, record_id: str, etag: str) -> None: ...

    def forget_etag(self, record_id: str) -> None: ...

    def status(self) -> dict[str, str]: ...

    def update_status(self, values: Mapping[str, str | None]) -> None:
        """Set fields (None deletes one)."""
        ...

    def count(self, name: str, by: int = 1) -> None:
        """Add ``by`` to a counter field."""
        ...


class RedisMirrorState:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW)

    def acquire(self, owner: str, seconds: float) -> bool:
        with _translated():
            return bool(self.client.set(self.keys.dataverse_lock, owner, nx=True,
                                        px=int(seconds * 1000)))

    def renew(self, owner: str, seconds: float) -> bool:
        with _translated():
            return bool(self._renew(keys=[self.keys.dataverse_lock],
                                    args=[owner, int(seconds * 1000)]))

    def release(self, owner: str) -> None:
        with _translated():
            self._release(keys=[self.keys.dataverse_lock], args=[owner])

    def etag(self, record_id: str) -> str | None:
        with _translated():
            return cast(str | None, self.client.hget(self.keys.dataverse_etags, record_id))

    def set_etag(self, record_id: str, etag: str) -> None:
        with _translated():
            self.client.hset(self.keys.dataverse_etags, record_id, etag)

    def forget_etag(self, record_id: str) -> None:
        with _translated():
            self.client.hdel(self.keys.dataverse_etags, record_id)

    def status(self) -> dict[str, str]:
        with _translated():
            return dict(cast(dict[str, str], self.client.hgetall(self.keys.dataverse_status)))

    def update_status(self, values: Mapping[str, str | None]) -> None:
        keep = {k: v for k, v in values.items() if v is not None}
        drop = [k for k, v in values.items() if v is None]
        with _translated():
            pipe = self.client.pipeline(transaction=True)
            if keep:
                pipe.hset(self.keys.dataverse_status, mapping=cast(dict[Any, Any], keep))
            if drop:
                pipe.hdel(self.keys.dataverse_status, *drop)
            pipe.execute()

    def count(self, name: str, by: int = 1) -> None:
        with _translated():
            self.client.hincrby(self.keys.dataverse_status, name, by)


class MemoryMirrorState:
    """The in-memory twin; the lock's expiry follows ``clock``."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._owner: tuple[str, float] | None = None
        self._etags: dict[str, str] = {}
        self._status: dict[str, str] = {}

    def _holder(self) -> str | None:
        if self._owner is None or self._owner[1] <= self._clock():
            return None
        return self._owner[0]

    def acquire(self, owner: str, seconds: float) -> bool:
        with self._lock:
            if self._holder() is not None:
                return False
            self._owner = (owner, self._clock() + seconds)
            return True

    def renew(self, owner: str, seconds: float) -> bool:
        with self._lock:
            if self._holder() != owner:
                return False
            self._owner = (owner, self._clock() + seconds)
            return True

    def release(self, owner: str) -> None:
        with self._lock:
            if self._holder() == owner:
                self._owner = None

    def etag(self, record_id: str) -> str | None:
        with self._lock:
            return self._etags.get(record_id)

    def set_etag(self, record_id: str, etag: str) -> None:
        with self._lock:
            self._etags[record_id] = etag

    def forget_etag(self, record_id: str) -> None:
        with self._lock:
            self._etags.pop(record_id, None)

    def status(self) -> dict[str, str]:
        with self._lock:
            return dict(self._status)

    def update_status(self, values: Mapping[str, str | None]) -> None:
        with self._lock:
            for key, value in values.items():
                if value is None:
                    self._status.pop(key, None)
                else:
                    self._status[key] = value

    def count(self, name: str, by: int = 1) -> None:
        with self._lock:
            self._status[name] = str(int(self._status.get(name, "0")) + by)

