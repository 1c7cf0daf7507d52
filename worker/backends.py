"""The HTTP client of the three backends: provisioner, GateKeeper, calling test (SPEC §4).

``Backends.call`` carries out one :class:`~statemachine.effects.BackendCall` and always
answers with a :class:`CallResult`; HTTP and network problems never escape as exceptions.
Contract of one call:

- every request carries ``Idempotency-Key: <call.idempotency_key>``, the same on every try;
- connection errors, timeouts, 408, 425, 429 and 5xx are transient: the call is tried up to
  ``max_tries`` times, sleeping between tries with exponential backoff and full jitter, or for
  the server's ``Retry-After`` (capped) when it sends one;
- any other status that is not a success of the step (other 4xx, and 3xx: redirects are not
  followed) is permanent and is not retried;
- a success status whose body is not what SPEC §4 says is a permanent ``InvalidResponse``;
- a step whose base URL is not configured fails permanently with ``NotConfigured``.

Exceptions (the tree; only :class:`InvalidCallError` leaves ``call()``, the others become
``CallResult(ok=False)``)::

    BackendError
     ├── BackendNotConfigured  a step's base URL is not set      -> error_class "NotConfigured"
     ├── InvalidResponseError  a success status with a bad body  -> error_class "InvalidResponse"
     └── InvalidCallError      a BackendCall lacking a field its step needs (a bug; raised)
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import httpx
import structlog

from statemachine.effects import BackendCall, BackendStep
from statemachine.table import (
    ERROR_MESSAGE_MAX,
    EXCEPTION_DETAILS_MAX,
    PROVISIONING_RESPONSE_MAX,
)
from statemachine.text import truncate

__all__ = [
    "BackendError",
    "BackendNotConfigured",
    "BackendSettings",
    "Backends",
    "CallFailure",
    "CallResult",
    "InvalidCallError",
    "InvalidResponseError",
]

log = structlog.get_logger(__name__)

# How much of a failing response body is kept. Well under EXCEPTION_DETAILS_MAX, so the
# step, status and attempt lines of details() are never the part that gets cut.
BODY_START_MAX = 4000

# SPEC §4: these statuses are transient along with connection errors and timeouts.
TRANSIENT_STATUSES = frozenset({408, 425, 429})

IDEMPOTENCY_HEADER = "Idempotency-Key"


class BackendError(Exception):
    """Root of this module's exceptions."""


class BackendNotConfigured(BackendError):
    """The base URL of the backend a step needs is not configured."""


class InvalidResponseError(BackendError):
    """A success status whose body is not what SPEC §4 says for the step."""


class InvalidCallError(BackendError, ValueError):
    """A BackendCall without a field its step needs; the core never builds one."""


@dataclass(frozen=True)
class BackendSettings:
    """Where the backends are and how patiently to call them.

    SPEC §4 asks for at least 3 in-task tries of a step; the default allows 4.
    """

    provisioner_url: str | None
    gatekeeper_url: str | None
    calling_test_url: str | None
    connect_timeout: float = 3.0
    read_timeout: float = 10.0
    max_tries: int = 4
    backoff_base: float = 0.2
    backoff_cap: float = 5.0
    retry_after_cap: float = 10.0

    def __post_init__(self) -> None:
        if self.max_tries < 1:
            raise ValueError(f"max_tries must be at least 1, not {self.max_tries}")
        for name in ("connect_timeout", "read_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name in ("backoff_base", "backoff_cap", "retry_after_cap"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")

    @property
    def timeout(self) -> httpx.Timeout:
        """Connect timeout, and the read timeout for reading, writing and the pool."""
        return httpx.Timeout(self.read_timeout, connect=self.connect_timeout)


@dataclass(frozen=True)
class CallFailure:
    """Why a call failed for good, in the terms msdyn_exceptiondetails needs (SPEC §4)."""

    step: BackendStep
    transient: bool
    status: int | None
    error_class: str
    body_start: str
    attempts: int
    reason: str = ""  # what was wrong, when status and body do not say it

    def details(self) -> str:
        """Multi-line text for msdyn_exceptiondetails; always fits EXCEPTION_DETAILS_MAX."""
        kind = "transient, tries exhausted" if self.transient else "permanent"
        lines = [
            f"step: {self.step.value}",
            f"error: {self.error_class} ({kind})",
            f"status: {self.status if self.status is not None else 'none'}",
            f"attempts: {self.attempts}",
        ]
        if self.reason:
            lines.append(f"reason: {self.reason}")
        lines.append("body start:")
        lines.append(self.body_start)
        return truncate("\n".join(lines), EXCEPTION_DETAILS_MAX)

    def summary(self) -> str:
        """One line for msdyn_errormessage: the step and the status or error class."""
        text = f"{self.step.value} failed: {self.error_class}"
        if self.status is not None and not self.error_class.startswith("HTTP "):
            text += f" (HTTP {self.status})"
        if self.attempts > 1:
            text += f" after {self.attempts} tries"
        return truncate(" ".join(text.split()), ERROR_MESSAGE_MAX)


