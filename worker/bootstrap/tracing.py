"""The process's tracer provider, from the standard ``OTEL_*`` variables.

Spans are recorded and exported only when an exporter is configured:

* ``OTEL_TRACES_EXPORTER``: a comma-separated list of ``otlp``, ``console``, ``none`` (or
  the name of any installed ``opentelemetry_traces_exporter`` entry point); when unset,
  ``otlp`` if ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is
  set, else none;
* ``otlp`` speaks ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` (or ``OTEL_EXPORTER_OTLP_PROTOCOL``):
  ``http/protobuf`` (the default, port 4318) or ``grpc`` (port 4317); the exporter reads its
  endpoint, headers, timeout and certificates from the OTEL_EXPORTER_OTLP_* variables;
* ``OTEL_SERVICE_NAME`` (default ``provisioning-worker``), ``OTEL_RESOURCE_ATTRIBUTES``,
  ``OTEL_TRACES_SAMPLER`` (default ``parentbased_always_on``) and ``OTEL_BSP_*`` as the
  SDK reads them; ``OTEL_SDK_DISABLED=true`` turns recording off.

With no exporter, an SDK tracer provider the host application installed (``worker.submit``
called from a traced program) is used; otherwise spans only propagate (``worker.tracing``).
Configured once per process id: a forked pool child configures its own (the batch
processor's thread does not survive a fork).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.util._importlib_metadata import entry_points

from worker import tracing
from worker.errors import ConfigurationError

SERVICE_NAME = "provisioning-worker"
EXPORTERS = "OTEL_TRACES_EXPORTER"
PROTOCOLS = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}
ENTRY_POINTS = "opentelemetry_traces_exporter"


class _Configured:
    pid: int | None = None
    provider: TracerProvider | None = None


_configured = _Configured()


def exporter_names(env: Mapping[str, str]) -> list[str]:
    """The entry-point names of the exporters ``env`` asks for ([]: none); raises
    ConfigurationError naming the variable when one is not installed or not known."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    text = env.get(EXPORTERS, "").strip().lower()
    if not text:
        endpoint = (env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                    or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
        text = "otlp" if endpoint else "none"
    names: list[str] = []
    for name in (part.strip() for part in text.split(",")):
        if name in ("", "none"):
            continue
        if name != "otlp":
            names.append(name)
            continue
        variable = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
                    if env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                    else "OTEL_EXPORTER_OTLP_PROTOCOL")
        protocol = env.get(variable, "").strip().lower() or "http/protobuf"
        if protocol not in PROTOCOLS:
            raise ConfigurationError(
                f"{variable}: must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
        names.append(PROTOCOLS[protocol])
    for name in names:
        _entry_point(name)
    return names


def _entry_point(name: str) -> Any:
    found = list(entry_points(group=ENTRY_POINTS, name=name))
    if not found:
        known = sorted({point.name for point in entry_points(group=ENTRY_POINTS)})
        raise ConfigurationError(
            f"{EXPORTERS}: no trace exporter {name!r} is installed; installed: "
            f"otlp, none, {', '.join(known)}")
    return found[0]


def build_exporter(name: str) -> SpanExporter:
    """The exporter an entry point of that name makes (configured by its OTEL_* variables)."""
    exporter: SpanExporter = _entry_point(name).load()()
    return exporter


def build_provider(exporters: list[SpanExporter],
                   env: Mapping[str, str] | None = None) -> TracerProvider:
    """A tracer provider exporting through ``exporters`` in batches (sampler, limits and
    batch sizes from the OTEL_* variables), named ``provisioning-worker`` unless
    OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES name it."""
    env = os.environ if env is None else env
    named = env.get("OTEL_SERVICE_NAME") or "service.name=" in env.get(
        "OTEL_RESOURCE_ATTRIBUTES", "")
    resource = Resource.create({} if named else {"service.name": SERVICE_NAME})
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def configure(env: Mapping[str, str] | None = None) -> bool:
    """Set up this process's tracing once (again in a forked child); True when spans are
    recorded. Raises ConfigurationError naming the variable that is wrong."""
    pid = os.getpid()
    if _configured.pid == pid:
        return tracing.recording()
    env = os.environ if env is None else env
    names = exporter_names(env)
    _configured.pid = pid
    _configured.provider = None
    if names:
        provider = build_provider([build_exporter(name) for name in names], env)
        _configured.provider = provider
        tracing.install(provider)
        return True
    host = trace.get_tracer_provider()
    tracing.install(host if isinstance(host, TracerProvider) else None)
    return tracing.recording()


def flush(timeout_millis: int = 5000) -> None:
    """Export what this process's provider still holds (a pool child that exits through
    ``os._exit`` runs no atexit hook)."""
    provider = _configured.provider
    if provider is not None and _configured.pid == os.getpid():
        provider.force_flush(timeout_millis)


def reset() -> None:
    """Forget the configuration (tests): this process's provider is shut down."""
    if _configured.provider is not None and _configured.pid == os.getpid():
        _configured.provider.shutdown()
    _configured.pid = None
    _configured.provider = None
    tracing.install(None)
