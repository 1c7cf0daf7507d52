"""Stored records for the memory and scaling benchmarks (bench/memory.py, bench/scaling.py).

Record ``i`` lives one of three lives, by ``i % 10``, every one through the real code path
(``Service.accept_all`` then ``Service.drain`` on the Redis store, the backend emulator as
an in-process httpx transport):

* 0-7 ``provisioned``: ``provision.requested`` (entries create, provision, provisioned);
* 8 ``flapped``: provisioned, then ``gatekeeper.reported`` Inactive/Error (Running -> Error,
  a retry scheduled) and ``gatekeeper.reported`` Active/Running (back to Running, the retry
  cancelled): 3 events, 5 history entries;
* 9 ``deprovisioned``: provisioned, then ``deprovision.requested`` (deprovision,
  deprovisioned): 2 events, 5 entries. A Deprovisioned record stays stored.

Its channel kind is ``KINDS[(i // 10) % 5]``, its communication provider one of 5 shared
ones; ids are derived from ``(seed, i)`` so both ways of populating store the same ids.

Two ways to populate:

``populate_real``  every record through ``accept_all`` + ``drain`` (about 2 ms a record).
``populate_clone`` one template record per (life, kind) goes through the real path under
                   a scratch key prefix; every other record is a copy of its template's keys
                   with the ids (record, channel, provider, event number) replaced by
                   strings of the same length, written with pipelined HSET/RPUSH/SADD/ZADD.
                   The keys, their types, encodings and sizes are those of the real path
                   (bench/memory.py ``--populate clone`` checks the bytes per record against
                   ``real``); only the timestamps are the template's.
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

KINDS = ("whatsapp", "facebook", "teams", "line", "voice")
LIVES = ("provisioned",) * 8 + ("flapped", "deprovisioned")
LIFE_NAMES = ("provisioned", "flapped", "deprovisioned")
PROVIDER_COLUMN = "msdyn_communicationprovidersettingid"
EVENT_TIME = "2026-11-27T10:00:00Z"
BATCH = 500  # records per accept_all round (the emulator is reset after each)


def _uuid(seed: int, tag: str, number: int) -> str:
    digest = hashlib.blake2b(f"{seed}:{tag}:{number}".encode(), digest_size=16).digest()
    return str(uuid.UUID(bytes=digest, version=4))


def record_id(seed: int, i: int) -> str:
    return _uuid(seed, "record", i)


def channel_id(seed: int, i: int) -> str:
    return _uuid(seed, "channel", i)


def provider_id(seed: int, i: int) -> str:
    return _uuid(seed, "provider", (i // 50) % 5)


def life_of(i: int) -> str:
    return LIVES[i % 10]


def kind_of(i: int) -> str:
    return KINDS[(i // 10) % 5]


def number(i: int) -> str:
    """The record's number as it appears in its name and event ids (fixed width)."""
    return f"{i:07d}"


def event(i: int, n: int, kind: str, subject: str,
          data: dict[str, Any] | None = None) -> dict[str, Any]:
    raw: dict[str, Any] = {"specversion": "1.0", "id": f"mem-{number(i)}-{n}",
                           "source": "bench-memory", "type": kind, "subject": subject,
                           "time": EVENT_TIME}
    if data is not None:
        raw["data"] = data
    return raw


def life_events(seed: int, i: int, life: str | None = None,
                kind: str | None = None) -> list[list[dict[str, Any]]]:
    """Record ``i``'s events, in rounds (each round drained before the next)."""
    life = life or life_of(i)
    kind = kind or kind_of(i)
    rid = record_id(seed, i)
    rounds = [[event(i, 0, "provision.requested", rid, {
        "name": f"Bench {kind} channel {number(i)}",
        "channel": {"kind": kind, "id": channel_id(seed, i)},
        "links": {PROVIDER_COLUMN: provider_id(seed, i)},
    })]]
    if life == "flapped":
        rounds.append([event(i, 1, "gatekeeper.reported", rid, {
            "status": "Inactive", "reason": "Error",
            "details": "bench: the gate's health check failed"})])
        rounds.append([event(i, 2, "gatekeeper.reported", rid,
                             {"status": "Active", "reason": "Running"})])
    elif life == "deprovisioned":
        rounds.append([event(i, 1, "deprovision.requested", rid)])
    return rounds


# -- the real path ------------------------------------------------------------------------


