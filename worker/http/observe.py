"""What every request leaves behind: a request id, one structlog line, and metrics.

``RequestObserver`` is plain ASGI middleware (no BaseHTTPMiddleware: it would buffer
streaming and cost a task per request). It takes the ``X-Request-ID`` the client sent
when it is a sane token, else makes one, binds it (and later the identity) for every log
line of the request, echoes it in the response, and counts the request by route template
(``/api/v1/records/{id}``, never the id itself: bounded label values). An exception no
route handled becomes a 500 problem here, logged with its traceback.

Metrics (an own registry, served at ``/metrics``):
  provisioning_http_requests_total{method,route,status}
  provisioning_http_request_duration_seconds{method,route}   histogram
"""

from __future__ import annotations

import re
import time
import uuid

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from worker import tracing
from worker.http.context import IDENTITY
from worker.http.problems import problem_response

log = structlog.get_logger("worker.http")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# Probes and scrapes get no span (every few seconds, per process: noise in a trace store);
# they are still counted and logged.
UNTRACED = frozenset({"/healthz", "/readyz", "/metrics"})


class HttpMetrics:
    """The API's Prometheus metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("provisioning_http_requests", "HTTP requests answered",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram(
            "provisioning_http_request_duration_seconds", "Time to answer an HTTP request",
            ["method", "route"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0))


def route_of(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class RequestObserver:
    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = _request_id(scope)
        request_id = sent if sent is not None else uuid.uuid4().hex
        started = time.perf_counter()
        status = 500
        begun = False

        async def observed(message: Message) -> None:
            nonlocal status, begun
            if message["type"] == "http.response.start":
                begun = True
                status = message["status"]
                message["headers"] = [*message.get("headers", []),
                                      (b"x-request-id", request_id.encode())]
            await send(message)

        structlog.contextvars.bind_contextvars(request_id=request_id)
        with (tracing.no_span() if scope.get("path") in UNTRACED else
              tracing.span(scope["method"], kind=tracing.SpanKind.SERVER,
                           parent=tracing.parent_of(_trace_headers(scope)))) as current:
            try:
                await self.app(scope, receive, observed)
            except Exception:  # a bug must answer 500, logged, never crash the server
                log.exception("http_unhandled", path=scope.get("path"))
                if not begun:
                    await problem_response(500, "an internal error; the request id is in "
                                                "the logs")(scope, receive, observed)
            finally:
                elapsed = time.perf_counter() - started
                route, method = route_of(scope), scope["method"]
                self.metrics.requests.labels(method, route, str(status)).inc()
                self.metrics.latency.labels(method, route).observe(elapsed)
                _server_span(current, scope, status, request_id)
                log.info("http_request", method=method, route=route, path=scope.get("path"),
                         status=status, ms=round(elapsed * 1000, 2),
                         identity=scope.get(IDENTITY), request_id=request_id)
                structlog.contextvars.unbind_contextvars("request_id", "identity")


def _trace_headers(scope: Scope) -> dict[str, str]:
    """The request's W3C Trace Context headers (the transport's, not an event's)."""
    found: dict[str, str] = {}
    for name, value in scope.get("headers", []):
        if name in (b"traceparent", b"tracestate"):
            found[name.decode()] = value.decode("latin-1")
    return found


def _server_span(current: tracing.Span, scope: Scope, status: int, request_id: str) -> None:
    """Name the request's span by its route template, with the HTTP semantic conventions."""
    if not current.is_recording():
        return
    route, method = route_of(scope), scope["method"]
    current.update_name(f"{method} {route}")
    current.set_attributes({"http.request.method": method, "http.route": route,
                            "url.path": scope.get("path", ""),
                            "http.response.status_code": status,
                            "http.request.id": request_id})
    if status >= 500:
        current.set_status(tracing.Status(tracing.StatusCode.ERROR))


def _request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _REQUEST_ID.match(text) else None
    return None
