"""The Dataverse emulator's admin API: scripting a running server over HTTP (not counted,
no token needed). Every endpoint calls one public method of the emulator:

    POST   /_dataverse/metadata        plant(change)     make the metadata differ (a column)
    GET    /_dataverse/rows            rows()            every row, read form
    POST   /_dataverse/rows            seed(rows)        a list of read-form rows; their etags
    POST   /_dataverse/edit            edit(id, changes) {"id", "changes"}: another user's change
    POST   /_dataverse/outage          start_outage()    {"status": 503}
    DELETE /_dataverse/outage          end_outage()
    POST   /_dataverse/budget          set_budget()      {"requests", "window_seconds"}
    POST   /_dataverse/revoke-tokens   revoke_tokens()
    GET    /_dataverse/requests        calls             the recorded calls, oldest first
    POST   /_dataverse/reset           reset()

A malformed body is a 400 and an unknown endpoint a 404, both ``{"error": {"code":
"admin", "message"}}``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from worker.emulators.dataverse_state import RecordedCall
from worker.emulators.dataverse_wire import loads, reply
from worker.emulators.serving import Reply

__all__ = ["Administered", "admin"]


class Administered(Protocol):
    """The emulator's public methods the admin API calls (``DataverseEmulator``'s)."""

    def rows(self) -> dict[str, dict[str, Any]]: ...

    def seed(self, rows: Iterable[Mapping[str, Any]]) -> list[str]: ...

    def edit(self, record_id: str, changes: Mapping[str, Any]) -> str: ...

    def start_outage(self, status: int = 503) -> None: ...

    def end_outage(self) -> None: ...

    def set_budget(self, requests: int | None, window_seconds: float | None = None) -> None: ...

    def revoke_tokens(self) -> None: ...

    @property
    def calls(self) -> tuple[RecordedCall, ...]: ...

    def reset(self) -> None: ...

    def plant(self, change: Mapping[str, Any]) -> None: ...


def admin(emulator: Administered, method: str, action: str, body: bytes) -> Reply:
    """Answer ``method /_dataverse/<action>`` by calling ``emulator``."""
    try:
        payload = loads(body)
        match (method, action):
            case ("GET", "rows"):
                return reply(200, list(emulator.rows().values()))
            case ("POST", "rows"):
                if not isinstance(payload, list):
                    raise ValueError("body must be a list of rows")
                return reply(200, {"etags": emulator.seed(payload)})
            case ("POST", "edit"):
                if not isinstance(payload, dict) or not isinstance(payload.get("changes"),
                                                                   dict):
                    raise ValueError('body must be {"id", "changes"}')
                return reply(200, {"etag": emulator.edit(str(payload.get("id")),
                                                         payload["changes"])})
            case ("POST", "outage"):
                status = payload.get("status", 503) if isinstance(payload, dict) else 503
                emulator.start_outage(int(status))
                return reply(200, {"ok": True})
            case ("DELETE", "outage"):
                emulator.end_outage()
                return reply(200, {"ok": True})
            case ("POST", "budget"):
                if not isinstance(payload, dict):
                    raise ValueError('body must be {"requests", "window_seconds"}')
                requests = payload.get("requests")
                emulator.set_budget(None if requests is None else int(requests),
                                    payload.get("window_seconds"))
                return reply(200, {"ok": True})
            case ("POST", "metadata"):
                if not isinstance(payload, dict):
                    raise ValueError('body must be {"column", <change>}')
                emulator.plant(payload)
                return reply(200, {"ok": True})
            case ("POST", "revoke-tokens"):
                emulator.revoke_tokens()
                return reply(200, {"ok": True})
            case ("GET", "requests"):
                return reply(200, [c.as_json() for c in emulator.calls])
            case ("POST", "reset"):
                emulator.reset()
                return reply(200, {"ok": True})
    except (ValueError, KeyError, TypeError) as exc:
        return reply(400, {"error": {"code": "admin", "message": str(exc)}})
    return reply(404, {"error": {"code": "admin",
                                 "message": f"no admin endpoint {method} {action}"}})
