"""Which backend request a request is (SPEC §4), its body checked as the real backend
would: :func:`route` returns a :class:`Route` or raises :class:`BadRequest` carrying the
400, 404 or 405 the request gets.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from statemachine import BackendStep, ChannelKind
from worker.emulators.serving import Reply

__all__ = ["BadRequest", "Route", "loads_or_none", "route_of"]


@dataclass(frozen=True)
class Route:
    """A backend request, understood: which step, on what, with what body."""

    step: BackendStep
    targets: tuple[str, ...]  # what a script may be keyed by, most specific first
    payload: dict[str, Any] | None
    kind: str = ""
    channel_id: str = ""
    record_id: str = ""


class BadRequest(Exception):
    """Ends the handling of a malformed request with the Reply it gets."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.reply = Reply.of(status, {"error": message})


def loads_or_none(body: bytes) -> object:
    """The JSON value of ``body``, or None when it is empty or not JSON."""
    try:
        return json.loads(body) if body else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(400, f"body is not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise BadRequest(400, "body must be a JSON object")
    return payload


def _require_str(payload: Mapping[str, Any], name: str) -> str:
    value = payload.get(name)
    if not isinstance(value, str) or not value:
        raise BadRequest(400, f'"{name}" must be a non-empty string')
    return value


def route_of(method: str, segments: Sequence[str], body: bytes) -> Route:
    """Which backend step a request is, checking its body as the real backend would."""
    match segments:
        case ("v1", "channels", kind, channel_id):
            if kind not in {k.value for k in ChannelKind}:
                raise BadRequest(400, f"unknown channel kind {kind!r}")
            if method == "DELETE":
                return Route(BackendStep.DEPROVISION_CHANNEL, (channel_id,), None,
                             kind=kind, channel_id=channel_id)
            if method != "PUT":
                raise BadRequest(405, f"{method} not allowed")
            payload = _json_object(body)
            record_id = _require_str(payload, "record_id")
            name, links = payload.get("name"), payload.get("links", {})
            if not isinstance(name, str):
                raise BadRequest(400, '"name" must be a string')
            if not isinstance(links, dict) or not all(
                v is None or isinstance(v, str) for v in links.values()
            ):
                raise BadRequest(400, '"links" must map columns to ids or null')
            return Route(BackendStep.PROVISION_CHANNEL, (channel_id, record_id), payload,
                         kind=kind, channel_id=channel_id, record_id=record_id)
        case ("v1", "gates", record_id):
            if method != "PUT":
                raise BadRequest(405, f"{method} not allowed")
            payload = _json_object(body)
            status, reason = payload.get("status"), payload.get("reason")
            if status == "Active" and reason in (None, "Running"):
                step = BackendStep.ACTIVATE_GATE
            elif status == "Inactive" and reason == "Deprovisioned":
                step = BackendStep.DEACTIVATE_GATE
            else:
                raise BadRequest(400, 'expected {"status": "Active"} or '
                                      '{"status": "Inactive", "reason": "Deprovisioned"}')
            return Route(step, (record_id,), payload, record_id=record_id)
        case ("v1", "calling-tests"):
            if method != "POST":
                raise BadRequest(405, f"{method} not allowed")
            payload = _json_object(body)
            record_id = _require_str(payload, "record_id")
            _require_str(payload, "phone_number_id")
            return Route(BackendStep.START_CALLING_TEST, (record_id,), payload,
                         record_id=record_id)
    raise BadRequest(404, "not found")