def make_service(url: str, prefix: str, emulator: Any, *, history_limit: int | None = None,
                 kick: Callable[[str], None] | None = None, **overrides: Any) -> Any:
    """A Service on the Redis store at ``url`` under ``prefix`` (``build_service``), the
    emulator answering in process; default settings otherwise."""
    from worker.bootstrap.services import build_service
    from worker.settings import BackendSettings, Settings

    values: dict[str, Any] = {
        "redis_url": url, "key_prefix": prefix, "log_level": "WARNING", "log_format": "json",
        "backends": BackendSettings(provisioner_url="http://emulator.local",
                                    gatekeeper_url="http://emulator.local",
                                    calling_test_url="http://emulator.local"),
        **overrides}
    if history_limit is not None:
        values["history_limit"] = history_limit
    return build_service(Settings(**values), transport=emulator.transport(), kick=kick)


def drain(service: Any, record_ids: Iterable[str]) -> None:
    for rid in record_ids:
        while service.drain(rid).handed_over:
            pass


def apply_rounds(service: Any, rounds: Sequence[Sequence[dict[str, Any]]]) -> None:
    """Accept each round's events (one pipelined accept_all), then drain their records."""
    from statemachine import parse_event

    for events in rounds:
        if not events:
            continue
        service.accept_all([parse_event(raw) for raw in events])
        drain(service, dict.fromkeys(raw["subject"] for raw in events))


def populate_real(service: Any, emulator: Any, seed: int, start: int, stop: int,
                  progress: Callable[[int], None] | None = None,
                  life: str | None = None) -> None:
    """Records ``start`` .. ``stop - 1`` through accept_all + drain, BATCH at a time; each
    lives ``life`` when given, else its own (``life_of``)."""
    for first in range(start, stop, BATCH):
        lives = [life_events(seed, i, life) for i in range(first, min(first + BATCH, stop))]
        depth = max(len(rounds) for rounds in lives)
        apply_rounds(service, [[e for rounds in lives if r < len(rounds) for e in rounds[r]]
                               for r in range(depth)])
        emulator.reset()  # it remembers every request; the records no longer need it
        if progress is not None:
            progress(min(first + BATCH, stop))


# -- the clone path -----------------------------------------------------------------------


class Pattern:
    """A string with tokens to replace by strings of the same length."""

    __slots__ = ("pieces",)

    def __init__(self, text: str, tokens: re.Pattern[str]) -> None:
        self.pieces = tokens.split(text)

    def render(self, mapping: dict[str, str]) -> str:
        return "".join([mapping.get(piece, piece) for piece in self.pieces])


@dataclass
class Template:
    """The keys one record's life stored, under a scratch prefix, as patterns."""

    life: str
    kind: str
    tokens: tuple[str, ...]  # record id, channel id, provider id, number, its shard's tag
    hashes: list[tuple[Pattern, list[tuple[Pattern, Pattern]]]]
    lists: list[tuple[Pattern, list[Pattern]]]
    sets: list[tuple[Pattern, list[Pattern]]]
    zsets: list[tuple[Pattern, list[tuple[Pattern, float]]]]

    def mapping(self, seed: int, i: int) -> dict[str, str]:
        rid, cid, pid, num, tag = self.tokens
        return {rid: record_id(seed, i), cid: channel_id(seed, i),
                pid: provider_id(seed, i), num: number(i), tag: _tag(record_id(seed, i))}


TEMPLATE_BASE = 9_990_000  # template record numbers, far above any populated one


def make_templates(url: str, prefix: str, emulator: Any, seed: int,
                   history_limit: int | None = None) -> dict[tuple[str, str], Template]:
    """Run one record per (life, kind) through the real path under a scratch prefix each,
    read back every key it stored, then delete them."""
    client = redis.Redis.from_url(url, decode_responses=True)
    templates: dict[tuple[str, str], Template] = {}
    try:
        for t, (life, kind) in enumerate((life, kind) for life in LIFE_NAMES
                                         for kind in KINDS):
            i = TEMPLATE_BASE + t
            scratch = f"{prefix}-template{t:02d}"
            service = make_service(url, scratch, emulator, history_limit=history_limit)
            try:
                apply_rounds(service, life_events(seed, i, life, kind))
            finally:
                service.close()
                service.store.client.close()
            emulator.reset()
            tokens = (record_id(seed, i), channel_id(seed, i), provider_id(seed, i), number(i),
                      _tag(record_id(seed, i)))
            templates[(life, kind)] = _snapshot(client, scratch, life, kind, tokens)
    finally:
        client.close()
    return templates


def _tag(rid: str) -> str:
    """The hash tag of the record's shard (store v2 keys, default shards): clones go to
    their own shard, as the real path would put them."""
    from worker.keys import Keys

    return Keys().base_of(rid).split(":", 1)[1].removesuffix(":")


