"""What the emulated Dataverse organization holds between requests: its rows and the row
version counter, the tokens it issued, each client's service protection window, the
calls it answered and the faults scripted for the next ones.

Plain values; ``DataverseEmulator`` guards them with its lock and replaces the whole
:class:`OrganizationState` on reset.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from worker.emulators.dataverse_rows import FIRST_ROWVERSION
from worker.emulators.dataverse_wire import UNAVAILABLE

__all__ = ["Fault", "OrganizationState", "RecordedCall", "Token", "Window"]


@dataclass(frozen=True)
class Fault:
    """A scripted answer: ``status`` with the error shape, and optional headers."""

    status: int
    code: str = UNAVAILABLE
    message: str = "scripted fault"
    headers: tuple[tuple[str, str], ...] = ()
    method: str | None = None  # only a request with this method takes it (None: any)


@dataclass(frozen=True)
class RecordedCall:
    """One API request the emulator answered (token requests included)."""

    method: str
    path: str
    query: str
    status: int
    body: object
    if_match: str | None
    record_id: str | None
    at: float

    def as_json(self) -> dict[str, object]:
        return {"method": self.method, "path": self.path, "query": self.query,
                "status": self.status, "body": self.body, "if_match": self.if_match,
                "record_id": self.record_id, "at": self.at}


@dataclass
class Token:
    """A bearer token the token endpoint issued."""

    client_id: str
    scope: str
    expires_at: float


@dataclass
class Window:
    """One client's service protection window: when it started, requests counted in it."""

    started: float = 0.0
    count: int = 0


@dataclass
class OrganizationState:
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    rowversion: int = FIRST_ROWVERSION - 1
    tokens: dict[str, Token] = field(default_factory=dict)
    windows: dict[str, Window] = field(default_factory=dict)
    calls: list[RecordedCall] = field(default_factory=list)
    faults: deque[Fault] = field(default_factory=deque)
    outage: int | None = None
    tokens_issued: int = 0
