"""Backend steps on an asyncio event loop: hundreds in flight in one process.

:class:`StepLoop` runs one event loop on a daemon thread of the process, with the
backends' ``httpx.AsyncClient`` (:class:`worker.backends.aio.AsyncBackends`). The drain
(``worker.service.drain``) submits a step from its own thread and gets a
``concurrent.futures.Future`` back, as from the step threads before: it still runs one step
per record, applies the results in order, records stale ones. Cancelling that future
cancels the step (its record's next drain runs it again with the same Idempotency-Keys).

:func:`call_step_async` is :func:`worker.service.steps.call_step` on the loop: the step's
calls in order, stopping at the first failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import structlog

from statemachine import RunStep, StepResult
from worker.backends.aio import AsyncBackends
from worker.service.observer import Observer
from worker.service.steps import StepProgress, step_span

log = structlog.get_logger("worker")


async def call_step_async(backends: AsyncBackends, observer: Observer,
                          step: RunStep) -> StepResult:
    """The step's calls in order, stopping at the first failure (no store access)."""
    with structlog.contextvars.bound_contextvars(event_id=step.event_id,
                                                 trigger=step.kind.value), step_span(step):
        progress = StepProgress(step, observer)
        for call in step.calls:
            started = time.perf_counter()
            outcome = await backends.call(call)
            failed = progress.took(call, outcome, time.perf_counter() - started)
            if failed is not None:
                return failed
        return progress.succeeded()


class StepLoop:
    """An asyncio event loop on a daemon thread, running steps' backend calls.

    ``backends`` is built on the loop's thread, the first time a step is submitted (an
    ``httpx.AsyncClient`` belongs to the loop that uses it). A daemon thread: a process
    that ends does not wait for it (its steps re-run after recovery, same keys).
    """

    def __init__(self, backends: Callable[[], AsyncBackends], observer: Observer) -> None:
        self._make_backends = backends
        self._observer = observer
        self._backends: AsyncBackends | None = None
        self._loop = asyncio.new_event_loop()
        self._tasks: set[asyncio.Task[StepResult]] = set()
        self._thread = threading.Thread(target=self._run, name="step-loop", daemon=True)
        self._thread.start()

    @property
    def backends(self) -> AsyncBackends:
        """The loop's backends (built on first use)."""
        if self._backends is None:
            self._backends = self._make_backends()
        return self._backends

    @property
    def in_flight(self) -> int:
        """Steps running now (read from any thread; a snapshot)."""
        return len(self._tasks)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def submit(self, step: RunStep,
               context: contextvars.Context | None = None) -> Future[StepResult]:
        """Start ``step`` on the loop (in ``context``, e.g. with the record's log fields);
        the future ends with its result, or is cancelled."""
        future: Future[StepResult] = Future()
        self._loop.call_soon_threadsafe(self._start, step, context or contextvars.copy_context(),
                                        future)
        return future

    def _start(self, step: RunStep, context: contextvars.Context,
               future: Future[StepResult]) -> None:
        if future.cancelled():
            return
        task = self._loop.create_task(
            call_step_async(self.backends, self._observer, step), context=context)
        self._tasks.add(task)

        def finished(done: asyncio.Task[StepResult]) -> None:
            self._tasks.discard(done)
            if future.cancelled():
                return
            with contextlib.suppress(Exception):  # cancelled meanwhile (InvalidStateError)
                if done.cancelled():
                    future.cancel()
                elif (error := done.exception()) is not None:
                    future.set_exception(error)
                else:
                    future.set_result(done.result())

        def cancelled(_: Future[StepResult]) -> None:
            if future.cancelled() and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(task.cancel)

        task.add_done_callback(finished)
        future.add_done_callback(cancelled)

    def close(self, timeout: float = 5.0) -> None:
        """Cancel what still runs, close the backends' client and stop the loop."""
        if self._loop.is_closed():
            return

        async def stop() -> None:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if self._backends is not None:
                await self._backends.close()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self._loop.close()

