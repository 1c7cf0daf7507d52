"""Tracing: OpenTelemetry spans, W3C ``traceparent`` propagation, and log correlation.

SPEC §3: an event's ``traceparent`` (the CloudEvents distributed-tracing extension) is the
parent of everything the event causes; every backend call carries a ``traceparent`` with
the event's trace id and a span id of its own; an event without one starts a new trace.

The spans (docs/tracing.md lists their attributes):

* ``provisioning.accept``: accepting a batch of events into their records' inboxes (a
  child of the API request, or of the Celery message's context); each envelope keeps its
  ``traceparent`` (``Envelope.context["trace"]``), so the queue does not cut the trace;
* ``provisioning.apply``: one event applied; its parent is the event's ``traceparent``
  (else the accept span's), linked to the accept span when that is not its parent;
* ``provisioning.step``: one backend step (a child of the apply span that started it);
* ``PUT``/``POST``/...: one HTTP try to a backend (client), which carries the headers;
* ``POST /api/v1/events`` ...: one API request (server; parent: its ``traceparent``).

Only the OpenTelemetry *API* is used here. Spans are recorded once a process installs an
SDK tracer provider (``worker.bootstrap.tracing.configure``, when an exporter is set, and
tests with an in-memory exporter); without one, nothing is recorded: the apply and step
blocks run in the event's context, and only the accept span and each backend try get ids
of their own (bare span contexts), so propagation and log correlation still work at a few
µs a span (bench/tracing.py).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, MutableMapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "ACCEPT",
    "APPLY",
    "STEP",
    "TRACE_KEY",
    "Context",
    "Span",
    "SpanKind",
    "Status",
    "StatusCode",
    "accept_parent",
    "annotate",
    "applying",
    "attached",
    "carrier",
    "context_of",
    "http_answered",
    "http_failed",
    "inject",
    "install",
    "log_ids",
    "no_span",
    "parent_of",
    "recording",
    "span",
    "traceparent",
]

TRACER_NAME = "provisioning-worker"
ACCEPT = "provisioning.accept"
APPLY = "provisioning.apply"
STEP = "provisioning.step"
TRACE_KEY = "trace"  # Envelope.context: the traceparent of the span that accepted it

_PROPAGATOR = TraceContextTextMapPropagator()
# Ids come from the random module's own generator, as the SDK's do: Python seeds it again
# in a forked child (an instance of our own would give every pool child the same ids).
_random_bits = random.getrandbits


class _State:
    tracer: trace.Tracer | None = None  # an SDK tracer: spans are recorded and exported


_state = _State()


def install(provider: trace.TracerProvider | None) -> None:
    """Record spans with ``provider`` (an SDK TracerProvider) from now on in this process;
    None: propagate only (the default)."""
    _state.tracer = provider.get_tracer(TRACER_NAME) if provider is not None else None


def recording() -> bool:
    """Whether spans are recorded (a tracer provider is installed)."""
    return _state.tracer is not None


def parent_of(carrier: Mapping[str, Any] | None) -> Context | None:
    """The remote context of a ``traceparent`` (and ``tracestate``) in ``carrier`` (an
    event's attributes, or headers with lowercase names); None when it has none valid."""
    if not carrier:
        return None
    value = carrier.get("traceparent")
    if not isinstance(value, str):
        return None
    state = carrier.get("tracestate")
    if len(value) == 55 and value.startswith("00-") and not isinstance(state, str):
        # The common case, parsed here: the propagator's regex costs more than the span.
        try:
            trace_id, span_id = int(value[3:35], 16), int(value[36:52], 16)
            flags = int(value[53:55], 16)
        except ValueError:
            return None
        if value[35] != "-" or value[52] != "-" or not trace_id or not span_id:
            return None
        remote = SpanContext(trace_id, span_id, is_remote=True,
                             trace_flags=TraceFlags(flags))
        return trace.set_span_in_context(NonRecordingSpan(remote), Context())
    headers = {"traceparent": value}
    if isinstance(state, str):
        headers["tracestate"] = state
    found = _PROPAGATOR.extract(headers, context=Context())
    return found if trace.get_current_span(found).get_span_context().is_valid else None


def _start(name: str, parent: Context | None, kind: SpanKind,
           attributes: Mapping[str, Any] | None, links: list[Link] | None) -> Span:
    tracer = _state.tracer
    if tracer is not None:
        return tracer.start_span(name, context=parent, kind=kind, attributes=attributes,
                                 links=links)
    above = trace.get_current_span(parent).get_span_context()
    span_id = _random_bits(64) or 1
    if above.is_valid:
        return NonRecordingSpan(SpanContext(above.trace_id, span_id, is_remote=False,
                                            trace_flags=above.trace_flags,
                                            trace_state=above.trace_state))
    # A new trace that nothing records: not sampled, so a backend need not keep its part.
    return NonRecordingSpan(SpanContext(_random_bits(128) or 1, span_id, is_remote=False,
                                        trace_flags=TraceFlags(TraceFlags.DEFAULT)))


class _Scope:
    """A started span, current inside a ``with`` block and ended at its end (a class, not
    a generator: this runs several times per event). An exception leaving the block marks
    a recorded span failed."""

    __slots__ = ("_token", "span")

    def __init__(self, current: Span) -> None:
        self.span = current

    def __enter__(self) -> Span:
        self._token = otel_context.attach(trace.set_span_in_context(self.span))
        return self.span

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 _: object) -> None:
        otel_context.detach(self._token)
        if isinstance(error, Exception) and self.span.is_recording():
            self.span.record_exception(error)
            self.span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        self.span.end()


