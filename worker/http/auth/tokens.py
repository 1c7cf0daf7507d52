"""API tokens (SPEC §8): created by ``provisioning token create``, kept in Redis as a hash.

A token reads ``pst_<id>_<secret>``: ``id`` (12 hex) finds its entry, ``secret`` (43
url-safe characters, 256 random bits) proves it. Only SHA-256 of the secret is stored
(the secret is random, so a slow password hash adds nothing), and it is compared with
``hmac.compare_digest``, in constant time. Revoking deletes the entry: the next request
with the token is refused. The last use is written at most once a minute per token, so
checking a token costs one read (HGETALL) and almost never a write.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import redis

from statemachine import format_time
from worker.errors import StoreError
from worker.http.auth.errors import TokenExists
from worker.http.auth.roles import Role
from worker.keys import Keys

PREFIX = "pst_"
_TOKEN = re.compile(r"^pst_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
TOUCH_SECONDS = 60.0  # last use is written at most this often per token


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def _moment(epoch: float | None) -> str | None:
    return None if epoch is None else format_time(datetime.fromtimestamp(epoch, UTC))


@dataclass(frozen=True, slots=True)
class ApiToken:
    """A token's entry: what ``token list`` shows. The hash stays out of the repr."""

    token_id: str
    name: str
    role: Role
    created_at: float
    expires_at: float | None = None
    last_used_at: float | None = None
    digest: str = field(default="", repr=False)

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def to_json(self) -> dict[str, Any]:
        """``token list --json``: never the token, never its hash."""
        return {"name": self.name, "role": self.role.label,
                "created": _moment(self.created_at), "expires": _moment(self.expires_at),
                "last_used": _moment(self.last_used_at)}


@dataclass(frozen=True, slots=True)
class NewToken:
    """A token just created: the only time the token itself exists outside its holder."""

    token: str = field(repr=False)
    entry: ApiToken


def valid_name(name: str) -> str:
    """The name, or ValueError saying what a name may hold."""
    if not NAME.match(name):
        raise ValueError(f"not a token name: {name!r} (1-64 letters, digits, '.', '_', '@' "
                         "or '-', starting with a letter or digit)")
    return name


class RedisTokenStore:
    """API tokens on the record store's Redis (keys in worker/keys.py)."""

    def __init__(self, client: redis.Redis, keys: Keys,
                 clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.keys = keys
        self.clock = clock

    def create(self, name: str, role: Role, *, expires_in: float | None = None) -> NewToken:
        """A new token for ``name``; TokenExists when the name has one (revoke it first)."""
        valid_name(name)
        if expires_in is not None and expires_in <= 0:
            raise ValueError(f"expires in must be positive, not {expires_in:g}")
        token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        now = self.clock()
        entry = ApiToken(token_id, name, role, now,
                         None if expires_in is None else now + expires_in,
                         digest=_digest(secret))
        try:
            if not self.client.hsetnx(self.keys.api_tokens, name, token_id):
                raise TokenExists(f"a token named {name!r} exists; revoke it first")
            fields: dict[Any, Any] = {"name": name, "role": role.label,
                                      "hash": entry.digest, "created": repr(now)}
            if entry.expires_at is not None:
                fields["expires"] = repr(entry.expires_at)
            self.client.hset(self.keys.api_token(token_id), mapping=fields)
        except redis.RedisError as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}") from exc
        return NewToken(f"{PREFIX}{token_id}_{secret}", entry)

    def entries(self) -> list[ApiToken]:
        """Every token's entry, by name."""
        try:
            names = cast(dict[str, str], self.client.hgetall(self.keys.api_tokens))
            pipe = self.client.pipeline(transaction=False)
            for token_id in names.values():
                pipe.hgetall(self.keys.api_token(token_id))
            rows = pipe.execute() if names else []
        except redis.RedisError as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}") from exc
        entries = [_entry(token_id, row) for token_id, row in zip(names.values(), rows,
                                                                   strict=True) if row]
        return sorted(entries, key=lambda entry: entry.name)

    def revoke(self, name: str) -> bool:
        """Delete the token named ``name``; False when there is none."""
        try:
            token_id = cast(str | None, self.client.hget(self.keys.api_tokens, name))
            if token_id is None:
                return False
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(self.keys.api_token(token_id))
            pipe.hdel(self.keys.api_tokens, name)
            pipe.execute()
        except redis.RedisError as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}") from exc
        return True

    def exists(self, token_id: str) -> bool:
        """Whether the token with this id is still there (not revoked); one EXISTS. The
        console checks it on each request of a session started with the token."""
        try:
            return bool(self.client.exists(self.keys.api_token(token_id)))
        except redis.RedisError as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}") from exc

    def verify(self, presented: str) -> ApiToken | None:
        """The entry of a valid, unexpired token; None for anything else."""
        match = _TOKEN.match(presented)
        if match is None:
            return None
        token_id, secret = match.groups()
        try:
            row = cast(dict[str, str], self.client.hgetall(self.keys.api_token(token_id)))
        except redis.RedisError as exc:
            raise StoreError(f"{type(exc).__name__}: {exc}") from exc
        if not row:
            return None
        entry = _entry(token_id, row)
        if not hmac.compare_digest(_digest(secret), entry.digest):
            return None
        now = self.clock()
        if entry.expired(now):
            return None
        if entry.last_used_at is None or now - entry.last_used_at >= TOUCH_SECONDS:
            try:
                self.client.hset(self.keys.api_token(token_id), "last_used", repr(now))
            except redis.RedisError as exc:
                raise StoreError(f"{type(exc).__name__}: {exc}") from exc
        return entry


def _entry(token_id: str, row: dict[str, str]) -> ApiToken:
    def moment(name: str) -> float | None:
        value = row.get(name)
        return float(value) if value else None

    return ApiToken(token_id=token_id, name=row.get("name", ""),
                    role=Role.parse(row.get("role", "reader")),
                    created_at=float(row.get("created", "0")),
                    expires_at=moment("expires"), last_used_at=moment("last_used"),
                    digest=row.get("hash", ""))
