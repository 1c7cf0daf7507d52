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

Errors are in ``worker.backends.errors``; only InvalidCallError leaves ``call()``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import httpx
import structlog

from statemachine.effects import BackendCall
from worker import tracing
from worker.backends.errors import BackendNotConfigured, InvalidResponseError
from worker.backends.policy import backoff_delay, is_transient, retry_after
from worker.backends.requests import Request, body_start, request_for
from worker.backends.results import CallFailure, CallResult, failed
from worker.settings import BackendSettings

log = structlog.get_logger("worker.backends")

IDEMPOTENCY_HEADER = "Idempotency-Key"
# What a try can raise instead of answering (see transport_failure).
NO_ANSWER = (httpx.TransportError, httpx.InvalidURL, httpx.DecodingError,
             httpx.TooManyRedirects)


def http_timeout(settings: BackendSettings) -> httpx.Timeout:
    """Connect timeout, and the read timeout for reading, writing and the pool."""
    return httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout)


@dataclass(frozen=True)
class TryOutcome:
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
        self._client = (client if client is not None
                        else httpx.Client(timeout=http_timeout(settings)))
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
            request = request_for(self._settings, call)
        except BackendNotConfigured as exc:
            return not_configured(call, exc)

        attempt = 0
        while True:
            attempt += 1
            outcome = self._try(call, request, attempt)
            if outcome.result is not None:
                return outcome.result
            assert outcome.failure is not None
            if attempt >= self._settings.max_tries:
                return failed(outcome.failure)
            self._sleep(self._delay(attempt, outcome.retry_after))

    def _try(self, call: BackendCall, request: Request, attempt: int) -> TryOutcome:
        """One try: a final result, or a transient failure to retry."""
        bound = bind_try(call, request, attempt)
        with client_span(call, request, attempt) as span:
            started = time.monotonic()
            try:
                response = self._client.request(
                    request.method,
                    request.url,
                    json=request.json,
                    headers=tracing.inject(headers_for(call)),
                    timeout=http_timeout(self._settings),
                )
            except NO_ANSWER as exc:
                tracing.http_failed(span, type(exc).__name__)
                return transport_failure(bound, call, attempt, exc)
            tracing.http_answered(span, response.status_code)
            return judge(bound, call, request, attempt, response, started, self._settings)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        return backoff_delay(attempt, retry_after, self._settings, self._rng)


def client_span(call: BackendCall, request: Request,
                attempt: int) -> AbstractContextManager[tracing.Span]:
    """The span of one HTTP try (a client span: the backend's own span is its child, through
    the ``traceparent`` header ``tracing.inject`` adds inside it)."""
    attributes = {
        "http.request.method": request.method, "url.full": _loggable(request.url),
        "provisioning.backend_step": call.step.value, "http.request.resend_count": attempt - 1,
    } if tracing.recording() else None
    return tracing.span(request.method, kind=tracing.SpanKind.CLIENT, attributes=attributes)


def headers_for(call: BackendCall) -> dict[str, str]:
    """The headers of every try of ``call``: its Idempotency-Key, the same on every try."""
    return {IDEMPOTENCY_HEADER: call.idempotency_key, "Accept": "application/json"}


def bind_try(call: BackendCall, request: Request, attempt: int) -> structlog.BoundLogger:
    """The logger of one try, bound to what identifies it."""
    bound: structlog.BoundLogger = log.bind(
        step=call.step.value, attempt=attempt, idempotency_key=call.idempotency_key,
        method=request.method, url=_loggable(request.url))
    return bound


def transport_failure(bound: structlog.BoundLogger, call: BackendCall, attempt: int,
                      exc: Exception) -> TryOutcome:
    """What a try that got no answer comes to (shared by the sync and async clients)."""
    if isinstance(exc, (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.InvalidURL,
                        httpx.DecodingError, httpx.TooManyRedirects)):
        # Our own request or the configured URL is wrong, or the answer cannot be
        # decoded: trying again cannot help.
        bound.warning("backend.try", status=None, error_class=type(exc).__name__,
                      error=str(exc))
        failure = CallFailure(call.step, transient=False, status=None,
                              error_class=type(exc).__name__, body_start="",
                              attempts=attempt, reason=str(exc))
        return TryOutcome(failed(failure))
    # Connect errors, timeouts, a dropped connection. Trying again is safe even if
    # the backend acted on the request: the Idempotency-Key makes it replay.
    bound.warning("backend.try", status=None, error_class=type(exc).__name__,
                  error=str(exc), transient=True)
    failure = CallFailure(call.step, transient=True, status=None,
                          error_class=type(exc).__name__, body_start="",
                          attempts=attempt, reason=str(exc))
    return TryOutcome(None, failure)


def judge(bound: structlog.BoundLogger, call: BackendCall, request: Request, attempt: int,
          response: httpx.Response, started: float, settings: BackendSettings) -> TryOutcome:
    """What a try that got ``response`` comes to (shared by the sync and async clients)."""
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
                                  body_start=body_start(response), attempts=attempt,
                                  reason=str(exc))
            return TryOutcome(failed(failure))
        bound.info("backend.try")
        return TryOutcome(CallResult(call.step, ok=True, response=payload.response,
                               test_id=payload.test_id, attempts=attempt))

    transient = is_transient(status)
    bound.warning("backend.try", error_class=f"HTTP {status}", transient=transient)
    failure = CallFailure(call.step, transient=transient, status=status,
                          error_class=f"HTTP {status}", body_start=body_start(response),
                          attempts=attempt)
    if not transient:
        return TryOutcome(failed(failure))
    return TryOutcome(None, failure, retry_after(response.headers, settings.retry_after_cap))


def not_configured(call: BackendCall, exc: BackendNotConfigured) -> CallResult:
    """A step whose base URL is not set fails permanently, with no try."""
    log.warning("backend.not_configured", step=call.step.value,
                idempotency_key=call.idempotency_key)
    return failed(CallFailure(call.step, transient=False, status=None,
                              error_class="NotConfigured", body_start="", attempts=0,
                              reason=str(exc)))


def _loggable(url: str) -> str:
    """``url`` without user name or password, safe to log."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return "<invalid url>"
    return str(parsed.copy_with(userinfo=b"")) if parsed.userinfo else str(parsed)
