"""The failed-task store: every task that failed for good, kept for an operator.

An entry holds the whole original message, so it can be replayed through the normal
path. The same event failing again updates its entry (``attempts`` + 1) instead of
adding another. Redis: ``<b>f:<id>`` strings and the ``<b>failed`` zset by last failure
time, in the shard of the entry id (worker/keys.py: one hash tag, so an entry and its
zset are in one cluster slot); ``MemoryFailedStore`` is the twin. The audit log is one
list, ``<p>:audit``, trimmed by beat (``trim_audit``).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol, cast

import redis

from statemachine import parse_time
from worker.errors import StoreError
from worker.keys import Keys, dumps
from worker.store.translate import translated


@dataclass(frozen=True, slots=True)
class FailedTask:
    """One failed-task entry (the JSON of ``provisioning failed list --json``)."""

    id: str
    task: str
    event_id: str | None
    event_type: str | None
    record_id: str | None
    exception: str
    message: str
    traceback: str = ""
    attempts: int = 1
    first_failed_at: str = ""
    last_failed_at: str = ""
    hostname: str = ""
    reasons: tuple[str, ...] = ()
    body: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["reasons"] = list(self.reasons)
        data["body"] = dict(self.body)
        return data

    def summary_json(self) -> dict[str, Any]:
        """The fields of ``failed list --json`` (SPEC §5), plus the reasons."""
        data = self.to_json()
        for key in ("traceback", "body"):
            data.pop(key)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FailedTask:
        values = dict(data)
        values["reasons"] = tuple(values.get("reasons") or ())
        values["body"] = dict(values.get("body") or {})
        return cls(**values)


def entry_id(task: str, event_id: str | None, body: Mapping[str, Any]) -> str:
    """A short stable id: the same event failing in the same task keeps one entry."""
    basis = f"{task}\0{event_id}" if event_id else f"{task}\0{dumps(body)}"
    # surrogatepass: an invalid event id may hold a lone surrogate; it still needs an id.
    return hashlib.sha256(basis.encode("utf-8", "surrogatepass")).hexdigest()[:12]


class FailedStore(Protocol):
    def record(self, entry: FailedTask) -> FailedTask:
        """Add ``entry``, or update the entry with its id (attempts + 1, last failure)."""
        ...

    def get(self, entry_id: str) -> FailedTask | None: ...

    def all(self) -> list[FailedTask]:
        """Every entry, oldest last failure first."""
        ...

    def newest(self, limit: int) -> list[FailedTask]:
        """The ``limit`` entries that failed last, newest first (one page, no scan)."""
        ...

    def remove(self, entry_id: str) -> bool: ...

    def count(self) -> int: ...

    def append_audit(self, line: Mapping[str, Any]) -> None:
        """Append one operator action to the audit log (kept, never trimmed silently)."""
        ...

    def audit(self, limit: int = 0) -> list[dict[str, Any]]:
        """The audit log, oldest first; the last ``limit`` lines when limit > 0."""
        ...

    def trim_audit(self, before: datetime, keep: int) -> int:
        """Drop the audit lines written before ``before`` (their ``at``), then the oldest
        beyond ``keep``; returns how many went."""
        ...


def _merge(old: FailedTask | None, new: FailedTask) -> FailedTask:
    if old is None:
        return new
    return replace(new, attempts=old.attempts + new.attempts,
                   first_failed_at=old.first_failed_at or new.first_failed_at)


class MemoryFailedStore:
    def __init__(self) -> None:
        self._entries: dict[str, FailedTask] = {}
        self._audit: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def record(self, entry: FailedTask) -> FailedTask:
        with self._lock:
            merged = _merge(self._entries.get(entry.id), entry)
            self._entries[entry.id] = merged
            return merged

    def get(self, entry_id: str) -> FailedTask | None:
        with self._lock:
            return self._entries.get(entry_id)

    def all(self) -> list[FailedTask]:
        with self._lock:
            return sorted(self._entries.values(),
                          key=lambda e: (_score(e.last_failed_at), e.id))

    def newest(self, limit: int) -> list[FailedTask]:
        return list(reversed(self.all()))[:max(0, limit)]

    def remove(self, entry_id: str) -> bool:
        with self._lock:
            return self._entries.pop(entry_id, None) is not None

    def count(self) -> int:
        with self._lock:
            return len(self._entries)

    def append_audit(self, line: Mapping[str, Any]) -> None:
        with self._lock:
            self._audit.append(dict(line))

    def audit(self, limit: int = 0) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(line) for line in (self._audit[-limit:] if limit > 0 else self._audit)]

    def trim_audit(self, before: datetime, keep: int) -> int:
        with self._lock:
            old = _leading_older(self._audit, before)
            over = max(old, len(self._audit) - keep)
            del self._audit[:over]
            return over


class RedisFailedStore:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    def record(self, entry: FailedTask) -> FailedTask:
        key = self.keys.failed_entry(entry.id)
        with translated():
            # WATCH/MULTI with a bounded retry: two workers failing the same event at
            # once both count their attempt.
            for _ in range(10):
                with self.client.pipeline(transaction=True) as pipe:
                    try:
                        pipe.watch(key)  # type: ignore[no-untyped-call]
                        raw = cast(str | None, pipe.get(key))
                        old = FailedTask.from_json(json.loads(raw)) if raw else None
                        merged = _merge(old, entry)
                        pipe.multi()
                        pipe.set(key, dumps(merged.to_json()))
                        pipe.zadd(self.keys.failed_of(entry.id),
                                  {entry.id: _score(merged.last_failed_at)})
                        pipe.execute()
                        return merged
                    except redis.WatchError:
                        continue
        raise StoreError(f"failed-task entry {entry.id} kept changing; not recorded")

    def get(self, entry_id: str) -> FailedTask | None:
        with translated():
            raw = cast(str | None, self.client.get(self.keys.failed_entry(entry_id)))
        return FailedTask.from_json(json.loads(raw)) if raw else None

    def all(self) -> list[FailedTask]:
        return self._ranked(lambda pipe, key: pipe.zrange(key, 0, -1, withscores=True))

    def newest(self, limit: int) -> list[FailedTask]:
        if limit <= 0:
            return []
        # Each shard's ``limit`` newest, merged: the ``limit`` newest of all.
        return self._ranked(
            lambda pipe, key: pipe.zrevrange(key, 0, limit - 1, withscores=True),
            newest_first=True, limit=limit)

    def _ranked(self, ask: Callable[[Any, str], object], *, newest_first: bool = False,
                limit: int | None = None) -> list[FailedTask]:
        """The entries ``ask`` names in each shard's time index, merged by last failure."""
        with translated():
            pipe = self.client.pipeline(transaction=False)
            for shard in range(self.keys.shards):
                ask(pipe, self.keys.failed(shard))
            scored = sorted(((float(score), str(member)) for answer in pipe.execute()
                             for member, score in answer), reverse=newest_first)[:limit]
            if not scored:
                return []
            pipe = self.client.pipeline(transaction=False)
            for _, entry_id in scored:
                pipe.get(self.keys.failed_entry(entry_id))
            rows = cast(list[str | None], pipe.execute())
        return [FailedTask.from_json(json.loads(row)) for row in rows if row]

    def remove(self, entry_id: str) -> bool:
        with translated():
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(self.keys.failed_entry(entry_id))
            pipe.zrem(self.keys.failed_of(entry_id), entry_id)
            deleted, _ = pipe.execute()
        return bool(deleted)

    def count(self) -> int:
        with translated():
            pipe = self.client.pipeline(transaction=False)
            for shard in range(self.keys.shards):
                pipe.zcard(self.keys.failed(shard))
            return sum(int(size) for size in pipe.execute())

    def append_audit(self, line: Mapping[str, Any]) -> None:
        with translated():
            self.client.rpush(self.keys.audit, dumps(dict(line)))

    def audit(self, limit: int = 0) -> list[dict[str, Any]]:
        with translated():
            rows = cast(list[str], self.client.lrange(
                self.keys.audit, -limit if limit > 0 else 0, -1))
        return [json.loads(row) for row in rows]

    def trim_audit(self, before: datetime, keep: int) -> int:
        """Lines are appended in time order: the old ones are a prefix of the list. LTRIM
        from the head only, so lines appended meanwhile stay."""
        try:
            size = int(self.client.llen(self.keys.audit))
            old = 0
            while old < size:
                chunk = cast(list[str], self.client.lrange(self.keys.audit, old, old + 499))
                older = _leading_older([json.loads(row) for row in chunk], before)
                old += older
                if older < len(chunk) or not chunk:
                    break
            over = max(old, size - keep)
            if over:
                self.client.ltrim(self.keys.audit, over, -1)
        except redis.RedisError as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}") from exc
        return over


def _leading_older(lines: list[dict[str, Any]], before: datetime) -> int:
    """How many of the first lines were written before ``before`` (a line without a
    readable ``at`` counts as old)."""
    count = 0
    for line in lines:
        at = line.get("at")
        try:
            if isinstance(at, str) and parse_time(at) >= before:
                break
        except ValueError:
            pass
        count += 1
    return count


def _score(timestamp: str) -> float:
    return parse_time(timestamp).timestamp() if timestamp else 0.0