@dataclass(frozen=True)
class CallResult:
    """The outcome of one call: ``ok`` with what the step returns, or its ``failure``."""

    step: BackendStep
    ok: bool
    response: str | None = None
    test_id: str | None = None
    failure: CallFailure | None = None
    attempts: int = 1


@dataclass(frozen=True)
class _Payload:
    """What a success body carries for the caller."""

    response: str | None = None
    test_id: str | None = None


@dataclass(frozen=True)
class _Request:
    method: str
    url: str
    json: dict[str, Any] | None
    success: frozenset[int]
    parse: Callable[[httpx.Response], _Payload] = field(repr=False)


@dataclass(frozen=True)
class _Try:
    """What one try came to; ``result`` is set when the call is over."""

    result: CallResult | None
    failure: CallFailure | None = None
    retry_after: float | None = None


class Backends:
    """One long-lived httpx client for the three backends; see the module docstring.

    A client passed in belongs to the caller (tests pass a MockTransport or the emulator);
    ``close()`` closes only a client this object built. ``sleep`` and ``rng`` are injected
    so that tests observe the backoff without waiting for it.
    """

    def __init__(
        self,
        settings: BackendSettings,
        client: httpx.Client | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        owns_client: bool | None = None,
    ) -> None:
        self._settings = settings
        # A client built here is closed by close(); a given one too when owns_client says so.
        self._owns_client = client is None if owns_client is None else owns_client
        self._client = client if client is not None else httpx.Client(timeout=settings.timeout)
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the client if this object built it."""
        if self._owns_client:
            self._client.close()

    def call(self, call: BackendCall) -> CallResult:
        """Carry out ``call`` with in-task retries; never raises for HTTP or network problems.

        Raises :class:`InvalidCallError` only for a call that lacks a field its step needs.
        """
        try:
            request = self._request_for(call)
        except BackendNotConfigured as exc:
            log.warning("backend.not_configured", step=call.step.value,
                        idempotency_key=call.idempotency_key)
            return _failed(CallFailure(call.step, transient=False, status=None,
                                       error_class="NotConfigured", body_start="", attempts=0,
                                       reason=str(exc)))

        attempt = 0
        while True:
            attempt += 1
            outcome = self._try(call, request, attempt)
            if outcome.result is not None:
                return outcome.result
            assert outcome.failure is not None
            if attempt >= self._settings.max_tries:
                return _failed(outcome.failure)
            self._sleep(self._delay(attempt, outcome.retry_after))

    def _try(self, call: BackendCall, request: _Request, attempt: int) -> _Try:
        """One try: a final result, or a transient failure to retry."""
        bound = log.bind(step=call.step.value, attempt=attempt,
                         idempotency_key=call.idempotency_key,
                         method=request.method, url=_loggable(request.url))
        started = time.monotonic()
        try:
            response = self._client.request(
                request.method,
                request.url,
                json=request.json,
                headers={IDEMPOTENCY_HEADER: call.idempotency_key, "Accept": "application/json"},
                timeout=self._settings.timeout,
            )
        except (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.InvalidURL,
                httpx.DecodingError, httpx.TooManyRedirects) as exc:
            # Our own request or the configured URL is wrong, or the answer cannot be
            # decoded: trying again cannot help.
            bound.warning("backend.try", status=None, error_class=type(exc).__name__,
                          error=str(exc))
            failure = CallFailure(call.step, transient=False, status=None,
                                  error_class=type(exc).__name__, body_start="",
                                  attempts=attempt, reason=str(exc))
            return _Try(_failed(failure))
        except httpx.TransportError as exc:
            # Connect errors, timeouts, a dropped connection. Trying again is safe even if
            # the backend acted on the request: the Idempotency-Key makes it replay.
            bound.warning("backend.try", status=None, error_class=type(exc).__name__,
                          error=str(exc), transient=True)
            failure = CallFailure(call.step, transient=True, status=None,
                                  error_class=type(exc).__name__, body_start="",
                                  attempts=attempt, reason=str(exc))
            return _Try(None, failure)

        elapsed_ms = round((time.monotonic() - started) * 1000, 1)
        status = response.status_code
        bound = bound.bind(status=status, elapsed_ms=elapsed_ms)
        if status in request.success:
            try:
                payload = request.parse(response)
            except InvalidResponseError as exc:
                bound.warning("backend.try", error_class="InvalidResponse", error=str(exc))
                failure = CallFailure(call.step, transient=False, status=status,
                                      error_class="InvalidResponse",
                                      body_start=_body_start(response), attempts=attempt,
                                      reason=str(exc))
                return _Try(_failed(failure))
            bound.info("backend.try")
            return _Try(CallResult(call.step, ok=True, response=payload.response,
                                   test_id=payload.test_id, attempts=attempt))

        transient = status in TRANSIENT_STATUSES or status >= 500
        bound.warning("backend.try", error_class=f"HTTP {status}", transient=transient)
        failure = CallFailure(call.step, transient=transient, status=status,
                              error_class=f"HTTP {status}", body_start=_body_start(response),
                              attempts=attempt)
        if not transient:
            return _Try(_failed(failure))
        return _Try(None, failure, _retry_after(response.headers, self._settings.retry_after_cap))

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before try ``attempt + 1``.

        The server's Retry-After wins when given (already capped); otherwise exponential
        backoff with full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter").
        """
        if retry_after is not None:
            return retry_after
        ceiling = min(self._settings.backoff_cap, self._settings.backoff_base * 2 ** (attempt - 1))
        return self._rng.uniform(0, ceiling)

    def _request_for(self, call: BackendCall) -> _Request:
        """The HTTP request of SPEC §4 for ``call``."""
        s = self._settings
        step = call.step
        if step in (BackendStep.PROVISION_CHANNEL, BackendStep.DEPROVISION_CHANNEL):
            if call.kind is None or not call.channel_id:
                raise InvalidCallError(f"{step.value} needs kind and channel_id")
            url = _join(s.provisioner_url, "provisioner", "v1", "channels",
                        call.kind.value, call.channel_id)
            if step is BackendStep.DEPROVISION_CHANNEL:
                # 404: the channel is already gone, which is what we wanted.
                return _Request("DELETE", url, None, frozenset({200, 202, 204, 404}), _no_body)
            if call.name is None:
                raise InvalidCallError("provision_channel needs name")
            body = {"record_id": call.record_id, "name": call.name, "links": dict(call.links)}
            return _Request("PUT", url, body, frozenset({200, 201}), _provisioning_response)
        if step is BackendStep.ACTIVATE_GATE:
            url = _join(s.gatekeeper_url, "gatekeeper", "v1", "gates", call.record_id)
            return _Request("PUT", url, {"status": "Active"}, frozenset({200}), _gate_active)
        if step is BackendStep.DEACTIVATE_GATE:
            url = _join(s.gatekeeper_url, "gatekeeper", "v1", "gates", call.record_id)
            body = {"status": "Inactive", "reason": "Deprovisioned"}
            # 404: the gate was never activated, so there is nothing to deactivate.
            return _Request("PUT", url, body, frozenset({200, 404}), _no_body)
        if step is BackendStep.START_CALLING_TEST:
            if not call.phone_number_id:
                raise InvalidCallError("start_calling_test needs phone_number_id")
            url = _join(s.calling_test_url, "calling test", "v1", "calling-tests")
            body = {"record_id": call.record_id, "phone_number_id": call.phone_number_id}
            return _Request("POST", url, body, frozenset({202}), _calling_test_id)
        raise InvalidCallError(f"unknown step {step!r}")  # pragma: no cover - exhaustive


