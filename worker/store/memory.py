"""``MemoryStateStore``: the in-memory twin of RedisStateStore, for unit tests and tools.

Same contract (tests/unit/test_store_contract.py runs against both); one lock makes each
method atomic, as each Lua script is on Redis. Time for leases comes from ``clock``; the
dedupe window and deletion times from ``wall`` (epoch seconds).
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from statemachine import AutomatedCallingStatus, HistoryEntry, ProvisioningState, StatusReason
from worker.keys import Keys, decode_record, encode_record
from worker.store.protocol import (
    DEFAULT_DEDUPE_WINDOW,
    Claim,
    Commit,
    CommitStatus,
    Deletion,
    InboxItem,
    RecordPage,
    Release,
)


@dataclass
class _Lease:
    owner: str
    expires: float


@dataclass
class _Data:
    records: dict[str, str] = field(default_factory=dict)  # id -> encoded record
    versions: dict[str, int] = field(default_factory=dict)
    history: dict[str, list[HistoryEntry]] = field(default_factory=lambda: defaultdict(list))
    inbox: dict[str, deque[InboxItem]] = field(default_factory=lambda: defaultdict(deque))
    # The dedupe window: event id / dedupe key -> when it was seen (epoch seconds).
    accepted: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(dict))
    applied: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(dict))
    deleted: dict[str, float] = field(default_factory=dict)
    purged: dict[str, float] = field(default_factory=dict)
    leases: dict[str, _Lease] = field(default_factory=dict)
    pending: dict[str, float] = field(default_factory=dict)
    retries: dict[str, float] = field(default_factory=dict)
    index: dict[tuple[str, ...], set[str]] = field(default_factory=lambda: defaultdict(set))
    deliveries: dict[str, tuple[int, float]] = field(default_factory=dict)
    outbox: list[str] = field(default_factory=list)
    claimed: dict[str, float] = field(default_factory=dict)


def _index_entries(record: ProvisioningState | None) -> set[tuple[str, ...]]:
    """The index entries of a record, as the Redis store's index sets and links hashes."""
    if record is None:
        return set()
    entries = {("all",), ("status", str(int(record.status)))}
    if record.tracking.channel_kind is not None:
        entries.add(("kind", record.tracking.channel_kind.value))
    if record.calling_status is AutomatedCallingStatus.IN_PROGRESS:
        entries.add(("calling",))
    entries.update(("link", column, value) for column, value in record.links.items()
                   if value is not None)
    return entries


