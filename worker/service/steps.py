"""Backend steps: a started step's calls, run off the drain's thread.

A step (``RunStep``) is the calls one change starts (provision: provisioner PUT, then gate
activation; SPEC §4). :func:`call_step` runs them in order, stopping at the first
failure, and turns what happened into the ``StepResult`` the core applies; it never touches
the store. :class:`StepRunner` runs steps of different records side by side; a record never
has two steps at once (the drain sees to that).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import structlog

from statemachine import BackendCall, RunStep, StepKind, StepResult
from worker import tracing
from worker.backends import Backends, CallResult
from worker.service.observer import Observer


@dataclass(frozen=True, slots=True)
class InFlight:
    """A step whose backend calls are running on a step thread."""

    key: tuple[StepKind, int]  # (kind, the version that started it)
    future: Future[StepResult]


class StepRunner:
    """Runs steps' backend calls on a few daemon threads.

    Not a ThreadPoolExecutor: its threads are joined when the interpreter exits, so a pool
    child cancelled at shutdown in the middle of a slow backend call would hang there (up
    to the read timeout times the tries) instead of exiting. An interrupted step is run
    again by the next drain, with the same Idempotency-Keys.
    """

    def __init__(self, threads: int = 1) -> None:
        self._queue: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]]] = (
            queue.SimpleQueue())
        for number in range(max(1, threads)):
            threading.Thread(target=self._run, name=f"steps-{number}", daemon=True).start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self._queue.put((future, lambda: fn(*args)))
        return future

    def _run(self) -> None:
        while True:
            future, call = self._queue.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(call())
            except BaseException as exc:  # noqa: BLE001 - handed to the drain, raised there
                future.set_exception(exc)


class StepProgress:
    """What a step's calls came to so far; the one place a StepResult is built, for the
    threaded runner (:func:`call_step`) and the asyncio one (``step_loop``) alike."""

    def __init__(self, step: RunStep, observer: Observer) -> None:
        self.step = step
        self.observer = observer
        self.response: str | None = None
        self.test_id: str | None = None

    def took(self, call: BackendCall, outcome: CallResult, seconds: float) -> StepResult | None:
        """Record one call's outcome; the step's failed result when it failed, else None."""
        self.observer.backend_call(
            call.step.value, seconds, outcome.ok,
            outcome.failure.error_class if outcome.failure else None, outcome.attempts)
        if outcome.response is not None:
            self.response = outcome.response
        if outcome.test_id is not None:
            self.test_id = outcome.test_id
        if outcome.ok:
            return None
        failure = outcome.failure
        assert failure is not None
        step = self.step
        return StepResult(step.record_id, step.event_id, step.kind, step.started_version,
                          ok=False, failed_call=call.step, details=failure.details(),
                          summary=failure.summary(), response=self.response)

    def succeeded(self) -> StepResult:
        step = self.step
        return StepResult(step.record_id, step.event_id, step.kind, step.started_version,
                          ok=True, response=self.response, test_id=self.test_id)


def step_span(step: RunStep) -> AbstractContextManager[tracing.Span]:
    """The span of one step's calls (a child of the apply span that started it), made when
    spans are recorded."""
    return tracing.span(tracing.STEP, optional=True, attributes={
        "provisioning.step": step.kind.value, "provisioning.record_id": step.record_id,
        "provisioning.event_id": step.event_id, "provisioning.version": step.started_version,
    } if tracing.recording() else None)


def call_step(backends: Backends, observer: Observer, step: RunStep) -> StepResult:
    """The step's calls in order, stopping at the first failure (no store access)."""
    with structlog.contextvars.bound_contextvars(event_id=step.event_id,
                                                 trigger=step.kind.value), step_span(step):
        progress = StepProgress(step, observer)
        for call in step.calls:
            started = time.perf_counter()
            outcome = backends.call(call)
            failed = progress.took(call, outcome, time.perf_counter() - started)
            if failed is not None:
                return failed
        return progress.succeeded()