def span(name: str, *, parent: Context | None = None, kind: SpanKind = SpanKind.INTERNAL,
         attributes: Mapping[str, Any] | None = None, links: list[Link] | None = None,
         optional: bool = False) -> _Scope | _Current:
    """A span, current inside the ``with`` block (its parent: ``parent``, else the current
    span); ``as`` gives the span. An ``optional`` span is made only when spans are
    recorded (one nothing records and no header carries would only cost time)."""
    if optional and _state.tracer is None:
        return _CURRENT
    return _Scope(_start(name, parent, kind, attributes, links))


class _Current:
    """The block of an optional span not made: ``as`` gives the current span."""

    __slots__ = ()

    def __enter__(self) -> Span:
        return trace.get_current_span()

    def __exit__(self, *_: object) -> None:
        return None


_CURRENT = _Current()


def accept_parent(events: list[Mapping[str, Any]]) -> Context | None:
    """The parent of an accept span: the current span when there is one (an API request,
    a traced Celery message), else the events' ``traceparent`` when they all carry the
    same (a lone event from ``submit``); None: a new trace."""
    if trace.get_current_span().get_span_context().is_valid or not events:
        return None
    first = events[0].get("traceparent")
    if first is None or any(event.get("traceparent") != first for event in events[1:]):
        return None
    return parent_of(events[0])


class _Applying(_Scope):
    """The scope of one event applied; ``as`` gives the context it runs in (for its step
    and its log lines)."""

    __slots__ = ()

    def __enter__(self) -> Context:  # type: ignore[override]
        super().__enter__()
        return otel_context.get_current()


class _Within:
    """A block run in a context (no span of its own); ``as`` gives the context."""

    __slots__ = ("_context", "_token")

    def __init__(self, context: Context) -> None:
        self._context = context

    def __enter__(self) -> Context:
        self._token = otel_context.attach(self._context)
        return self._context

    def __exit__(self, *_: object) -> None:
        otel_context.detach(self._token)


