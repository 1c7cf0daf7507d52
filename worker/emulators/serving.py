"""What both emulators share on the wire: the :class:`Reply` they answer, and the
:class:`Responder` that answers a request.

A reply is independent of how it is sent: the same ``Reply`` goes out through the asyncio
server of ``aserving`` (real HTTP) or through an in-process ``httpx.MockTransport``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from email.message import Message
from typing import Protocol

import structlog

__all__ = ["JSON", "Reply", "Responder"]

log = structlog.get_logger(__name__)

JSON = "application/json"


@dataclass(frozen=True)
class Reply:
    """An HTTP answer, independent of the server or transport that sends it."""

    status: int
    content: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(
        cls, status: int, body: object = None, headers: Iterable[tuple[str, str]] = (), *,
        content_type: str = JSON,
    ) -> Reply:
        """``body`` encoded: None is no content, a ``str`` is sent as text/plain, anything
        else as JSON with ``content_type``. The Content-Type header comes first, then
        ``headers`` in order."""
        extra = tuple(headers)
        if status == 204 or body is None:  # RFC 9110: a 204 has no content
            return cls(status, b"", extra)
        if isinstance(body, str):
            return cls(status, body.encode(), (("Content-Type", "text/plain"), *extra))
        return cls(status, json.dumps(body).encode(), (("Content-Type", content_type), *extra))


class Responder(Protocol):
    """Answers one request: method, request target (path and query), body, headers."""

    def __call__(self, method: str, raw_path: str, body: bytes, headers: Message) -> Reply: ...
