"""``provisioning migrate``: convert a v1 store (one Redis, the keys before store v2) to
format 2 in place, with the workers stopped (docs/store.md).

Resumable: each record moves in one MULTI/EXEC transaction that writes its v2 keys and
deletes its v1 keys, so a migration stopped at any point (Ctrl-C, a crash, Redis
restarting) is run again and goes on with the records left; the outbox moves in chunks
the same way, each failed-task entry in one transaction. The v1 index sets go last, and
``<prefix>:meta`` is stamped format 2 only then: until it is, workers refuse to start
(``RedisStateStore.ensure_format``).

What each v1 piece becomes:
* ``record:<id>`` + ``history:<id>``: the record list (worker/store/codec.py); a record whose
  last history entry is an applied ``delete`` is a tombstone dated by that entry (the
  deleted-record retention runs from then); history entries repacked, in order.
* ``accepted:<id>`` / ``applied:<id>``: dedupe marks dated by the migration (v1 kept no
  times), so each is remembered one window from the migration.
* ``inbox:<id>`` (as is), ``pending``, ``retries``: to the record's shard.
* index sets and links: rebuilt from each record (as a commit writes them).
* ``outbox``: each entry to its record's shard outbox, in order.
* ``failed:<entry>`` and the ``failed`` zset: to the entry's shard.
* ``api:token:<id>`` and ``api:tokens``: renamed under the ``{api}`` hash tag.
* ``audit``, ``deliveries:*``, ``dataverse:*``, ``beat:heartbeat``: same names in v2,
  left as they are.
* ``lease:*`` / ``claimed:*`` / ``rate:*`` / ``circuit:*``: dropped (they expire; no
  worker runs).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import redis

from statemachine import HistoryEntry, Result
from worker.errors import ConfigurationError
from worker.keys import Keys, decode_record
from worker.store import codec
from worker.store.redis import inbox_item

PER_RECORD = ("record", "history", "inbox", "accepted", "applied")
_LINK_ADD = (Path(__file__).parent / "lua" / "link_add.lua").read_text(encoding="utf-8")
OUTBOX_CHUNK = 500


@dataclass
class MigrationReport:
    """What a migration moved (or, dry, would move)."""

    dry_run: bool
    records: int = 0
    deleted_records: int = 0
    history_entries: int = 0
    inbox_events: int = 0
    marks: int = 0
    pending: int = 0
    retries: int = 0
    outbox_entries: int = 0
    failed_entries: int = 0
    api_tokens: int = 0
    audit_lines: int = 0
    already_v2: bool = False
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class V1Keys:
    """The v1 key names (worker/keys.py before store v2)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def of(self, kind: str, record_id: str) -> str:
        return f"{self.prefix}:{kind}:{record_id}"

    @property
    def pending(self) -> str:
        return f"{self.prefix}:pending"

    @property
    def retries(self) -> str:
        return f"{self.prefix}:retries"

    @property
    def outbox(self) -> str:
        return f"{self.prefix}:outbox"

    @property
    def failed(self) -> str:
        return f"{self.prefix}:failed"

    def api_token(self, token_id: str) -> str:
        return f"{self.prefix}:api:token:{token_id}"

    @property
    def api_tokens(self) -> str:
        return f"{self.prefix}:api:tokens"

    @property
    def all_records(self) -> str:
        return f"{self.prefix}:idx:all"


def _scan(client: redis.Redis, pattern: str) -> Iterable[str]:
    return cast(Iterable[str], client.scan_iter(match=pattern, count=1000))


def _record_ids(client: redis.Redis, v1: V1Keys) -> list[str]:
    ids: set[str] = set()
    for kind in PER_RECORD:
        head = f"{v1.prefix}:{kind}:"
        ids.update(key[len(head):] for key in _scan(client, head + "*"))
    return sorted(ids)


