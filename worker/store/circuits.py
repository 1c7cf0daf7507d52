"""Where every process's backend circuits are seen from outside (``provisioning health``).

A process whose circuit of a backend is not closed keeps a key
``<prefix>:{circuit}:<backend>:<host:pid>`` (JSON: state, since, until, failures, reason)
that expires a little after its cool-down would end, so a killed process's entry goes by
itself; closing the circuit deletes it.
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
        try:
            self.client.set(self.keys.circuit(backend, holder), value,
                            px=max(1000, int(ttl * 1000)))
        except redis.RedisError as exc:
            raise StoreError(f"could not publish the {backend} circuit: {exc}") from exc

    def clear(self, backend: str, holder: str) -> None:
        try:
            self.client.delete(self.keys.circuit(backend, holder))
        except redis.RedisError as exc:
            raise StoreError(f"could not clear the {backend} circuit: {exc}") from exc

    def read(self) -> list[CircuitEntry]:
        """Every process's circuit that is not closed, by backend then holder."""
        prefix = self.keys.circuit("", "")[:-2]
        try:
            names = sorted(cast(list[str], list(
                self.client.scan_iter(match=f"{prefix}:*", count=1000))))
            values = cast(list[Any], self.client.mget(names)) if names else []
        except redis.RedisError as exc:
            raise StoreError(f"could not read the circuits: {exc}") from exc
        entries = []
        for name, raw in zip(names, values, strict=True):
            if raw is None:
                continue  # expired meanwhile
            backend, _, holder = name[len(prefix) + 1:].partition(":")
            body = json.loads(raw)
            entries.append(CircuitEntry(backend, holder, str(body["state"]),
                                        float(body["since"]), int(body["failures"]),
                                        str(body.get("reason", ""))))
        return entries
