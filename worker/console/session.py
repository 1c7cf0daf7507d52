"""The console's session: a signed, expiring cookie that says who is logged in.

The cookie holds ``<payload>.<signature>``: the payload is URL-safe base64 of a small JSON
object (name, role, how the user signed in, the API token's id for a token login, the
CSRF token, when it was issued and when it expires), the signature HMAC-SHA256 of the
payload under PROVISIONING_CONSOLE_SESSION_SECRET (or a key made at random when the
process starts). A cookie whose signature does not verify, that has expired, or that is
malformed is no session at all. The CSRF token is random per session and must come back
in every POST's form (``csrf``): a page of another site can make the browser send the
cookie, never read the token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from worker.http.auth import Identity, Role

COOKIE = "provisioning_console"
LOGIN_COOKIE = "provisioning_console_login"  # the OIDC flow's state, nonce and verifier


@dataclass(frozen=True, slots=True)
class Session:
    """A logged-in user: who, the role they act with, and the session's CSRF token."""

    name: str
    role: Role
    via: str  # "token" or "oidc"
    csrf: str
    issued: float
    expires: float
    token_id: str | None = None  # a token login: the session ends when the token is revoked

    @property
    def identity(self) -> Identity:
        return Identity(name=self.name, role=self.role, via=self.via)


class Signer:
    """Signs and reads back small JSON objects with HMAC-SHA256 (constant-time compare)."""

    def __init__(self, secret: str | None) -> None:
        self.key = (secret or secrets.token_urlsafe(48)).encode()
        self.generated = secret is None

    def sign(self, payload: dict[str, object]) -> str:
        text = base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":"))
                                        .encode()).decode().rstrip("=")
        return f"{text}.{self._mac(text)}"

    def read(self, cookie: str) -> dict[str, object] | None:
        """The payload of a cookie this signer signed; None for anything else."""
        text, _, mac = cookie.partition(".")
        if not text or not hmac.compare_digest(mac, self._mac(text)):
            return None
        try:
            value = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        except (binascii.Error, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def _mac(self, text: str) -> str:
        digest = hmac.new(self.key, text.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")


class Sessions:
    """Makes and reads session cookies; ``lifetime`` seconds from logging in."""

    def __init__(self, signer: Signer, lifetime: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.signer = signer
        self.lifetime = lifetime
        self.clock = clock

    def start(self, identity: Identity, token_id: str | None = None,
              until: float | None = None) -> tuple[Session, str]:
        """A new session for ``identity`` (a fresh CSRF token) and its cookie value; it
        ends after the lifetime, or at ``until`` when that is sooner (a token's expiry)."""
        now = self.clock()
        expires = now + self.lifetime if until is None else min(now + self.lifetime, until)
        session = Session(name=identity.name, role=identity.role, via=identity.via,
                          csrf=secrets.token_urlsafe(32), issued=now,
                          expires=expires, token_id=token_id)
        return session, self.signer.sign({
            "n": session.name, "r": session.role.label, "v": session.via, "c": session.csrf,
            "i": session.issued, "e": session.expires, "t": session.token_id})

    def read(self, cookie: str | None) -> Session | None:
        """The session of a valid, unexpired cookie; None otherwise."""
        data = self.signer.read(cookie) if cookie else None
        if data is None:
            return None
        try:
            session = Session(name=str(data["n"]), role=Role.parse(str(data["r"])),
                              via=str(data["v"]), csrf=str(data["c"]),
                              issued=float(data["i"]),  # type: ignore[arg-type]
                              expires=float(data["e"]),  # type: ignore[arg-type]
                              token_id=None if data.get("t") is None else str(data["t"]))
        except (KeyError, TypeError, ValueError):
            return None
        return session if self.clock() < session.expires else None

    def csrf_ok(self, session: Session, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(session.csrf, presented or "")