def _deleted_at(entries: list[HistoryEntry]) -> float | None:
    """When the record was deleted: its last applied entry is a ``delete``."""
    applied = [e for e in entries if e.outcome is Result.APPLIED]
    if applied and applied[-1].trigger == "delete":
        return applied[-1].at.timestamp()
    return None


def migrate(client: redis.Redis, keys: Keys, *, dry_run: bool = False,
            now: Callable[[], float] = time.time,
            progress: Callable[[MigrationReport], None] | None = None) -> MigrationReport:
    """Convert the v1 store under ``keys.prefix`` on this (single) Redis to format 2."""
    report = MigrationReport(dry_run=dry_run)
    v1 = V1Keys(keys.prefix)
    meta = cast(dict[str, str], client.hgetall(keys.meta))
    if meta.get("format") == str(codec.FORMAT):
        report.already_v2 = True
        return report
    leases = [key for key in _scan(client, f"{v1.prefix}:lease:*") if client.pttl(key) != -2]
    if leases:
        raise ConfigurationError(
            f"migrate: {len(leases)} record leases are held ({leases[0]}): stop every "
            "worker (and beat) first, and wait until the leases expire")
    stamp = int(now())
    for record_id in _record_ids(client, v1):
        _move_record(client, keys, v1, record_id, stamp, report, dry_run)
        if progress is not None and report.records % 1000 == 0:
            progress(report)
    _move_outbox(client, keys, v1, report, dry_run)
    _move_failed(client, keys, v1, report, dry_run)
    _move_tokens(client, keys, v1, report, dry_run)
    report.audit_lines = int(client.llen(keys.audit))
    if not dry_run:
        stale = [*_scan(client, f"{v1.prefix}:idx:*"), *_scan(client, f"{v1.prefix}:claimed:*"),
                 *_scan(client, f"{v1.prefix}:rate:*"), *_scan(client, f"{v1.prefix}:circuit:*"),
                 v1.pending, v1.retries]
        for start in range(0, len(stale), 500):
            client.delete(*stale[start:start + 500])
        client.hset(keys.meta, mapping={"format": str(codec.FORMAT),
                                        "shards": str(keys.shards)})
    return report


def _marks(accepted: set[str], applied: set[str], stamp: int) -> dict[str, int]:
    """The dedupe marks of v1's accepted ids and applied keys, dated ``stamp``."""
    marks: dict[str, int] = {}
    for event_id in accepted:
        marks[("b" if event_id in applied else "a") + codec.digest(event_id)] = stamp
    for key in applied - accepted:
        marks["k" + codec.digest(key)] = stamp
    return marks