def applying(event: Mapping[str, Any] | None, accepted: str | None, record_id: str,
             event_id: str, kind: str) -> _Applying | _Within:
    """The span of one event (or command, ``kind``) applied: its parent is the event's
    ``traceparent``, else the accept span's (``accepted``), which it links to when that is
    not its parent.

    With nothing recording, no span is made: the block runs in that parent's context (the
    backend calls still get span ids of their own; log lines carry the parent's)."""
    own = parent_of(event)
    if not recording():
        parent = own or (parent_of({"traceparent": accepted}) if accepted else None)
        return _Within(parent if parent is not None else trace.set_span_in_context(
            _start(APPLY, Context(), SpanKind.INTERNAL, None, None), Context()))
    accept = parent_of({"traceparent": accepted}) if accepted else None
    links = None
    if own is not None and accept is not None:
        links = [Link(trace.get_current_span(accept).get_span_context())]
    attributes = {"provisioning.record_id": record_id, "provisioning.event_id": event_id,
                  "provisioning.kind": kind}
    return _Applying(_start(APPLY, own or accept or Context(), SpanKind.INTERNAL,
                            attributes, links))


def attached(context: Context | None) -> AbstractContextManager[None]:
    """A block run in ``context`` (the current one when None)."""
    if context is None:
        return nullcontext()
    return _Attached(context)


class _Attached(AbstractContextManager[None]):
    __slots__ = ("_context", "_token")

    def __init__(self, context: Context) -> None:
        self._context = context

    def __enter__(self) -> None:
        self._token = otel_context.attach(self._context)

    def __exit__(self, *_: object) -> None:
        otel_context.detach(self._token)


def annotate(**attributes: Any) -> None:
    """Set attributes on the current span (nothing when it is not recorded)."""
    current = trace.get_current_span()
    if current.is_recording():
        current.set_attributes({key: value for key, value in attributes.items()
                                if value is not None})


def inject(headers: dict[str, str]) -> dict[str, str]:
    """Add the current span's ``traceparent`` (and ``tracestate``) to ``headers``."""
    found = trace.get_current_span().get_span_context()
    if found.is_valid:
        headers["traceparent"] = (f"00-{found.trace_id:032x}-{found.span_id:016x}-"
                                  f"{found.trace_flags:02x}")
        if found.trace_state:
            headers["tracestate"] = found.trace_state.to_header()
    return headers


def traceparent(context: Context | None = None) -> str | None:
    """The ``traceparent`` of ``context``'s span (the current span when None), or None
    outside any span. Not ``tracestate``: what a record keeps is the trace and span id."""
    found = trace.get_current_span(context).get_span_context()
    if not found.is_valid:
        return None
    return f"00-{found.trace_id:032x}-{found.span_id:016x}-{found.trace_flags:02x}"


def context_of(value: str | None) -> Context | None:
    """The remote context of a stored ``traceparent`` (a record's ``step_trace``); None
    when there is none or it is not valid."""
    return parent_of(carrier(value))


def carrier(value: str | None) -> dict[str, str] | None:
    """A carrier (for ``applying``) of a stored ``traceparent``; None for none. Beat's
    commands (a failed step's retry, a calling test's timeout) are consequences of the
    change that started the record's last step: their apply span continues its trace."""
    return {"traceparent": value} if value else None


def no_span() -> _Current:
    """A block with no span of its own (``as`` gives the current span): a request that is
    not traced (the probes)."""
    return _CURRENT


def http_answered(current: Span, status: int) -> None:
    """An HTTP client span's answer: a 4xx or 5xx marks it failed."""
    if current.is_recording():
        current.set_attribute("http.response.status_code", status)
        if status >= 400:
            current.set_attribute("error.type", str(status))
            current.set_status(Status(StatusCode.ERROR))


def http_failed(current: Span, error_class: str) -> None:
    """An HTTP client span that got no answer."""
    if current.is_recording():
        current.set_attribute("error.type", error_class)
        current.set_status(Status(StatusCode.ERROR, error_class))


def log_ids(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: the current span's ``trace_id`` and ``span_id`` (hex, as W3C
    writes them) on every line logged inside a span."""
    found = trace.get_current_span().get_span_context()
    if found.is_valid:
        event_dict.setdefault("trace_id", format(found.trace_id, "032x"))
        event_dict.setdefault("span_id", format(found.span_id, "016x"))
    return event_dict

