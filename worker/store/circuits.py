"""Where every process's backend circuits are seen from outside (``provisioning health``).

A process whose circuit of a backend is not closed keeps a key
``<prefix>:{circuit}:<backend>:<host:pid>`` (JSON: state, since, until, failures, reason)
that expires a little after its cool-down would end, so a killed process's entry goes by
itself; closing the circuit deletes it. The ``<prefix>:{circuit}:index`` zset (the same
slot) names each key (``<backend>:<holder>``, scored by its expiry), so reading them costs
two round trips instead of a SCAN of the keyspace (70 ms with 100,000 records, on every
health check, metrics scrape and console overview); members past their expiry are dropped
on read.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, cast

import redis

from worker.errors import StoreError
from worker.keys import Keys


@dataclass(frozen=True, slots=True)
class CircuitEntry:
    backend: str
    holder: str  # host:pid
    state: str  # open or half-open
    since: float  # epoch seconds
    failures: int
    reason: str


class CircuitBoard:
    """Reads and writes the circuit keys on Redis (a sync client)."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    def publish(self, backend: str, holder: str, state: str, failures: int, reason: str,
                ttl: float) -> None:
        value = json.dumps({"state": state, "since": time.time(), "failures": failures,
                            "reason": reason})
        px = max(1000, int(ttl * 1000))
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.set(self.keys.circuit(backend, holder), value, px=px)
            pipe.zadd(self.keys.circuits, {f"{backend}:{holder}": time.time() + px / 1000})
            pipe.execute()
        except redis.RedisError as exc:
            raise StoreError(f"could not publish the {backend} circuit: {exc}") from exc

    def clear(self, backend: str, holder: str) -> None:
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(self.keys.circuit(backend, holder))
            pipe.zrem(self.keys.circuits, f"{backend}:{holder}")
            pipe.execute()
        except redis.RedisError as exc:
            raise StoreError(f"could not clear the {backend} circuit: {exc}") from exc

    def read(self) -> list[CircuitEntry]:
        """Every process's circuit that is not closed, by backend then holder."""
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.zremrangebyscore(self.keys.circuits, "-inf", time.time())
            pipe.zrange(self.keys.circuits, 0, -1)
            _, members = pipe.execute()
            members = sorted(cast(list[str], members))
            values = cast(list[Any], self.client.mget(
                [self.keys.circuit(*m.split(":", 1)) for m in members])) if members else []
        except redis.RedisError as exc:
            raise StoreError(f"could not read the circuits: {exc}") from exc
        entries = []
        for member, raw in zip(members, values, strict=True):
            if raw is None:
                continue  # expired meanwhile
            backend, _, holder = member.partition(":")
            body = json.loads(raw)
            entries.append(CircuitEntry(backend, holder, str(body["state"]),
                                        float(body["since"]), int(body["failures"]),
                                        str(body.get("reason", ""))))
        return entries