def _move_record(client: redis.Redis, keys: Keys, v1: V1Keys, record_id: str, stamp: int,
                 report: MigrationReport, dry_run: bool) -> None:
    """One record: read its v1 keys, then one transaction writes v2 and deletes v1."""
    read = client.pipeline(transaction=False)
    read.hget(v1.of("record", record_id), "json")
    read.lrange(v1.of("history", record_id), 0, -1)
    read.lrange(v1.of("inbox", record_id), 0, -1)
    read.smembers(v1.of("accepted", record_id))
    read.smembers(v1.of("applied", record_id))
    read.zscore(v1.pending, record_id)
    read.zscore(v1.retries, record_id)
    raw, history_rows, inbox, accepted, applied, pending, retry = read.execute()
    record = decode_record(raw) if raw else None
    entries = [HistoryEntry.from_json(json.loads(row)) for row in history_rows]
    deleted_at = None if record is not None else _deleted_at(entries)
    if record is not None:
        head = codec.pack_record(record)
    elif deleted_at is not None:
        head = f"0|x{int(deleted_at)}"
    else:
        head = codec.NO_RECORD
    marks = _marks(set(accepted), set(applied), stamp)
    report.records += 1
    report.deleted_records += deleted_at is not None
    report.history_entries += len(entries)
    report.inbox_events += len(inbox)
    report.marks += len(marks)
    report.pending += pending is not None
    report.retries += retry is not None
    if dry_run:
        return
    shard = keys.shard(record_id)
    rkey = keys.record(record_id)
    spill = len(marks) > 32  # lua/window.lua's SPILL
    pipe = client.pipeline(transaction=True)
    pipe.delete(rkey, keys.window(record_id), keys.inbox(record_id))
    pipe.rpush(rkey, head, "*" if spill else codec.window_blob(marks),
               *(codec.pack_entry(entry) for entry in entries))
    if spill:
        pipe.zadd(keys.window(record_id), cast(dict[Any, Any], marks))
    if inbox:
        # Items keep their form ([event id, envelope]), re-encoded as the store writes.
        pipe.rpush(keys.inbox(record_id), *(inbox_item(*json.loads(item)) for item in inbox))
    for zset, score in ((keys.pending(shard), pending), (keys.retries(shard), retry),
                        (keys.deleted(shard), deleted_at and int(deleted_at))):
        if score is not None:
            pipe.zadd(zset, {record_id: score})
    for index in keys.index_keys(record):
        pipe.sadd(index, record_id)
    for links, value in sorted(keys.link_entries(record)):
        # EVAL, not EVALSHA: inside MULTI a NOSCRIPT would not undo the rest.
        pipe.eval(_LINK_ADD, 1, links, value, record_id)
    pipe.delete(*(v1.of(kind, record_id) for kind in (*PER_RECORD, "lease", "claimed")))
    pipe.zrem(v1.pending, record_id)
    pipe.zrem(v1.retries, record_id)
    pipe.execute()


def _move_outbox(client: redis.Redis, keys: Keys, v1: V1Keys, report: MigrationReport,
                 dry_run: bool) -> None:
    if dry_run:
        report.outbox_entries = int(client.llen(v1.outbox))
        return
    while True:
        chunk = cast(list[str], client.lrange(v1.outbox, 0, OUTBOX_CHUNK - 1))
        if not chunk:
            return
        pipe = client.pipeline(transaction=True)
        for entry in chunk:
            try:
                record_id = str(json.loads(entry)["record_id"])
            except (ValueError, KeyError, TypeError):
                record_id = ""  # unreadable: shard 0, where the mirror reports it
            pipe.rpush(keys.outbox(keys.shard(record_id) if record_id else 0), entry)
        pipe.ltrim(v1.outbox, len(chunk), -1)
        pipe.execute()
        report.outbox_entries += len(chunk)


def _move_failed(client: redis.Redis, keys: Keys, v1: V1Keys, report: MigrationReport,
                 dry_run: bool) -> None:
    scored = cast(list[tuple[str, float]], client.zrange(v1.failed, 0, -1, withscores=True))
    for entry_id, score in scored:
        report.failed_entries += 1
        if dry_run:
            continue
        raw = cast(str | None, client.get(v1.of("failed", entry_id)))
        pipe = client.pipeline(transaction=True)
        if raw is not None:
            pipe.set(keys.failed_entry(entry_id), raw)
            pipe.zadd(keys.failed_of(entry_id), {entry_id: score})
        else:
            report.problems.append(f"failed entry {entry_id} was listed but had no body")
        pipe.delete(v1.of("failed", entry_id))
        pipe.zrem(v1.failed, entry_id)
        pipe.execute()


def _move_tokens(client: redis.Redis, keys: Keys, v1: V1Keys, report: MigrationReport,
                 dry_run: bool) -> None:
    """The HTTP API's tokens: each entry, then the name index, renamed under ``{api}``."""
    names = cast(dict[str, str], client.hgetall(v1.api_tokens))
    report.api_tokens = len(names)
    if dry_run or not names:
        return
    pipe = client.pipeline(transaction=True)
    for token_id in names.values():
        if client.exists(v1.api_token(token_id)):
            pipe.rename(v1.api_token(token_id), keys.api_token(token_id))
    pipe.rename(v1.api_tokens, keys.api_tokens)
    pipe.execute()
