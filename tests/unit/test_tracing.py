"""Tracing (SPEC §3): an event's traceparent reaches every backend call it causes, with the
same trace id and a span id of its own; an event without one starts a new trace; spans for
accept, apply, step and each HTTP try; trace ids on log lines."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind

from tests.factories import new_id, provision
from tests.unit.http_support import Api, make_api
from worker import tracing
from worker.backends import Backends
from worker.backends.aio import AsyncBackends
from worker.backends.wire import AiohttpWire
from worker.bootstrap import tracing as otel
from worker.emulators import Emulator, EmulatorServer
from worker.errors import ConfigurationError
from worker.http.auth import Role
from worker.logs import configure
from worker.service import NoObserver, Service, submit_events
from worker.service.step_loop import StepLoop
from worker.settings import BackendSettings, Settings
from worker.store.failed import MemoryFailedStore
from worker.store.memory import MemoryStateStore

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


def hex_ids(span: ReadableSpan | SpanContext) -> tuple[str, str]:
    context = span if isinstance(span, SpanContext) else span.get_span_context()
    assert context is not None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def parent_id(span: ReadableSpan) -> str | None:
    return format(span.parent.span_id, "016x") if span.parent is not None else None


def by_name(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


def run_event(service: Service, raw: dict[str, Any]) -> str:
    record_id = str(raw["subject"])
    report = submit_events(service, [(1, raw)], kick=lambda _: None)
    assert report.accepted == 1, report.refused
    service.drain(record_id)
    return record_id


def test_backend_calls_carry_the_events_trace_id_with_their_own_span_ids(
    memory_service: Service, emulator: Emulator, spans: InMemorySpanExporter
) -> None:
    run_event(memory_service, {**provision(new_id()), "traceparent": TRACEPARENT,
                               "tracestate": "congo=t61rcWkgMzE"})
    calls = [request for request in emulator.requests if request.step is not None]
    assert len(calls) == 2  # provisioner PUT, GateKeeper PUT
    [apply_span] = by_name(spans, tracing.APPLY)
    [step] = by_name(spans, tracing.STEP)
    http = [s for s in spans.get_finished_spans() if s.kind is SpanKind.CLIENT]
    [accept] = by_name(spans, tracing.ACCEPT)
    # The apply span continues the event's trace; the queue is crossed by a link.
    assert hex_ids(apply_span)[0] == TRACE_ID and parent_id(apply_span) == PARENT_ID
    assert [hex_ids(link.context) for link in apply_span.links] == [hex_ids(accept)]
    assert parent_id(accept) == PARENT_ID  # a lone event: accepted in its own trace
    assert apply_span.attributes is not None
    assert apply_span.attributes["provisioning.outcome"] == "applied"
    assert parent_id(step) == hex_ids(apply_span)[1]
    assert [parent_id(s) for s in http] == [hex_ids(step)[1]] * 2
    for request, client in zip(calls, http, strict=True):
        assert request.traceparent == f"00-{TRACE_ID}-{hex_ids(client)[1]}-01"
        assert request.tracestate == "congo=t61rcWkgMzE"
        assert client.attributes is not None
        assert client.attributes["http.response.status_code"] == request.status
        assert client.attributes["http.request.method"] == "PUT"


def test_an_event_without_traceparent_starts_a_new_trace_through_the_queue(
    memory_service: Service, emulator: Emulator, spans: InMemorySpanExporter
) -> None:
    run_event(memory_service, provision(new_id()))
    [accept] = by_name(spans, tracing.ACCEPT)
    [apply_span] = by_name(spans, tracing.APPLY)
    trace_id = hex_ids(accept)[0]
    assert accept.parent is None  # a new trace, started when the event was accepted
    assert parent_id(apply_span) == hex_ids(accept)[1] and not apply_span.links
    sent = {request.traceparent.split("-")[1] for request in emulator.requests
            if request.traceparent}
    assert sent == {trace_id}
    assert trace_id != TRACE_ID


def test_without_an_exporter_the_trace_still_propagates_with_fresh_span_ids(
    memory_service: Service, emulator: Emulator
) -> None:
    assert not tracing.recording()
    run_event(memory_service, {**provision(new_id()), "traceparent": TRACEPARENT})
    sent = [request.traceparent for request in emulator.requests if request.step is not None]
    assert len(sent) == 2
    for value in sent:
        assert value is not None
        version, trace_id, span_id, flags = value.split("-")
        assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
        assert span_id != PARENT_ID
    assert sent[0] != sent[1]  # each call its own span id
    # A new trace that nothing records is not sampled: a backend need not keep its part.
    run_event(memory_service, provision(new_id()))
    assert (emulator.requests[-1].traceparent or "").endswith("-00")


def test_the_step_loop_over_aiohttp_carries_the_trace_too(spans: InMemorySpanExporter) -> None:
    emulator = Emulator()
    server = EmulatorServer(("127.0.0.1", 0), emulator).start()
    backend = BackendSettings(provisioner_url=server.url, gatekeeper_url=server.url,
                              calling_test_url=server.url, max_tries=1)
    settings = Settings(backends=backend)
    service = Service(
        settings, MemoryStateStore(), MemoryFailedStore(),
        Backends(backend, httpx.Client(transport=emulator.transport())),
        step_loop=lambda: StepLoop(lambda: AsyncBackends(backend, AiohttpWire(backend, 4),
                                                            owns_client=True),
                                   NoObserver()))
    try:
        run_event(service, {**provision(new_id()), "traceparent": TRACEPARENT})
    finally:
        service.close()
        server.shutdown()
    http = {hex_ids(s)[1] for s in spans.get_finished_spans() if s.kind is SpanKind.CLIENT}
    sent = [request.traceparent for request in emulator.requests if request.step is not None]
    assert len(sent) == 2
    assert {value.split("-")[1] for value in sent if value} == {TRACE_ID}
    assert {value.split("-")[2] for value in sent if value} == http


def test_log_lines_inside_spans_carry_the_trace_and_span_ids(
    memory_service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    configure(Settings(log_format="json", log_level="INFO"))
    try:
        capsys.readouterr()
        run_event(memory_service, {**provision(new_id()), "traceparent": TRACEPARENT})
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()
                 if line.startswith("{")]
    finally:
        configure(Settings())
    tried = [line for line in lines if line["event"] == "backend.try"]
    history = [line for line in lines if line["event"] == "history"]
    assert len(tried) == 2 and history
    for line in tried + history:
        assert line["trace_id"] == TRACE_ID, line
        assert len(line["span_id"]) == 16
    # Each try logs with its own HTTP span's id.
    assert tried[0]["span_id"] != tried[1]["span_id"]


def test_binary_mode_keeps_ce_traceparent_and_the_request_span_parents_the_accept(
    memory_service: Service, spans: InMemorySpanExporter
) -> None:
    api: Api = make_api(memory_service)
    submitter = api.token(Role.SUBMITTER)
    record_id = new_id()
    transport = "00-11111111111111111111111111111111-2222222222222222-01"
    data = {"name": "Contoso", "channel": {"kind": "teams", "id": new_id()}}
    answer = api.post("/api/v1/events", token=submitter, content=json.dumps(data), headers={
        "content-type": "application/json", "ce-specversion": "1.0", "ce-id": "evt-b1",
        "ce-source": "onboarding", "ce-type": "provision.requested", "ce-subject": record_id,
        "ce-traceparent": TRACEPARENT, "ce-tenant": "contoso", "traceparent": transport})
    assert answer.status_code == 202, answer.text
    head = memory_service.store.head(record_id)
    assert head is not None
    event = json.loads(head.payload)["event"]
    assert (event["traceparent"], event["tenant"]) == (TRACEPARENT, "contoso")
    [request] = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]
    [accept] = by_name(spans, tracing.ACCEPT)
    assert request.name == "POST /api/v1/events"
    assert hex_ids(request)[0] == "1" * 32 and parent_id(request) == "2" * 16
    assert parent_id(accept) == hex_ids(request)[1]
    memory_service.drain(record_id)
    [apply_span] = by_name(spans, tracing.APPLY)
    assert hex_ids(apply_span)[0] == TRACE_ID  # the event's trace, linked to the request's
    assert [hex_ids(link.context)[0] for link in apply_span.links] == ["1" * 32]


def test_a_lone_submitted_event_is_accepted_in_its_own_trace(
    memory_service: Service, spans: InMemorySpanExporter
) -> None:
    run_event(memory_service, {**provision(new_id()), "traceparent": TRACEPARENT})
    [accept] = by_name(spans, tracing.ACCEPT)
    assert (hex_ids(accept)[0], parent_id(accept)) == (TRACE_ID, PARENT_ID)


@pytest.mark.parametrize(("env", "names"), [
    ({}, []),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp_proto_http"]),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL":
      "grpc"}, ["otlp_proto_grpc"]),
    ({"OTEL_TRACES_EXPORTER": "otlp, console", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
      "OTEL_EXPORTER_OTLP_PROTOCOL": "nonsense"}, ["otlp_proto_grpc", "console"]),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, []),
    ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}, []),
])
def test_the_exporters_follow_the_standard_otel_variables(env: dict[str, str],
                                                          names: list[str]) -> None:
    assert otel.exporter_names(env) == names


def test_a_wrong_exporter_or_protocol_is_refused_naming_the_variable() -> None:
    with pytest.raises(ConfigurationError, match="OTEL_EXPORTER_OTLP_PROTOCOL: must be one of "
                                                 "http/protobuf, grpc, not 'http/json'"):
        otel.exporter_names({"OTEL_TRACES_EXPORTER": "otlp",
                             "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
    with pytest.raises(ConfigurationError, match="OTEL_TRACES_EXPORTER: no trace exporter "
                                                 "'jaegr' is installed; installed: otlp"):
        otel.exporter_names({"OTEL_TRACES_EXPORTER": "console,jaegr"})


def test_configure_records_once_per_process_and_names_the_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    otel.reset()
    try:
        assert otel.configure({"OTEL_TRACES_EXPORTER": "otlp",
                               "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}) is True
        assert tracing.recording()
        assert otel.configure({}) is True  # once per process: the first configuration holds
        provider = otel.build_provider([], {})
        assert provider.resource.attributes["service.name"] == "provisioning-worker"
        monkeypatch.setenv("OTEL_SERVICE_NAME", "onboarding-worker")
        named = otel.build_provider([], {"OTEL_SERVICE_NAME": "onboarding-worker"})
        assert named.resource.attributes["service.name"] == "onboarding-worker"
        otel.reset()
        assert otel.configure({}) is False and not tracing.recording()
    finally:
        otel.reset()


def test_the_celery_app_refuses_a_wrong_otel_variable_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker import app

    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "jaegr")
    with pytest.raises(app.SettingsRefused) as refused:
        app._configuration()
    assert "OTEL_TRACES_EXPORTER: no trace exporter 'jaegr'" in refused.value.problems[0]


def test_forked_pool_children_make_ids_of_their_own() -> None:
    """Prefork children start from the parent's memory: their span ids must still differ."""
    import os

    def one_id() -> str:
        with tracing.span("x", kind=SpanKind.CLIENT):
            return tracing.traceparent() or ""

    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child process
        os.write(writer, one_id().encode())
        os._exit(0)
    os.close(writer)
    os.waitpid(child, 0)
    theirs = os.read(reader, 100).decode()
    os.close(reader)
    assert theirs and theirs != one_id()
