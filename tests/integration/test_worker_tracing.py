"""Tracing end to end (SPEC §3): real ``celery worker`` processes export their spans over
OTLP (http/protobuf) to a collector of this test's own, and the backend emulator records
the ``traceparent`` each backend call carried. An event's trace is continuous from its
sender, through the queue, to the backend calls, and on through beat's retries; an event
without one starts a new trace."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from statemachine import BackendStep
from tests.factories import new_id, provision
from tests.integration.workers import MAX_TRIES, Cluster, running_cluster
from worker.emulators import Emulator

pytestmark = pytest.mark.integration

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@dataclass(frozen=True)
class ExportedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    links: tuple[str, ...]  # linked span ids
    attributes: dict[str, Any]
    service: str


class Collector:
    """An OTLP/HTTP trace receiver on loopback: keeps every span exported to it."""

    def __init__(self) -> None:
        self.spans: list[ExportedSpan] = []
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                collector.take(request)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def take(self, request: ExportTraceServiceRequest) -> None:
        found = []
        for resource_spans in request.resource_spans:
            service = next((a.value.string_value for a in resource_spans.resource.attributes
                            if a.key == "service.name"), "")
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    found.append(ExportedSpan(
                        span.name, span.trace_id.hex(), span.span_id.hex(),
                        span.parent_span_id.hex(),
                        tuple(link.span_id.hex() for link in span.links),
                        {a.key: _value(a.value) for a in span.attributes}, service))
        with self.lock:
            self.spans.extend(found)

    def named(self, name: str, trace_id: str | None = None) -> list[ExportedSpan]:
        with self.lock:
            return [s for s in self.spans
                    if s.name == name and (trace_id is None or s.trace_id == trace_id)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@pytest.fixture
def collector() -> Iterator[Collector]:
    running = Collector()
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def cluster(redis_url: str, tmp_path: Path, request: pytest.FixtureRequest,
            collector: Collector) -> Iterator[Cluster]:
    settings = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    with running_cluster(redis_url, tmp_path, request, settings=settings) as running:
        running.start_worker(concurrency=2)
        yield running


def backend_calls(cluster: Cluster, record_id: str) -> list[dict[str, Any]]:
    return [r for r in cluster.requests() if r["step"] is not None and (
        r["target"] == record_id or record_id in json.dumps(r["payload"]))]


def test_a_celery_message_events_trace_reaches_the_backend_calls(
    cluster: Cluster, collector: Collector
) -> None:
    record_id = new_id()
    sender = "00-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-bbbbbbbbbbbbbbbb-01"
    # A traced Celery client puts its context in the message headers; the event carries
    # the onboarding system's own traceparent (the CloudEvents extension).
    cluster.send({**provision(record_id), "traceparent": TRACEPARENT, "tenant": "contoso"},
                 headers={"traceparent": sender})
    cluster.wait_status(record_id, "Running")
    calls = backend_calls(cluster, record_id)
    assert len(calls) == 2
    sent_ids = {call["traceparent"].split("-")[2] for call in calls}
    assert {call["traceparent"].split("-")[1] for call in calls} == {TRACE_ID}
    assert PARENT_ID not in sent_ids and len(sent_ids) == 2
    http = cluster.wait_for(
        lambda: (found if len(found := collector.named("PUT", TRACE_ID)) == 2 else None),
        "the exported HTTP spans")
    assert {span.span_id for span in http} == sent_ids  # the backend's parent is our span
    [step] = collector.named("provisioning.step", TRACE_ID)
    applies = cluster.wait_for(lambda: collector.named("provisioning.apply", TRACE_ID),
                               "the exported apply spans")
    [apply_span] = [s for s in applies if s.parent_id == PARENT_ID]
    assert {span.parent_id for span in http} == {step.span_id}
    assert step.parent_id == apply_span.span_id
    assert apply_span.service == "provisioning-worker"
    assert apply_span.attributes["provisioning.record_id"] == record_id
    # The accept span continues the Celery sender's trace; the apply span links to it.
    [accept] = collector.named("provisioning.accept", "a" * 32)
    assert accept.parent_id == "b" * 16
    assert apply_span.links == (accept.span_id,)


def test_an_event_without_traceparent_starts_a_new_trace_that_crosses_the_queue(
    cluster: Cluster, collector: Collector
) -> None:
    record_id = new_id()
    cluster.send(provision(record_id))
    cluster.wait_status(record_id, "Running")
    calls = backend_calls(cluster, record_id)
    [trace_id] = {call["traceparent"].split("-")[1] for call in calls}
    assert trace_id != TRACE_ID
    accept = cluster.wait_for(lambda: collector.named("provisioning.accept", trace_id),
                              "the exported accept span")
    applies = cluster.wait_for(lambda: collector.named("provisioning.apply", trace_id),
                               "the exported apply span")
    assert accept[0].parent_id == ""  # the root of the new trace
    assert applies[0].parent_id == accept[0].span_id
    # And the worker's log lines of that trace carry its id.
    logged = [json.loads(line) for process in cluster.processes
              for line in process.log.read_text().splitlines() if line.startswith("{")]
    assert any(line.get("event") == "backend.try" and line.get("trace_id") == trace_id
               for line in logged)


def test_a_beat_retry_of_a_failed_step_continues_the_events_trace(
    redis_url: str, tmp_path: Path, request: pytest.FixtureRequest, collector: Collector
) -> None:
    emulator = Emulator()
    record_id, channel_id = new_id(), new_id()
    emulator.script(channel_id, BackendStep.PROVISION_CHANNEL, [503] * MAX_TRIES)
    settings = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    with running_cluster(redis_url, tmp_path, request, emulator=emulator,
                         settings=settings) as cluster:
        cluster.start_worker(concurrency=2)
        cluster.send({**provision(record_id, channel_id), "traceparent": TRACEPARENT})
        cluster.wait_status(record_id, "Error")
        cluster.start_beat()
        cluster.wait_status(record_id, "Running")
        calls = backend_calls(cluster, record_id)
        retried = [call for call in calls if call["idempotency_key"].split(":")[1] == "4"]
        assert [call["step"] for call in retried] == ["provision_channel", "activate_gate"]
        assert {call["traceparent"].split("-")[1] for call in calls} == {TRACE_ID}
        applies = cluster.wait_for(
            lambda: (found if len(found := collector.named("provisioning.apply", TRACE_ID))
                     == 2 else None), "the exported apply spans of the event and the retry")
        [first] = [span for span in applies if span.parent_id == PARENT_ID]
        [retry] = [span for span in applies if span.attributes["provisioning.kind"] == "retry"]
        assert retry.parent_id == first.span_id  # a child of the change that began the step

