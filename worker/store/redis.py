"""``RedisStateStore``: the record store on Redis or a Redis Cluster (store v2), atomic
through the Lua scripts in lua/ (worker/store/scripts.py runs them). Every script touches
the keys of one shard (one hash tag, one cluster slot): a record's own keys and its
shard's indexes (worker/keys.py). Batches go as one non-transactional pipeline; on a
``RedisCluster`` redis-py splits it by node and routes each EVALSHA by its first key."""

from __future__ import annotations

import heapq
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

import redis

from statemachine import HistoryEntry, ProvisioningState, StatusReason
from worker.keys import Keys, dumps
from worker.store import codec
from worker.store import stamp as stored_format
from worker.store.outbox import ShardedOutbox
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
from worker.store.scripts import ScriptRunner, evalsha
from worker.store.translate import translated as _translated


def inbox_item(event_id: str, payload: str) -> str:
    """How an inbox entry is stored: ``[event id, payload]`` (the scripts read the id)."""
    return dumps([event_id, payload])


class RedisStateStore:
    """The StateStore on one Redis server, a Redis Cluster, or a fakeredis server in tests.

    ``dedupe_window`` (seconds): how long an accepted event id and an applied dedupe key
    are remembered (SPEC §3). ``wall`` gives epoch seconds (the window's clock)."""

    def __init__(self, client: redis.Redis | Any, *, keys: Keys | None = None,
                 history_limit: int = 1000, dedupe_window: float = DEFAULT_DEDUPE_WINDOW,
                 wall: Callable[[], float] = time.time) -> None:
        self.client = client
        self.keys = keys or Keys()
        self.history_limit = history_limit
        self.dedupe_window = dedupe_window
        self.wall = wall
        self._runner = ScriptRunner(client)
        self._scripts = self._runner.scripts
        self._accept = self._scripts["accept"]
        self._commit = self._scripts["commit"]
        self._release = self._scripts["release"]
        self._outbox = ShardedOutbox(client, self.keys, self._runner)

    # -- format ------------------------------------------------------------------------------

    def ensure_format(self, *, stamp: bool = True) -> None:
        """Stamp an empty store (``stamp``) or check its stamp (worker/store/stamp.py)."""
        with _translated():
            stored_format.ensure(self.client, self.keys, stamp=stamp)

    # -- the window ----------------------------------------------------------------------------

    def _window_args(self) -> tuple[int, int]:
        """(now, cutoff) in whole epoch seconds: marks older than cutoff are forgotten."""
        now = int(self.wall())
        return now, now - math.ceil(self.dedupe_window)

    # -- inbox ---------------------------------------------------------------------------

    def _accept_call(self, record_id: str, events: Sequence[tuple[str, str]],
                     now: float) -> tuple[list[str], list[Any]]:
        """The accept script for one record's (event id, payload) pairs, in order."""
        k = self.keys
        now_s, cutoff = self._window_args()
        args: list[Any] = [now, record_id, now_s, cutoff]
        for event_id, payload in events:
            args.extend((codec.digest(event_id), inbox_item(event_id, payload)))
        return ([k.record(record_id), k.window(record_id), k.inbox(record_id),
                 k.pending(k.shard(record_id))], args)

    def accept(self, record_id: str, event_id: str, payload: str, *, now: float) -> bool:
        keys, args = self._accept_call(record_id, [(event_id, payload)], now)
        with _translated():
            added = self._accept(keys=keys, args=args)
        return bool(cast(list[int], added)[0])

    def accept_many(self, items: Sequence[tuple[str, str, str]], *, now: float,
                    claim_seconds: float = 0.0) -> list[bool]:
        """One script call per record with all its events of the batch, so that a failure
        never leaves a later event of a record accepted and an earlier one not."""
        k = self.keys
        by_record: dict[str, list[int]] = {}
        for position, (record_id, _, _) in enumerate(items):
            by_record.setdefault(record_id, []).append(position)

        def fill(pipe: Any) -> None:
            for record_id, positions in by_record.items():
                evalsha(pipe, self._accept, *self._accept_call(
                    record_id, [(items[p][1], items[p][2]) for p in positions], now))
            if claim_seconds > 0:
                for record_id in by_record:
                    pipe.set(k.claimed(record_id), "1", px=max(1, int(claim_seconds * 1000)))

        answers = self._pipelined(fill)
        added = [False] * len(items)
        for positions, flags in zip(by_record.values(), answers, strict=False):
            for position, flag in zip(positions, flags, strict=True):
                added[position] = bool(flag)
        return added

    def forget_accepted(self, record_id: str, event_id: str) -> None:
        with _translated():
            self._scripts["forget"](
                keys=[self.keys.record(record_id), self.keys.window(record_id)],
                args=[codec.digest(event_id), self._window_args()[1]])

    def head(self, record_id: str) -> InboxItem | None:
        with _translated():
            raw = cast(str | None, self.client.lindex(self.keys.inbox(record_id), 0))
        if raw is None:
            return None
        event_id, payload = json.loads(raw)
        return InboxItem(event_id, payload)

    def heads(self, record_ids: Sequence[str], count: int) -> list[list[InboxItem]]:
        def fill(pipe: Any) -> None:
            for record_id in record_ids:
                pipe.lrange(self.keys.inbox(record_id), 0, count - 1)

        rows = cast(list[list[str]], self._pipelined(fill))
        return [[InboxItem(*json.loads(raw)) for raw in items] for items in rows]

    def inbox_size(self, record_id: str) -> int:
        with _translated():
            return int(self.client.llen(self.keys.inbox(record_id)))

    def drop_head(self, record_id: str, event_id: str, owner: str) -> bool:
        k = self.keys
        with _translated():
            return bool(self._scripts["drop_head"](
                keys=[k.inbox(record_id), k.lease(record_id), k.record(record_id),
                      k.window(record_id)],
                args=[event_id, owner, codec.digest(event_id)],
            ))

    # -- records ---------------------------------------------------------------------------

    def load(self, record_id: str) -> ProvisioningState | None:
        with _translated():
            head = cast(str | None, self.client.lindex(self.keys.record(record_id), 0))
        return codec.unpack_record(record_id, head)

    def is_applied(self, record_id: str, key: str) -> bool:
        k = self.keys
        digest = codec.digest(key)

        def fill(pipe: Any) -> None:
            pipe.lindex(k.record(record_id), 1)
            pipe.zmscore(k.window(record_id), ["k" + digest, "b" + digest])

        blob, scores = self._pipelined(fill)
        marks = codec.window_marks(blob) if blob and blob != "*" else {}
        seen = [marks.get("k" + digest), marks.get("b" + digest), *(scores or [])]
        cutoff = self._window_args()[1]
        return any(score is not None and float(score) >= cutoff for score in seen)

    def commit(self, commit: Commit) -> CommitStatus:
        keys, args = self._commit_call(commit)
        with _translated():
            return CommitStatus(self._commit(keys=keys, args=args))

    def commit_many(self, commits: Sequence[Commit], *, release: Sequence[str] = (),
                    owner: str = "") -> tuple[list[CommitStatus], list[Release]]:
        if not commits and not release:
            return [], []
        k = self.keys

        def fill(pipe: Any) -> None:
            for commit in commits:
                evalsha(pipe, self._commit, *self._commit_call(commit))
            for record_id in release:
                evalsha(pipe, self._release,
                         [k.lease(record_id), k.inbox(record_id), k.pending(k.shard(record_id))],
                         [owner, record_id, "0"])

        answers = self._pipelined(fill)
        return ([CommitStatus(status) for status in answers[:len(commits)]],
                [Release(int(result)) for result in answers[len(commits):]])

    def _pipelined(self, fill: Callable[[Any], None]) -> list[Any]:
        return self._runner.pipelined(fill)

    def _commit_call(self, commit: Commit) -> tuple[list[str], list[Any]]:
        """The keys and arguments of the commit script for ``commit``."""
        k = self.keys
        rid = commit.record_id
        shard = k.shard(rid)
        old, new = k.index_keys(commit.before), k.index_keys(commit.after)
        remove, add = sorted(old - new), sorted(new - old)
        old_links, new_links = k.link_entries(commit.before), k.link_entries(commit.after)
        unlink, link = sorted(old_links - new_links), sorted(new_links - old_links)
        after = commit.after
        now_s, cutoff = self._window_args()
        args: list[Any] = [
            commit.expected_version,
            "" if after is None else codec.pack_record(after),
            codec.digest(commit.dedupe_key) if commit.dedupe_key else "",
            commit.pop_event_id or "",
            commit.lease_owner or "",
            "" if commit.retry_at is None else repr(commit.retry_at),
            "1" if commit.cancel_retry or commit.deleted else "0",
            self.history_limit,
            len(remove),
            len(add),
            rid,
            commit.outbox_entry or "",
            now_s,
            cutoff,
            len(unlink),
            len(link),
            "1" if commit.dedupe_key and commit.dedupe_key == commit.pop_event_id else "0",
            *(value for _, value in unlink),
            *(value for _, value in link),
            *(codec.pack_entry(entry) for entry in commit.entries),
        ]
        return ([k.record(rid), k.inbox(rid), k.window(rid), k.lease(rid), k.retries(shard),
                 k.outbox(shard), k.deleted(shard), k.purged(shard), *remove, *add,
                 *(key for key, _ in unlink), *(key for key, _ in link)], args)

    def history(self, record_id: str) -> list[HistoryEntry]:
        with _translated():
            rows = cast(list[str], self.client.lrange(self.keys.record(record_id), 2, -1))
        return [codec.unpack_entry(record_id, row) for row in rows]

    def append_history(self, record_id: str, entries: Iterable[HistoryEntry]) -> None:
        rows = [codec.pack_entry(entry) for entry in entries]
        if not rows:
            return
        with _translated():
            self._scripts["append"](keys=[self.keys.record(record_id)],
                                    args=[self.history_limit, *rows])

    def list_records(
        self, *, status: StatusReason | None = None, kind: str | None = None,
        testing: bool = False,
    ) -> list[ProvisioningState]:
        return self._records(sorted(self._matching(status, kind, testing=testing)))

    def page_records(
        self, *, status: StatusReason | None = None, kind: str | None = None,
        after: str | None = None, limit: int = 100,
    ) -> RecordPage:
        # The page's ids are the smallest past ``after``: a heap of limit + 1 finds them
        # without sorting every id (sorted() of 100,000 ids cost as much as fetching them;
        # bench/console.py).
        ids = self._matching(status, kind)
        past = ids if after is None else [i for i in ids if i > after]
        chosen = heapq.nsmallest(limit + 1, past)
        more = len(chosen) > limit
        chosen = chosen[:limit]
        return RecordPage(self._records(chosen), chosen[-1] if more and chosen else None)

    def _matching(self, status: StatusReason | None, kind: str | None, *,
                  testing: bool = False) -> set[str]:
        """The ids in the status x kind index sets (with ``testing``, only those with a
        calling test InProgress): one pipelined SUNION per shard, ids only (36 bytes each)."""
        k = self.keys
        wanted = k.index_sets(status=status, kind=kind)
        per_shard = len(wanted) // k.shards

        def fill(pipe: Any) -> None:
            for shard in range(k.shards):
                if testing:
                    pipe.smembers(k.calling_in_progress(shard))
                # SUNION by name: redis-py's cluster pipeline blocks multi-key methods,
                # though these keys share one hash tag.
                pipe.execute_command("SUNION", *wanted[shard * per_shard:(shard + 1) * per_shard])

        answers = self._pipelined(fill)
        if not testing:
            return set().union(*(set(found) for found in answers))
        found: set[str] = set()
        for start in range(0, len(answers), 2):
            found |= set(answers[start]) & set(answers[start + 1])
        return found

    def _records(self, ids: list[str]) -> list[ProvisioningState]:
        """The live records of ``ids``, in that order (one pipelined LINDEX each)."""
        if not ids:
            return []
        k = self.keys

        def heads(pipe: Any) -> None:
            for record_id in ids:
                pipe.lindex(k.record(record_id), 0)

        rows = cast(list[str | None], self._pipelined(heads))
        records = (codec.unpack_record(rid, row) for rid, row in zip(ids, rows, strict=True))
        return [record for record in records if record is not None]

    def records_linking(self, column: str, value: str) -> list[str]:
        k = self.keys

        def fill(pipe: Any) -> None:
            for shard in range(k.shards):
                pipe.hget(k.links(shard, column), value)

        holders = cast(list[str | None], self._pipelined(fill))
        found = {holder for holder in holders if holder not in (None, "*")}
        many = [shard for shard, holder in enumerate(holders) if holder == "*"]
        if many:
            def sets(pipe: Any) -> None:
                for shard in many:
                    pipe.smembers(f"{k.links(shard, column)}:{value}")

            for members in cast(list[set[str]], self._pipelined(sets)):
                found |= members
        return sorted(found)

    # -- leases ----------------------------------------------------------------------------

    def acquire_lease(self, record_id: str, owner: str, seconds: float) -> bool:
        with _translated():
            return bool(self.client.set(self.keys.lease(record_id), owner, nx=True,
                                        px=int(seconds * 1000)))

    def acquire_many(self, record_ids: Sequence[str], owner: str, seconds: float,
                     read: int) -> list[Claim | None]:
        k = self.keys

        def fill(pipe: Any) -> None:
            for record_id in record_ids:
                pipe.set(k.lease(record_id), owner, nx=True, px=int(seconds * 1000))
                pipe.lindex(k.record(record_id), 0)
                pipe.lrange(k.inbox(record_id), 0, read - 1)

        answers = self._pipelined(fill)
        claims: list[Claim | None] = []
        for n, start in enumerate(range(0, len(answers), 3)):
            got, head, items = answers[start:start + 3]
            claims.append(Claim(codec.unpack_record(record_ids[n], head),
                                [InboxItem(*json.loads(item)) for item in items])
                          if got else None)
        return claims

    def renew_lease(self, record_id: str, owner: str, seconds: float) -> bool:
        with _translated():
            return bool(self._scripts["renew"](keys=[self.keys.lease(record_id)],
                                               args=[owner, int(seconds * 1000)]))

    def release_lease(self, record_id: str, owner: str, *, hand_over: bool = False) -> bool:
        k = self.keys
        with _translated():
            result = self._release(
                keys=[k.lease(record_id), k.inbox(record_id), k.pending(k.shard(record_id))],
                args=[owner, record_id, "1" if hand_over else "0"])
        return int(result) == 1

    def release_many(self, record_ids: Sequence[str], owner: str) -> list[Release]:
        return self.commit_many([], release=record_ids, owner=owner)[1]

    def lease_ttl(self, record_id: str) -> float | None:
        with _translated():
            ttl = int(self.client.pttl(self.keys.lease(record_id)))
        return None if ttl < 0 else ttl / 1000

    def _scored(self, key_of: Callable[[int], str], high: float | str) -> list[tuple[str, float]]:
        """Members of one zset per shard with score <= high, by (score, member)."""
        def fill(pipe: Any) -> None:
            for shard in range(self.keys.shards):
                pipe.zrangebyscore(key_of(shard), "-inf", high, withscores=True)

        rows = [(str(member), float(score)) for answer in self._pipelined(fill)
                for member, score in cast(list[Any], answer)]
        return sorted(rows, key=lambda row: (row[1], row[0]))

    def pending(self) -> list[str]:
        return [member for member, _ in self._scored(self.keys.pending, "+inf")]

    def claim_orphans(self, limit: int, claim_seconds: float) -> list[str]:
        """One script per shard (each in one slot), each looking at the oldest
        ``ceil(limit / shards)`` pending records of its shard: a sweep examines about
        ``limit`` records in all, as on one list, and records spread evenly over shards."""
        k = self.keys
        per_shard = math.ceil(limit / k.shards)
        claim_ms = max(1, int(claim_seconds * 1000))

        def fill(pipe: Any) -> None:
            for shard in range(k.shards):
                evalsha(pipe, self._scripts["claim_orphans"], [k.pending(shard)],
                         [k.base(shard), per_shard, claim_ms])

        # Every record claimed is returned (to be kicked), even when the shards' shares
        # add up to a few more than ``limit``.
        return [str(record_id) for got in self._pipelined(fill)
                for record_id in cast(list[Any], got)]

    def due_retries(self, now: float) -> list[tuple[str, float]]:
        return self._scored(self.keys.retries, now)

    def count_deliveries(self, task_id: str, ttl_seconds: int) -> int:
        key = self.keys.deliveries(task_id)
        with _translated():
            pipe = self.client.pipeline(transaction=True)
            pipe.incr(key)
            pipe.expire(key, ttl_seconds)
            count, _ = pipe.execute()
        return int(count)

    # -- the outbox: one list per shard, each in commit order (worker/store/outbox.py) --

    def outbox_peek(self, count: int) -> list[str]:
        return self._outbox.peek(count)

    def outbox_ack(self, count: int) -> None:
        self._outbox.ack(count)

    def outbox_size(self) -> int:
        return self._outbox.size()

    def outbox_trim(self, keep: int) -> int:
        return self._outbox.trim(keep)

    # -- deleted records -------------------------------------------------------------------

    def deletion(self, record_id: str) -> Deletion:
        k = self.keys
        shard = k.shard(record_id)

        def fill(pipe: Any) -> None:
            pipe.zscore(k.deleted(shard), record_id)
            pipe.zscore(k.purged(shard), record_id)

        deleted, purged = self._pipelined(fill)
        return Deletion(None if deleted is None else float(deleted),
                        None if purged is None else float(purged))

    def purge_deleted(self, cutoff: float, limit: int) -> list[str]:
        k = self.keys
        due = [rid for rid, _ in self._scored(k.deleted, cutoff)][:limit]
        now = int(self.wall())

        def fill(pipe: Any) -> None:
            for rid in due:
                shard = k.shard(rid)
                evalsha(pipe, self._scripts["purge"],
                         [k.record(rid), k.window(rid), k.inbox(rid), k.deleted(shard),
                          k.purged(shard)], [rid, cutoff, now])
            for shard in range(k.shards):
                pipe.zremrangebyscore(k.purged(shard), "-inf", f"({cutoff}")

        answers = self._pipelined(fill)
        return [rid for rid, done in zip(due, answers, strict=False) if int(done) == 1]

    def ping(self) -> bool:
        with _translated():
            return bool(self.client.ping())

