"""What tracing costs per provisioning event, in CPU µs, with and without an exporter.

    .venv/bin/python bench/tracing.py [--events 20000] [--repeat 5]

It runs, per event, exactly the tracing calls the worker makes for one ``provision.requested``
(docs/tracing.md): the extension attributes parsed (at accept and at apply), the apply scope
with its outcome, the traceparent each apply gives the core (kept by a step it starts), the
three history lines' context, the step span, and two backend tries (each a client span,
its ``traceparent`` and ``tracestate`` written into the headers, its status), plus the
``trace_id``/``span_id`` log processor on the five log lines. Modes:

* ``propagate``: no exporter configured (the default): bare span contexts, nothing recorded;
* ``record``: an SDK tracer provider whose spans go to a batch processor and an exporter
  that drops them (the worker's cost with OTLP export, the network left out);
* ``unsampled``: the same provider with a sampler that records nothing (a trace a ratio
  sampler leaves out).

Times are the process's CPU time (``time.process_time``); each figure is the best of
``--repeat`` runs. Without tracing none of this runs: the figures are the whole added cost
(the end-to-end effect: ``bench/throughput.py``, docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON

from statemachine import BackendCall, BackendStep, ChannelKind, RunStep, StepKind
from statemachine.attributes import parse_extensions
from worker import tracing
from worker.backends.client import client_span, headers_for
from worker.backends.requests import request_for
from worker.service.steps import step_span
from worker.settings import BackendSettings

_HERE = Path(__file__).resolve().parent

EVENT = {"specversion": "1.0", "id": "evt-1", "source": "bench", "type": "provision.requested",
         "subject": "6f9619ff-8b86-d011-b42d-00cf4fc964ff",
         "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
ACCEPTED = "00-1cf7651916cd43dd8448eb211c80319c-c7ad6b7169203331-01"


class Dropped(SpanExporter):
    """Takes every batch and keeps nothing."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def one_event(call: BackendCall, step: RunStep, request: Any) -> None:
    def ignore(path: str, reason: str) -> None:
        raise AssertionError(f"{path}: {reason}")

    parse_extensions(EVENT, ignore, repr)  # accept
    parse_extensions(EVENT, ignore, repr)  # apply
    with tracing.applying(EVENT, ACCEPTED, call.record_id, "evt-1", "event") as context:
        tracing.traceparent()  # the trace the step it starts keeps (Tracking.step_trace)
        tracing.annotate(**{"provisioning.outcome": "applied"})
        tracing.log_ids(None, "info", {})
    for _ in range(2):  # the history lines of create and provision
        with tracing.attached(context):
            tracing.log_ids(None, "info", {})
    with tracing.attached(context), step_span(step):
        for attempt in (1, 2):
            with client_span(call, request, attempt) as span:
                tracing.inject(headers_for(call))
                tracing.log_ids(None, "info", {})
                tracing.http_answered(span, 200)
    tracing.traceparent(context)  # the step result's apply
    with tracing.attached(context):  # the step result's history line
        tracing.log_ids(None, "info", {})


def measure(events: int, repeat: int) -> float:
    """Best CPU µs per event of ``repeat`` runs of ``events`` events."""
    settings = BackendSettings(provisioner_url="http://backend.test",
                               gatekeeper_url="http://backend.test")
    call = BackendCall(step=BackendStep.PROVISION_CHANNEL, record_id=str(EVENT["subject"]),
                       idempotency_key="k", kind=ChannelKind.WHATSAPP, channel_id="c",
                       name="Contoso", links={})
    step = RunStep(StepKind.PROVISION, call.record_id, "evt-1", 2, (call, call))
    request = request_for(settings, call)
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        for _ in range(events):
            one_event(call, step, request)
        best = min(best, (time.process_time() - started) / events)
    return best * 1e6


def machine() -> dict[str, Any]:
    """Where the figures come from: the machine, Python and the commit measured."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=_HERE, check=False).stdout.strip()
    return {"nproc": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "commit": commit,
            "load_average": os.getloadavg()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--output", help="write the figures as JSON here too")
    args = parser.parse_args()
    figures = {}
    tracing.install(None)
    figures["propagate"] = measure(args.events, args.repeat)
    for mode, sampler in (("record", ALWAYS_ON), ("unsampled", ALWAYS_OFF)):
        provider = TracerProvider(sampler=sampler)
        provider.add_span_processor(BatchSpanProcessor(Dropped()))
        tracing.install(provider)
        try:
            figures[mode] = measure(args.events, args.repeat)
        finally:
            tracing.install(None)
            provider.shutdown()
    for mode, micros in figures.items():
        print(f"{mode:<10} {micros:7.1f} CPU µs of tracing per provisioning event")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as out:
            json.dump({"benchmark": "bench/tracing.py", "events": args.events,
                       "repeat": args.repeat, "machine": machine(),
                       "cpu_us_per_event": figures}, out, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
