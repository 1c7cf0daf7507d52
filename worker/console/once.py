"""One-time login links: ``provisioning demo --console`` prints
``http://127.0.0.1:<port>/ui/login/once?code=<code>``; its first use starts a session for
the name and role it was issued for, and no later use does (the code is deleted in the
same transaction that reads it; it also expires after ``ttl`` seconds unused). Redis
keeps only the SHA-256 of the code."""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import cast

import redis

from worker.http.auth import Identity, Role
from worker.keys import Keys
from worker.store.translate import translated

ONCE_SECONDS = 600.0


def _digest(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


class OneTimeLogins:
    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client = client
        self.keys = keys

    def issue(self, name: str, role: Role, ttl: float = ONCE_SECONDS) -> str:
        """A new code for ``name`` with ``role``, good once within ``ttl`` seconds."""
        code = secrets.token_urlsafe(32)
        with translated():
            self.client.set(self.keys.console_once(_digest(code)),
                            json.dumps({"name": name, "role": role.label}),
                            px=max(1, int(ttl * 1000)))
        return code

    def redeem(self, code: str) -> Identity | None:
        """The identity of a valid, unused code (used up now); None for anything else."""
        if not code or len(code) > 200:
            return None
        key = self.keys.console_once(_digest(code))
        with translated():
            pipe = self.client.pipeline(transaction=True)
            pipe.get(key)
            pipe.delete(key)
            raw, _ = cast(list[str | None], pipe.execute())
        if raw is None:
            return None
        data = json.loads(raw)
        return Identity(name=str(data["name"]), role=Role.parse(str(data["role"])), via="once")
