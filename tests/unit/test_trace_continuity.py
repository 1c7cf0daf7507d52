"""A trace stays continuous (docs/tracing.md): a step run again after a crash, a beat retry
of a failed step and a calling test's timeout continue the trace of the change that
started the step (the record keeps its traceparent); probes and scrapes make no spans."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from statemachine import (
    BackendStep,
    RetryDue,
    StatusReason,
    StepResult,
    apply,
    parse_event,
    pending_step,
)
from tests.factories import event, gatekeeper, new_id, provision
from tests.unit.http_support import make_api
from worker import tracing
from worker.backends import Backends
from worker.emulators import Emulator
from worker.http.auth import Role
from worker.service import Service, submit_events

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"
OTHER_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def trace_of(value: str | None) -> str:
    assert value is not None
    return value.split("-")[1]


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    context = span.get_span_context()
    assert context is not None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def applies(exporter: InMemorySpanExporter, kind: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == tracing.APPLY
            and span.attributes is not None and span.attributes["provisioning.kind"] == kind]


def submit(service: Service, raw: dict[str, Any]) -> None:
    report = submit_events(service, [(1, raw)], kick=lambda _: None)
    assert report.accepted == 1, report.refused
    service.drain(str(raw["subject"]))


class Crash(BaseException):
    """Stands for the process dying in the middle of a backend call."""


def crash_during_the_step(service: Service, raw: dict[str, Any]) -> None:
    real = service.backends

    def dying(request: httpx.Request) -> httpx.Response:
        raise Crash

    service.backends = Backends(service.settings.backends, httpx.Client(
        transport=httpx.MockTransport(dying)), sleep=lambda _: None)
    try:
        with pytest.raises(Crash):
            submit(service, raw)
    finally:
        service.backends = real


# -- the pure core keeps what it is given ------------------------------------------------------


def test_apply_keeps_a_steps_trace_while_something_may_continue_it() -> None:
    record_id, channel = new_id(), new_id()
    started = apply(None, _parsed(provision(record_id, channel)),
                    now=_now(), trace=TRACEPARENT).record
    assert started is not None and started.tracking.step_trace == TRACEPARENT
    other = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    failed = apply(started, StepResult(record_id, "evt", _step(started), 2, ok=False),
                   now=_now(), trace=other).record
    assert failed is not None and failed.status is StatusReason.ERROR
    assert failed.tracking.step_trace == TRACEPARENT  # kept: beat's retry continues it
    retried = apply(failed, RetryDue(record_id, failed.version),
                    now=_now(), trace=TRACEPARENT).record
    assert retried is not None and retried.tracking.step_trace == TRACEPARENT
    done = apply(retried, StepResult(record_id, "evt", _step(retried), retried.version,
                                     ok=True), now=_now(), trace=TRACEPARENT).record
    assert done is not None and done.status is StatusReason.RUNNING
    assert done.tracking.step_trace is None  # settled: nothing left to continue it
    # A GateKeeper error schedules a retry itself: the retry continues the report's trace.
    broken = apply(done, _parsed(gatekeeper(record_id, "Inactive", "Error")), now=_now(),
                   trace=other).record
    assert broken is not None and broken.status is StatusReason.ERROR
    assert broken.tracking.step_trace == other
    recovered = apply(broken, _parsed(gatekeeper(record_id, "Active", "Running")),
                      now=_now(), trace=TRACEPARENT).record
    assert recovered is not None and recovered.status is StatusReason.RUNNING
    assert recovered.tracking.step_trace is None
    untraced = apply(None, _parsed(provision(new_id(), new_id())), now=_now()).record
    assert untraced is not None and untraced.tracking.step_trace is None


def _parsed(raw: dict[str, Any]) -> Any:
    return parse_event(raw)


def _now() -> datetime:
    return datetime(2026, 12, 7, tzinfo=UTC)


def _step(record: Any) -> Any:
    step = pending_step(record)
    assert step is not None
    return step.kind


# -- a step taken over after a crash -----------------------------------------------------------


def test_a_step_run_again_after_a_crash_carries_the_events_trace_id(
    memory_service: Service, emulator: Emulator
) -> None:
    record_id = new_id()
    crash_during_the_step(memory_service, {**provision(record_id, new_id()),
                                           "traceparent": TRACEPARENT})
    record = memory_service.store.load(record_id)
    assert record is not None and record.status is StatusReason.PROCESSING
    assert trace_of(record.tracking.step_trace) == TRACE_ID  # stored with the record
    assert not emulator.requests
    memory_service.drain(record_id)  # a new drain takes the lease over: nothing in memory
    sent = [request.traceparent for request in emulator.requests if request.step is not None]
    assert len(sent) == 2
    assert {trace_of(value) for value in sent} == {TRACE_ID}
    record = memory_service.store.load(record_id)
    assert record is not None and record.status is StatusReason.RUNNING


def test_with_spans_recorded_the_rerun_step_is_a_child_of_the_original_apply_span(
    memory_service: Service, emulator: Emulator, spans: InMemorySpanExporter
) -> None:
    record_id = new_id()
    crash_during_the_step(memory_service, {**provision(record_id, new_id()),
                                           "traceparent": TRACEPARENT})
    [first] = applies(spans, "event")
    memory_service.drain(record_id)
    steps = [span for span in spans.get_finished_spans() if span.name == tracing.STEP]
    rerun = steps[-1]
    assert hex_ids(rerun)[0] == TRACE_ID
    assert rerun.parent is not None and format(rerun.parent.span_id, "016x") == hex_ids(first)[1]
    clients = [span for span in spans.get_finished_spans() if span.kind is SpanKind.CLIENT]
    assert {hex_ids(span)[0] for span in clients} == {TRACE_ID}


# -- beat's commands ---------------------------------------------------------------------------


def test_a_beat_retry_of_a_failed_step_carries_the_events_trace_id(
    memory_service: Service, emulator: Emulator, kicks: Any
) -> None:
    record_id, channel = new_id(), new_id()
    emulator.script(channel, BackendStep.PROVISION_CHANNEL, [503] * 4)
    submit(memory_service, {**provision(record_id, channel), "traceparent": TRACEPARENT})
    record = memory_service.store.load(record_id)
    assert record is not None and record.status is StatusReason.ERROR
    before = len(emulator.requests)
    assert memory_service.sweep_retries() == [record_id]
    memory_service.drain(record_id)
    retried = [request for request in emulator.requests[before:] if request.step is not None]
    assert [request.idempotency_key for request in retried] == [
        f"{record_id}:4:provision_channel", f"{record_id}:4:activate_gate"]
    assert {trace_of(request.traceparent) for request in retried} == {TRACE_ID}
    record = memory_service.store.load(record_id)
    assert record is not None and record.status is StatusReason.RUNNING


def test_a_retry_apply_span_is_a_child_of_the_apply_span_that_started_the_step(
    memory_service: Service, emulator: Emulator, spans: InMemorySpanExporter, kicks: Any
) -> None:
    record_id, channel = new_id(), new_id()
    emulator.script(channel, BackendStep.PROVISION_CHANNEL, [503] * 4)
    submit(memory_service, {**provision(record_id, channel), "traceparent": TRACEPARENT})
    [original] = applies(spans, "event")
    memory_service.sweep_retries()
    memory_service.drain(record_id)
    [retry] = applies(spans, "retry")
    assert hex_ids(retry)[0] == TRACE_ID
    assert retry.parent is not None
    assert format(retry.parent.span_id, "016x") == hex_ids(original)[1]
    assert not retry.links  # beat's sweep has no span of its own to link to


def test_a_calling_test_timeout_continues_the_trace_of_the_request_that_started_it(
    memory_service: Service, emulator: Emulator, spans: InMemorySpanExporter
) -> None:
    record_id = new_id()
    submit(memory_service, {**provision(record_id, new_id(), kind="voice",
                                        links={"msdyn_phonenumberid": new_id()}),
                            "traceparent": TRACEPARENT})
    requested = f"00-{OTHER_ID}-00f067aa0ba902b7-01"
    submit(memory_service, {**event("calling_test.requested", record_id),
                            "traceparent": requested})
    record = memory_service.store.load(record_id)
    assert record is not None and record.tracking.step_trace is not None
    assert trace_of(record.tracking.step_trace) == OTHER_ID
    later = record.modified_on + timedelta(hours=1)
    memory_service.now = lambda: later
    assert memory_service.sweep_calling_tests() == [record_id]
    memory_service.drain(record_id)
    [timeout] = applies(spans, "calling_timeout")
    assert hex_ids(timeout)[0] == OTHER_ID


# -- probes ------------------------------------------------------------------------------------


def test_probes_and_metrics_make_no_spans_but_other_requests_do(
    memory_service: Service, spans: InMemorySpanExporter
) -> None:
    api = make_api(memory_service)
    for path in ("/healthz", "/readyz", "/metrics"):
        assert api.get(path, headers={"traceparent": TRACEPARENT}).status_code == 200, path
    assert spans.get_finished_spans() == ()
    reader = api.token(Role.READER)
    assert api.get(f"/api/v1/records/{new_id()}", token=reader).status_code == 404
    [server] = [span for span in spans.get_finished_spans() if span.kind is SpanKind.SERVER]
    assert server.name == "GET /api/v1/records/{id}"