def _failed(failure: CallFailure) -> CallResult:
    return CallResult(failure.step, ok=False, failure=failure, attempts=failure.attempts)


def _join(base_url: str | None, backend: str, *segments: str) -> str:
    """``base_url`` plus quoted path segments, whether or not the base ends with a slash."""
    if not base_url:
        raise BackendNotConfigured(f"the {backend} base URL is not configured")
    path = "/".join(quote(segment, safe="") for segment in segments)
    return f"{base_url.rstrip('/')}/{path}"


def _loggable(url: str) -> str:
    """``url`` without user name or password, safe to log."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return "<invalid url>"
    return str(parsed.copy_with(userinfo=b"")) if parsed.userinfo else str(parsed)


def _body_start(response: httpx.Response) -> str:
    return truncate(response.text, BODY_START_MAX)


def _json_object(response: httpx.Response) -> Mapping[str, Any]:
    try:
        body = json.loads(response.content)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidResponseError(f"body is not JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise InvalidResponseError(f"body is a JSON {type(body).__name__}, not an object")
    return body


def _no_body(response: httpx.Response) -> _Payload:
    """Deprovisioning answers are judged by status alone (SPEC §4 names no body)."""
    return _Payload()


def _provisioning_response(response: httpx.Response) -> _Payload:
    text = _json_object(response).get("response")
    if not isinstance(text, str):
        raise InvalidResponseError('"response" is missing or not a string')
    return _Payload(response=truncate(text, PROVISIONING_RESPONSE_MAX))


def _gate_active(response: httpx.Response) -> _Payload:
    body = _json_object(response)
    if body.get("status") != "Active" or body.get("reason") != "Running":
        raise InvalidResponseError(
            f'expected status "Active" and reason "Running", got status '
            f'{body.get("status")!r} and reason {body.get("reason")!r}'
        )
    return _Payload()


def _calling_test_id(response: httpx.Response) -> _Payload:
    test_id = _json_object(response).get("test_id")
    if not isinstance(test_id, str) or not test_id.strip():
        raise InvalidResponseError('"test_id" is missing or not a non-empty string')
    return _Payload(test_id=test_id)


def _retry_after(headers: httpx.Headers, cap: float) -> float | None:
    """Seconds the server asked us to wait (RFC 9110 §10.2.3), capped; None when absent.

    The value is delay-seconds or an HTTP date; an unreadable value is ignored.
    """
    value = headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return min(max(seconds, 0.0), cap)
