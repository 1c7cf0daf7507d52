"""``RedisStateStore``: the record store on Redis, atomic through the Lua scripts in lua/."""

from __future__ import annotations

import heapq
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, cast

import redis

from statemachine import HistoryEntry, ProvisioningState, StatusReason
from worker.keys import Keys, decode_record, dumps, encode_record
from worker.store.protocol import Claim, Commit, CommitStatus, InboxItem, RecordPage, Release
from worker.store.translate import translated as _translated


def _script(name: str) -> str:
    return (Path(__file__).parent / "lua" / f"{name}.lua").read_text(encoding="utf-8")


def inbox_item(event_id: str, payload: str) -> str:
    """How an inbox entry is stored: ``[event id, payload]`` (the scripts read the id)."""
    return dumps([event_id, payload])


class RedisStateStore:
    """The StateStore on one Redis server (or a fakeredis server in tests)."""

    def __init__(self, client: redis.Redis, *, keys: Keys | None = None,
                 history_limit: int = 1000) -> None:
        self.client = client
        self.keys = keys or Keys()
        self.history_limit = history_limit
        self._accept = client.register_script(_script("accept"))
        self._commit = client.register_script(_script("commit"))
        self._release = client.register_script(_script("release"))
        self._renew = client.register_script(_script("renew"))
        self._drop_head = client.register_script(_script("drop_head"))
        self._claim_orphans = client.register_script(_script("claim_orphans"))

    # -- inbox ---------------------------------------------------------------------------

    def accept(self, record_id: str, event_id: str, payload: str, *, now: float) -> bool:
        k = self.keys
        with _translated():
            added = self._accept(
                keys=[k.accepted(record_id), k.inbox(record_id), k.pending],
                args=[event_id, inbox_item(event_id, payload), now, record_id],
            )
        return bool(added)

    def accept_many(self, items: Sequence[tuple[str, str, str]], *, now: float,
                    claim_seconds: float = 0.0) -> list[bool]:
        k = self.keys

        def fill(pipe: Any) -> None:
            for record_id, event_id, payload in items:
                _evalsha(pipe, self._accept,
                         [k.accepted(record_id), k.inbox(record_id), k.pending],
                         [event_id, inbox_item(event_id, payload), now, record_id])
            if claim_seconds > 0:
                for record_id in dict.fromkeys(record_id for record_id, _, _ in items):
                    pipe.set(k.claimed(record_id), "1", px=max(1, int(claim_seconds * 1000)))

        answers = self._pipelined(fill)
        return [bool(added) for added in answers[:len(items)]]

    def forget_accepted(self, record_id: str, event_id: str) -> None:
        with _translated():
            self.client.srem(self.keys.accepted(record_id), event_id)

    def head(self, record_id: str) -> InboxItem | None:
        with _translated():
            raw = cast(str | None, self.client.lindex(self.keys.inbox(record_id), 0))
        if raw is None:
            return None
        event_id, payload = json.loads(raw)
        return InboxItem(event_id, payload)

    def heads(self, record_ids: Sequence[str], count: int) -> list[list[InboxItem]]:
        with _translated():
            pipe = self.client.pipeline(transaction=False)
            for record_id in record_ids:
                pipe.lrange(self.keys.inbox(record_id), 0, count - 1)
            rows = cast(list[list[str]], pipe.execute())
        return [[InboxItem(*json.loads(raw)) for raw in items] for items in rows]

    def inbox_size(self, record_id: str) -> int:
        with _translated():
            return int(self.client.llen(self.keys.inbox(record_id)))

    def drop_head(self, record_id: str, event_id: str, owner: str) -> bool:
        k = self.keys
        with _translated():
            return bool(self._drop_head(
                keys=[k.inbox(record_id), k.lease(record_id), k.accepted(record_id)],
                args=[event_id, owner],
            ))

    # -- records ---------------------------------------------------------------------------

    def load(self, record_id: str) -> ProvisioningState | None:
        with _translated():
            raw = cast(str | None, self.client.hget(self.keys.record(record_id), "json"))
        return None if raw is None else decode_record(raw)

    def is_applied(self, record_id: str, key: str) -> bool:
        with _translated():
            return bool(self.client.sismember(self.keys.applied(record_id), key))

    def commit(self, commit: Commit) -> CommitStatus:
        with _translated():
            return CommitStatus(self._run_commit(commit, self.client))

    def commit_many(self, commits: Sequence[Commit], *, release: Sequence[str] = (),
                    owner: str = "") -> tuple[list[CommitStatus], list[Release]]:
        if not commits and not release:
            return [], []
        k = self.keys

        def fill(pipe: Any) -> None:
            for commit in commits:
                _evalsha(pipe, self._commit, *self._commit_call(commit))
            for record_id in release:
                _evalsha(pipe, self._release,
                         [k.lease(record_id), k.inbox(record_id), k.pending],
                         [owner, record_id, "0"])

        answers = self._pipelined(fill)
        return ([CommitStatus(status) for status in answers[:len(commits)]],
                [Release(int(result)) for result in answers[len(commits):]])

    def _pipelined(self, fill: Callable[[Any], None]) -> list[Any]:
        """Run the commands ``fill`` queues in one non-transactional pipeline. Scripts go
        as EVALSHA (redis-py's Script objects would add a SCRIPT EXISTS round trip to every
        pipeline); a Redis that lost its scripts (restarted, flushed) answers NOSCRIPT to
        every one of them, nothing of the scripts ran, so they are loaded and the pipeline
        is sent again."""
        with _translated():
            for attempt in (1, 2):
                pipe = self.client.pipeline(transaction=False)
                fill(pipe)
                try:
                    answers: list[Any] = pipe.execute()
                    return answers
                except redis.exceptions.NoScriptError:
                    if attempt == 2:
                        raise
                    for script in (self._accept, self._commit, self._release):
                        self.client.script_load(script.script)
        raise AssertionError("unreachable")  # pragma: no cover

    def _run_commit(self, commit: Commit, client: Any) -> Any:
        """Call the commit script on ``client`` (the connection, or a pipeline)."""
        keys, args = self._commit_call(commit)
        return self._commit(keys=keys, args=args, client=client)

    def _commit_call(self, commit: Commit) -> tuple[list[str], list[Any]]:
        """The keys and arguments of the commit script for ``commit``."""
        k = self.keys
        rid = commit.record_id
        old, new = k.index_keys(commit.before), k.index_keys(commit.after)
        remove, add = sorted(old - new), sorted(new - old)
        after = commit.after
        args: list[Any] = [
            commit.expected_version,
            "" if after is None else encode_record(after),
            0 if after is None else after.version,
            commit.dedupe_key or "",
            commit.pop_event_id or "",
            commit.lease_owner or "",
            "" if commit.retry_at is None else repr(commit.retry_at),
            "1" if commit.cancel_retry or commit.deleted else "0",
            self.history_limit,
            len(remove),
            len(add),
            rid,
            commit.outbox_entry or "",
            *(dumps(entry.to_json()) for entry in commit.entries),
        ]
        return ([k.record(rid), k.history(rid), k.inbox(rid), k.applied(rid), k.lease(rid),
                 k.retries, k.outbox, *remove, *add], args)

    def history(self, record_id: str) -> list[HistoryEntry]:
        with _translated():
            rows = cast(list[str], self.client.lrange(self.keys.history(record_id), 0, -1))
        return [HistoryEntry.from_json(json.loads(row)) for row in rows]

    def append_history(self, record_id: str, entries: Iterable[HistoryEntry]) -> None:
        rows = [dumps(entry.to_json()) for entry in entries]
        if not rows:
            return
        with _translated():
            pipe = self.client.pipeline(transaction=True)
            pipe.rpush(self.keys.history(record_id), *rows)
            if self.history_limit > 0:
                pipe.ltrim(self.keys.history(record_id), -self.history_limit, -1)
            pipe.execute()

    def list_records(
        self, *, status: StatusReason | None = None, kind: str | None = None,
        testing: bool = False,
    ) -> list[ProvisioningState]:
        k = self.keys
        sets = [k.all_records]
        if status is not None:
            sets.append(k.by_status(int(status)))
        if kind is not None:
            sets.append(k.by_kind(kind))
        if testing:
            sets.append(k.calling_in_progress)
        with _translated():
            ids = sorted(cast(set[str], self.client.sinter(sets)))
            pipe = self.client.pipeline(transaction=False)
            for record_id in ids:
                pipe.hget(k.record(record_id), "json")
            rows = pipe.execute()
        return [decode_record(row) for row in rows if row is not None]

    def page_records(
        self, *, status: StatusReason | None = None, kind: str | None = None,
        after: str | None = None, limit: int = 100,
    ) -> RecordPage:
        k = self.keys
        sets = [k.all_records]
        if status is not None:
            sets.append(k.by_status(int(status)))
        if kind is not None:
            sets.append(k.by_kind(kind))
        with _translated():
            # The ids only (36 bytes each); the records of the page are read afterwards.
            # The page's ids are the smallest past ``after``: a heap of limit + 1 finds
            # them without sorting every id (sorted() of 100,000 ids cost as much as
            # fetching them; bench/console.py).
            # SMEMBERS when there is no filter: Redis answers it in a third less time than
            # a SINTER of the one set.
            ids = cast(set[str], self.client.smembers(sets[0]) if len(sets) == 1
                       else self.client.sinter(sets))
            past = ids if after is None else [i for i in ids if i > after]
            chosen = heapq.nsmallest(limit + 1, past)
            more = len(chosen) > limit
            chosen = chosen[:limit]
            pipe = self.client.pipeline(transaction=False)
            for record_id in chosen:
                pipe.hget(k.record(record_id), "json")
            rows = pipe.execute() if chosen else []
        return RecordPage([decode_record(row) for row in rows if row is not None],
                          chosen[-1] if more and chosen else None)

    def records_linking(self, column: str, value: str) -> list[str]:
        with _translated():
            return sorted(cast(set[str], self.client.smembers(self.keys.by_link(column, value))))

    # -- leases ----------------------------------------------------------------------------

    def acquire_lease(self, record_id: str, owner: str, seconds: float) -> bool:
        with _translated():
            return bool(self.client.set(self.keys.lease(record_id), owner, nx=True,
                                        px=int(seconds * 1000)))

    def acquire_many(self, record_ids: Sequence[str], owner: str, seconds: float,
                     read: int) -> list[Claim | None]:
        k = self.keys
        with _translated():
            pipe = self.client.pipeline(transaction=False)
            for record_id in record_ids:
                pipe.set(k.lease(record_id), owner, nx=True, px=int(seconds * 1000))
                pipe.hget(k.record(record_id), "json")
                pipe.lrange(k.inbox(record_id), 0, read - 1)
            answers = pipe.execute()
        claims: list[Claim | None] = []
        for start in range(0, len(answers), 3):
            got, raw, items = answers[start:start + 3]
            claims.append(Claim(None if raw is None else decode_record(raw),
                                [InboxItem(*json.loads(item)) for item in items])
                          if got else None)
        return claims

    def renew_lease(self, record_id: str, owner: str, seconds: float) -> bool:
        with _translated():
            return bool(self._renew(keys=[self.keys.lease(record_id)],
                                    args=[owner, int(seconds * 1000)]))

    def release_lease(self, record_id: str, owner: str, *, hand_over: bool = False) -> bool:
        k = self.keys
        with _translated():
            result = self._release(keys=[k.lease(record_id), k.inbox(record_id), k.pending],
                                   args=[owner, record_id, "1" if hand_over else "0"])
        return int(result) == 1

    def release_many(self, record_ids: Sequence[str], owner: str) -> list[Release]:
        return self.commit_many([], release=record_ids, owner=owner)[1]

    def lease_ttl(self, record_id: str) -> float | None:
        with _translated():
            ttl = int(self.client.pttl(self.keys.lease(record_id)))
        return None if ttl < 0 else ttl / 1000

    def pending(self) -> list[str]:
        with _translated():
            return list(cast(list[str], self.client.zrange(self.keys.pending, 0, -1)))

    def claim_orphans(self, limit: int, claim_seconds: float) -> list[str]:
        with _translated():
            claimed = self._claim_orphans(keys=[self.keys.pending],
                                          args=[self.keys.prefix, limit,
                                                max(1, int(claim_seconds * 1000))])
        return [str(record_id) for record_id in cast(list[Any], claimed)]

    def due_retries(self, now: float) -> list[tuple[str, float]]:
        with _translated():
            rows = self.client.zrangebyscore(self.keys.retries, "-inf", now, withscores=True)
        return [(str(member), float(score)) for member, score in cast(list[Any], rows)]

    def count_deliveries(self, task_id: str, ttl_seconds: int) -> int:
        key = self.keys.deliveries(task_id)
        with _translated():
            pipe = self.client.pipeline(transaction=True)
            pipe.incr(key)
            pipe.expire(key, ttl_seconds)
            count, _ = pipe.execute()
        return int(count)

    def outbox_peek(self, count: int) -> list[str]:
        with _translated():
            return list(cast(list[str], self.client.lrange(self.keys.outbox, 0, count - 1)))

    def outbox_ack(self, count: int) -> None:
        with _translated():
            self.client.ltrim(self.keys.outbox, count, -1)

    def outbox_size(self) -> int:
        with _translated():
            return int(self.client.llen(self.keys.outbox))

    def ping(self) -> bool:
        with _translated():
            return bool(self.client.ping())


def _evalsha(pipe: Any, script: Any, keys: list[str], args: list[Any]) -> None:
    """Queue ``script`` on ``pipe`` by its SHA1 (see ``RedisStateStore._pipelined``)."""
    pipe.evalsha(script.sha, len(keys), *keys, *args)