def _snapshot(client: redis.Redis, scratch: str, life: str, kind: str,
              tokens: tuple[str, ...]) -> Template:
    split = re.compile("(" + "|".join(re.escape(t) for t in tokens) + ")")
    template = Template(life, kind, tokens, [], [], [], [])
    names = sorted(client.scan_iter(match=f"{scratch}:*", count=1000))
    for name in names:
        suffix = Pattern(name.removeprefix(scratch), split)
        kind_of_key = client.type(name)
        if client.pttl(name) >= 0:
            if "}:c:" in name:
                continue  # a submit's claim on the record: transient, expires in a lease time
            raise RuntimeError(f"template key {name} expires: leases should be gone")
        if kind_of_key == "hash":
            fields = client.hgetall(name)
            template.hashes.append((suffix, [(Pattern(f, split), Pattern(v, split))
                                             for f, v in fields.items()]))
        elif kind_of_key == "list":
            template.lists.append((suffix, [Pattern(v, split)
                                            for v in client.lrange(name, 0, -1)]))
        elif kind_of_key == "set":
            template.sets.append((suffix, [Pattern(v, split)
                                           for v in sorted(client.smembers(name))]))
        elif kind_of_key == "zset":
            template.zsets.append((suffix, [(Pattern(m, split), s) for m, s in
                                            client.zrange(name, 0, -1, withscores=True)]))
        else:
            raise RuntimeError(f"template key {name} is a {kind_of_key}: not cloned")
    if names:
        client.delete(*names)
    return template


def populate_clone(client: redis.Redis, prefix: str, templates: dict[tuple[str, str], Template],
                   seed: int, start: int, stop: int, *, chunk: int = 1000,
                   progress: Callable[[int], None] | None = None,
                   life: str | None = None) -> None:
    """Records ``start`` .. ``stop - 1`` as copies of their (life, kind) template (every one
    ``life``'s when given).

    Keys shared by many records (indexes, the retry schedule) get every member of a chunk
    in one command; a record's own keys one command each, as the real path leaves them.
    Links hashes go through the store's link_add script (as commits add links)."""
    from worker.store.scripts import script_text

    link_add = client.register_script(script_text("link_add"))
    client.script_load(link_add.script)
    for first in range(start, stop, chunk):
        pipe = client.pipeline(transaction=False)
        shared: dict[str, list[str]] = defaultdict(list)
        scored: dict[str, dict[str, float]] = defaultdict(dict)
        for i in range(first, min(first + chunk, stop)):
            template = templates[(life or life_of(i), kind_of(i))]
            mapping = template.mapping(seed, i)
            for name, fields in template.hashes:
                key = prefix + name.render(mapping)
                if "}:k:" in key:  # a links hash: one record, or '*' and a set of them
                    for f, v in fields:
                        pipe.evalsha(link_add.sha, 1, key, f.render(mapping), v.render(mapping))
                    continue
                pipe.hset(key, mapping={f.render(mapping): v.render(mapping) for f, v in fields})
            for name, values in template.lists:
                pipe.rpush(prefix + name.render(mapping), *[v.render(mapping) for v in values])
            for name, members in template.sets:
                key = prefix + name.render(mapping)
                rendered = [m.render(mapping) for m in members]
                if len(name.pieces) == 1:  # a key no token names: shared by many records
                    shared[key].extend(rendered)
                else:
                    pipe.sadd(key, *rendered)
            for name, pairs in template.zsets:
                scored[prefix + name.render(mapping)].update(
                    {m.render(mapping): s for m, s in pairs})
        for key, members in shared.items():
            pipe.sadd(key, *members)
        for key, pairs in scored.items():
            pipe.zadd(key, pairs)
        pipe.execute()
        if progress is not None:
            progress(min(first + chunk, stop))


# -- measuring ----------------------------------------------------------------------------


def used_memory(client: redis.Redis) -> dict[str, int]:
    info = client.info("memory")
    return {name: int(info[name]) for name in ("used_memory", "used_memory_rss",
                                                "used_memory_dataset")}


def memory_usage(client: redis.Redis, key: str) -> int:
    """MEMORY USAGE with every element counted (SAMPLES 0); 0 for a missing key."""
    value = client.execute_command("MEMORY", "USAGE", key, "SAMPLES", "0")
    return int(value or 0)


class Progress:
    """Prints ``label: done/total (rate/s)`` now and then on one line."""

    def __init__(self, label: str, start: int, total: int) -> None:
        self.label, self.start, self.total = label, start, total
        self.began = self.last = time.monotonic()

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if now - self.last < 2 and done < self.total:
            return
        self.last = now
        rate = (done - self.start) / max(now - self.began, 1e-9)
        print(f"\r  {self.label}: {done:,}/{self.total:,} ({rate:,.0f} records/s)",
              end="" if done < self.total else "\n", flush=True)