class MemoryStateStore:
    """The StateStore in one process's memory."""

    def __init__(self, *, history_limit: int = 1000,
                 clock: Callable[[], float] = time.monotonic,
                 dedupe_window: float = DEFAULT_DEDUPE_WINDOW,
                 wall: Callable[[], float] = time.time) -> None:
        self.keys = Keys("memory")
        self.history_limit = history_limit
        self.clock = clock
        self.dedupe_window = dedupe_window
        self.wall = wall
        self._lock = threading.RLock()
        self._data = _Data()

    # -- inbox ---------------------------------------------------------------------------

    def _window(self, marks: dict[str, float]) -> dict[str, float]:
        """``marks`` without those older than the window (as the scripts trim them)."""
        cutoff = int(self.wall()) - math.ceil(self.dedupe_window)
        for key in [key for key, seen in marks.items() if seen < cutoff]:
            del marks[key]
        return marks

    def accept(self, record_id: str, event_id: str, payload: str, *, now: float) -> bool:
        with self._lock:
            if event_id in self._window(self._data.accepted[record_id]):
                return False
            self._data.accepted[record_id][event_id] = int(self.wall())
            self._data.inbox[record_id].append(InboxItem(event_id, payload))
            self._data.pending.setdefault(record_id, now)
            return True

    def accept_many(self, items: Sequence[tuple[str, str, str]], *, now: float,
                    claim_seconds: float = 0.0) -> list[bool]:
        with self._lock:
            added = [self.accept(r, e, p, now=now) for r, e, p in items]
            if claim_seconds > 0:
                for record_id, _, _ in items:
                    self._data.claimed[record_id] = self.clock() + claim_seconds
            return added

    def forget_accepted(self, record_id: str, event_id: str) -> None:
        with self._lock:
            self._data.accepted[record_id].pop(event_id, None)

    def head(self, record_id: str) -> InboxItem | None:
        with self._lock:
            inbox = self._data.inbox.get(record_id)
            return inbox[0] if inbox else None

    def heads(self, record_ids: Sequence[str], count: int) -> list[list[InboxItem]]:
        with self._lock:
            return [list(itertools.islice(self._data.inbox.get(record_id, ()), count))
                    for record_id in record_ids]

    def inbox_size(self, record_id: str) -> int:
        with self._lock:
            return len(self._data.inbox.get(record_id, ()))

    def drop_head(self, record_id: str, event_id: str, owner: str) -> bool:
        with self._lock:
            inbox = self._data.inbox.get(record_id)
            if not self._holds(record_id, owner) or not inbox or inbox[0].event_id != event_id:
                return False
            inbox.popleft()
            self._data.accepted[record_id].pop(event_id, None)
            return True

    # -- records ---------------------------------------------------------------------------

    def load(self, record_id: str) -> ProvisioningState | None:
        with self._lock:
            raw = self._data.records.get(record_id)
        # Decoding a copy keeps callers from sharing state with the store, as on Redis.
        return None if raw is None else decode_record(raw)

    def is_applied(self, record_id: str, key: str) -> bool:
        with self._lock:
            return key in self._window(self._data.applied[record_id])

    def commit(self, commit: Commit) -> CommitStatus:
        rid = commit.record_id
        data = self._data
        with self._lock:
            if data.versions.get(rid, 0) != commit.expected_version:
                return CommitStatus.CONFLICT
            if commit.lease_owner and not self._holds(rid, commit.lease_owner):
                return CommitStatus.CONFLICT
            if commit.dedupe_key and commit.dedupe_key in self._window(data.applied[rid]):
                return CommitStatus.DUPLICATE
            if commit.pop_event_id:
                inbox = data.inbox.get(rid)
                if not inbox or inbox[0].event_id != commit.pop_event_id:
                    return CommitStatus.CONFLICT
                inbox.popleft()
            if commit.after is None:
                data.records.pop(rid, None)
                data.versions.pop(rid, None)
                data.deleted[rid] = int(self.wall())
            else:
                data.records[rid] = encode_record(commit.after)
                data.versions[rid] = commit.after.version
                data.deleted.pop(rid, None)
                data.purged.pop(rid, None)
            old, new = _index_entries(commit.before), _index_entries(commit.after)
            for key in old - new:
                data.index[key].discard(rid)
            for key in new - old:
                data.index[key].add(rid)
            self._append(rid, commit.entries)
            if commit.dedupe_key:
                data.applied[rid][commit.dedupe_key] = int(self.wall())
                if commit.dedupe_key == commit.pop_event_id and commit.pop_event_id in (
                        data.accepted[rid]):
                    # As on Redis, the accepted mark of an applied event is renewed with
                    # its applied mark (one 'b' mark there).
                    data.accepted[rid][commit.pop_event_id] = int(self.wall())
            if commit.cancel_retry or commit.deleted:
                data.retries.pop(rid, None)
            if commit.retry_at is not None:
                data.retries[rid] = commit.retry_at
            if commit.outbox_entry is not None:
                data.outbox.append(commit.outbox_entry)
            return CommitStatus.OK

    def commit_many(self, commits: Sequence[Commit], *, release: Sequence[str] = (),
                    owner: str = "") -> tuple[list[CommitStatus], list[Release]]:
        with self._lock:
            return ([self.commit(commit) for commit in commits],
                    self.release_many(release, owner))

    def _append(self, record_id: str, entries: Iterable[HistoryEntry]) -> None:
        history = self._data.history[record_id]
        history.extend(entries)
        if self.history_limit > 0 and len(history) > self.history_limit:
            del history[: len(history) - self.history_limit]

    def history(self, record_id: str) -> list[HistoryEntry]:
        with self._lock:
            return list(self._data.history.get(record_id, ()))

    def append_history(self, record_id: str, entries: Iterable[HistoryEntry]) -> None:
        with self._lock:
            self._append(record_id, entries)

    def list_records(
        self, *, status: StatusReason | None = None, kind: str | None = None,
        testing: bool = False,
    ) -> list[ProvisioningState]:
        with self._lock:
            ids = self._matching(status, kind)
            if testing:
                ids &= self._data.index[("calling",)]
            rows = [self._data.records[i] for i in sorted(ids) if i in self._data.records]
        return [decode_record(row) for row in rows]

    def page_records(
        self, *, status: StatusReason | None = None, kind: str | None = None,
        after: str | None = None, limit: int = 100,
    ) -> RecordPage:
        with self._lock:
            ordered = sorted(i for i in self._matching(status, kind)
                             if after is None or i > after)
            chosen = ordered[:limit]
            rows = [self._data.records[i] for i in chosen if i in self._data.records]
        more = len(ordered) > limit
        return RecordPage([decode_record(row) for row in rows],
                          chosen[-1] if more and chosen else None)

    def _matching(self, status: StatusReason | None, kind: str | None) -> set[str]:
        """The ids in the status and kind indexes (the caller holds the lock)."""
        ids = set(self._data.index[("all",)])
        if status is not None:
            ids &= self._data.index[("status", str(int(status)))]
        if kind is not None:
            ids &= self._data.index[("kind", kind)]
        return ids

    def records_linking(self, column: str, value: str) -> list[str]:
        with self._lock:
            return sorted(self._data.index[("link", column, value)])

    # -- leases ----------------------------------------------------------------------------

    def _holds(self, record_id: str, owner: str) -> bool:
        lease = self._data.leases.get(record_id)
        return lease is not None and lease.owner == owner and lease.expires > self.clock()

    def acquire_lease(self, record_id: str, owner: str, seconds: float) -> bool:
        with self._lock:
            lease = self._data.leases.get(record_id)
            if lease is not None and lease.expires > self.clock():
                return False
            self._data.leases[record_id] = _Lease(owner, self.clock() + seconds)
            return True

    def renew_lease(self, record_id: str, owner: str, seconds: float) -> bool:
        with self._lock:
            if not self._holds(record_id, owner):
                return False
            self._data.leases[record_id] = _Lease(owner, self.clock() + seconds)
            return True

    def acquire_many(self, record_ids: Sequence[str], owner: str, seconds: float,
                     read: int) -> list[Claim | None]:
        with self._lock:
            return [Claim(self.load(record_id), self.heads([record_id], read)[0])
                    if self.acquire_lease(record_id, owner, seconds) else None
                    for record_id in record_ids]

    def release_many(self, record_ids: Sequence[str], owner: str) -> list[Release]:
        with self._lock:
            return [Release.RELEASED if self.release_lease(record_id, owner)
                    else Release.BUSY if self._holds(record_id, owner)
                    else Release.NOT_HOLDER
                    for record_id in record_ids]

    def release_lease(self, record_id: str, owner: str, *, hand_over: bool = False) -> bool:
        with self._lock:
            if not self._holds(record_id, owner):
                return False
            if hand_over:
                del self._data.leases[record_id]
                return True
            if self._data.inbox.get(record_id):
                return False
            del self._data.leases[record_id]
            self._data.pending.pop(record_id, None)
            return True

    def lease_ttl(self, record_id: str) -> float | None:
        with self._lock:
            lease = self._data.leases.get(record_id)
            if lease is None or lease.expires <= self.clock():
                return None
            return lease.expires - self.clock()

    def pending(self) -> list[str]:
        with self._lock:
            # As a Redis zset orders: by score, then by member.
            return sorted(self._data.pending, key=lambda rid: (self._data.pending[rid], rid))

    def claim_orphans(self, limit: int, claim_seconds: float) -> list[str]:
        with self._lock:
            now = self.clock()
            claimed = []
            for record_id in self.pending()[:limit]:
                lease = self._data.leases.get(record_id)
                if lease is not None and lease.expires > now:
                    continue
                if self._data.claimed.get(record_id, 0.0) > now:
                    continue
                self._data.claimed[record_id] = now + claim_seconds
                claimed.append(record_id)
            return claimed

    def due_retries(self, now: float) -> list[tuple[str, float]]:
        with self._lock:
            return sorted(
                ((rid, due) for rid, due in self._data.retries.items() if due <= now),
                key=lambda item: (item[1], item[0]),
            )

    def count_deliveries(self, task_id: str, ttl_seconds: int) -> int:
        with self._lock:
            count, expires = self._data.deliveries.get(task_id, (0, 0.0))
            if expires <= self.clock():
                count = 0
            self._data.deliveries[task_id] = (count + 1, self.clock() + ttl_seconds)
            return count + 1

    def outbox_peek(self, count: int) -> list[str]:
        with self._lock:
            return list(self._data.outbox[:count])

    def outbox_ack(self, count: int) -> None:
        with self._lock:
            del self._data.outbox[:count]

    def outbox_size(self) -> int:
        with self._lock:
            return len(self._data.outbox)

    def deletion(self, record_id: str) -> Deletion:
        with self._lock:
            return Deletion(self._data.deleted.get(record_id),
                            self._data.purged.get(record_id))

    def purge_deleted(self, cutoff: float, limit: int) -> list[str]:
        with self._lock:
            data = self._data
            for rid in [rid for rid, when in data.purged.items() if when < cutoff]:
                del data.purged[rid]
            due = sorted((when, rid) for rid, when in data.deleted.items()
                         if when <= cutoff and rid not in data.records
                         and not data.inbox.get(rid))[:limit]
            now = int(self.wall())
            for _, rid in due:
                del data.deleted[rid]
                for table in (data.history, data.accepted, data.applied):
                    table.pop(rid, None)
                data.purged[rid] = now
            return [rid for _, rid in due]

    def outbox_trim(self, keep: int) -> int:
        with self._lock:
            over = max(0, len(self._data.outbox) - keep)
            del self._data.outbox[:over]
            return over

    def ping(self) -> bool:
        return True
