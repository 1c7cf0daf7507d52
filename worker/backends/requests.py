"""What SPEC §4 asks of each step: its request, the statuses that mean success, and what
a success body must carry (a 2xx whose body is wrong is a permanent InvalidResponse)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from statemachine.effects import BackendCall, BackendStep
from statemachine.table import PROVISIONING_RESPONSE_MAX
from statemachine.text import truncate
from worker.backends.errors import BackendNotConfigured, InvalidCallError, InvalidResponseError
from worker.settings import BackendSettings

# How much of a failing response body is kept. Well under EXCEPTION_DETAILS_MAX, so the
# step, status and attempt lines of details() are never the part that gets cut.
BODY_START_MAX = 4000


@dataclass(frozen=True)
class Payload:
    """What a success body carries for the caller."""

    response: str | None = None
    test_id: str | None = None


@dataclass(frozen=True)
class Request:
    """One step's HTTP request, the statuses that mean success, and how to read them."""

    method: str
    url: str
    json: dict[str, Any] | None
    success: frozenset[int]
    parse: Callable[[httpx.Response], Payload] = field(repr=False)


def request_for(s: BackendSettings, call: BackendCall) -> Request:
    """The HTTP request of SPEC §4 for ``call``; raises BackendNotConfigured when the
    step's base URL is not set, InvalidCallError when ``call`` lacks a field it needs."""
    step = call.step
    if step in (BackendStep.PROVISION_CHANNEL, BackendStep.DEPROVISION_CHANNEL):
        if call.kind is None or not call.channel_id:
            raise InvalidCallError(f"{step.value} needs kind and channel_id")
        url = _join(s.provisioner_url, "provisioner", "v1", "channels",
                    call.kind.value, call.channel_id)
        if step is BackendStep.DEPROVISION_CHANNEL:
            # 404: the channel is already gone, which is what we wanted.
            return Request("DELETE", url, None, frozenset({200, 202, 204, 404}), _no_body)
        if call.name is None:
            raise InvalidCallError("provision_channel needs name")
        body = {"record_id": call.record_id, "name": call.name, "links": dict(call.links)}
        return Request("PUT", url, body, frozenset({200, 201}), _provisioning_response)
    if step is BackendStep.ACTIVATE_GATE:
        url = _join(s.gatekeeper_url, "gatekeeper", "v1", "gates", call.record_id)
        return Request("PUT", url, {"status": "Active"}, frozenset({200}), _gate_active)
    if step is BackendStep.DEACTIVATE_GATE:
        url = _join(s.gatekeeper_url, "gatekeeper", "v1", "gates", call.record_id)
        body = {"status": "Inactive", "reason": "Deprovisioned"}
        # 404: the gate was never activated, so there is nothing to deactivate.
        return Request("PUT", url, body, frozenset({200, 404}), _no_body)
    if step is BackendStep.START_CALLING_TEST:
        if not call.phone_number_id:
            raise InvalidCallError("start_calling_test needs phone_number_id")
        url = _join(s.calling_test_url, "calling test", "v1", "calling-tests")
        body = {"record_id": call.record_id, "phone_number_id": call.phone_number_id}
        return Request("POST", url, body, frozenset({202}), _calling_test_id)
    raise InvalidCallError(f"unknown step {step!r}")  # pragma: no cover - exhaustive


def _join(base_url: str | None, backend: str, *segments: str) -> str:
    """``base_url`` plus quoted path segments, whether or not the base ends with a slash."""
    if not base_url:
        raise BackendNotConfigured(f"the {backend} base URL is not configured")
    path = "/".join(quote(segment, safe="") for segment in segments)
    return f"{base_url.rstrip('/')}/{path}"


def body_start(response: httpx.Response) -> str:
    return truncate(response.text, BODY_START_MAX)


def _json_object(response: httpx.Response) -> Mapping[str, Any]:
    try:
        body = json.loads(response.content)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidResponseError(f"body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidResponseError(f"body is a JSON {type(body).__name__}, not an object")
    return body


def _no_body(response: httpx.Response) -> Payload:
    """Deprovisioning answers are judged by status alone (SPEC §4 names no body)."""
    return Payload()


def _provisioning_response(response: httpx.Response) -> Payload:
    text = _json_object(response).get("response")
    if not isinstance(text, str):
        raise InvalidResponseError('"response" is missing or not a string')
    return Payload(response=truncate(text, PROVISIONING_RESPONSE_MAX))


def _gate_active(response: httpx.Response) -> Payload:
    body = _json_object(response)
    if body.get("status") != "Active" or body.get("reason") != "Running":
        raise InvalidResponseError(
            f'expected status "Active" and reason "Running", got status '
            f'{body.get("status")!r} and reason {body.get("reason")!r}'
        )
    return Payload()


def _calling_test_id(response: httpx.Response) -> Payload:
    test_id = _json_object(response).get("test_id")
    if not isinstance(test_id, str) or not test_id.strip():
        raise InvalidResponseError('"test_id" is missing or not a non-empty string')
    return Payload(test_id=test_id)
