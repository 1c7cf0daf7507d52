"""``Service``: the worker's behaviour, one object each entry point holds.

Celery tasks, the CLI, ``worker.submit`` and the HTTP API call these methods and nothing
below them; tests drive them directly with the in-memory store and the emulator transport.
Each method is one concept of this package: ``ingest`` (accept), ``drain`` (apply in
order, run steps), ``failures`` (the failed-task store), ``sweeps`` (beat's timers).
"""

from __future__ import annotations

import contextvars
import random
import socket
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from datetime import datetime
from typing import Any

import structlog

from statemachine import Event, InvalidEvent, RunStep, StepResult, parse_event
from worker.backends import Backends
from worker.errors import LeaseLost
from worker.service import failures, ingest, sweeps
from worker.service.context import utcnow
from worker.service.drain import Drain, DrainReport
from worker.service.effects import retry_delay
from worker.service.ingest import Accepted
from worker.service.leases import LeaseKeeper
from worker.service.observer import NoObserver, Observer
from worker.service.step_loop import StepLoop
from worker.service.steps import StepRunner, call_step
from worker.settings import Settings
from worker.store.failed import FailedStore, FailedTask
from worker.store.protocol import StateStore
from worker.task_names import HANDLE_EVENT

log = structlog.get_logger("worker")


class Service:
    """Wires the store, the failed-task store and the backends into the worker's behaviour.

    ``kick``/``kick_many`` ask some worker to drain records (a Celery message in a real
    deployment, see ``worker.broker.Dispatch``); ``now``, ``rng`` and ``hostname`` are
    injected for tests. ``step_loop`` runs the steps' backend calls on an event loop (the
    worker's wiring, ``worker.bootstrap.build_service``, gives one); without it they run
    on ``settings.step_threads`` threads through ``call_step`` and ``backends``.
    """

    def __init__(
        self,
        settings: Settings,
        store: StateStore,
        failed: FailedStore,
        backends: Backends,
        *,
        kick: Callable[[str], None] | None = None,
        kick_many: Callable[[Sequence[str]], None] | None = None,
        now: Callable[[], datetime] = utcnow,
        rng: random.Random | None = None,
        hostname: str | None = None,
        observer: Observer | None = None,
        step_loop: Callable[[], StepLoop] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.failed = failed
        self.backends = backends
        self.kick: Callable[[str], None] = kick or (lambda record_id: None)
        self.kick_many: Callable[[Sequence[str]], None] = kick_many or self._kick_each
        self.now = now
        self.rng = rng or random.Random()
        self.hostname = hostname or socket.gethostname()
        self.observer: Observer = observer or NoObserver()
        self._steps: StepRunner | None = None
        self._make_step_loop = step_loop
        self._step_loop: StepLoop | None = None
        self._leases: LeaseKeeper | None = None

    def _kick_each(self, record_ids: Sequence[str]) -> None:
        for record_id in record_ids:
            self.kick(record_id)

    def close(self, timeout: float = 5.0) -> None:
        """Close the backends' HTTP clients (a process that ends): steps still on the step
        loop are cancelled (they run again after recovery, with the same keys); the step
        threads idle until the process ends."""
        self.backends.close()
        self._steps = None
        if self._step_loop is not None:
            self._step_loop.close(timeout)
            self._step_loop = None

    # -- accepting -------------------------------------------------------------------------

    def accept(self, event: Event, *, context: Mapping[str, Any] | None = None,
               message: Mapping[str, Any] | None = None) -> Accepted:
        """Queue a validated event in its record's inbox (see ``accept_all``)."""
        return ingest.accept_all(self, [event], context=context, message=message)[0]

    def accept_all(self, events: Sequence[Event], *, context: Mapping[str, Any] | None = None,
                   message: Mapping[str, Any] | None = None) -> list[Accepted]:
        """Queue validated events in their records' inboxes in one round trip, in order.
        Accepting the same event id again queues nothing."""
        return ingest.accept_all(self, events, context=context, message=message)

    def targets(self, event: Event) -> list[str]:
        """The records an event is for: its subject, or every record linking a deleted parent."""
        return ingest.targets(self, event)

    def refuse(self, raw: Any, error: BaseException, *, task: str, reasons: list[str],
               body: Mapping[str, Any] | None = None,
               task_id: str | None = None) -> FailedTask:
        """Put what could not be processed in the failed-task store; nothing is lost."""
        return failures.refuse(self, raw, error, task=task, reasons=reasons, body=body,
                               task_id=task_id)

    def handle_message(
        self, raw: Any, *, task_id: str | None = None, body: Mapping[str, Any] | None = None,
        drain: bool = True, replay_of: str | None = None,
    ) -> Accepted | FailedTask:
        """The Celery entry: validate, accept, then drain the record(s) right here.

        ``replay_of`` names the failed-task entry an operator replayed: it leaves the
        failed-task store once the event has been processed.
        """
        try:
            event = parse_event(raw)
        except InvalidEvent as exc:
            return self.refuse(raw, exc, task=HANDLE_EVENT, task_id=task_id, body=body,
                               reasons=[str(problem) for problem in exc.problems])
        context = {"task_id": task_id}
        if replay_of:
            context["replay_of"] = replay_of
        accepted = self.accept(event, context=context, message=body)
        log.info("event_accepted", event_id=event.id, event_type=event.type.value,
                 records=len(accepted.record_ids), new=accepted.new, task_id=task_id)
        if drain and accepted.record_ids:
            reports = self.drain_many(accepted.record_ids, task_id=task_id)
            handed_over = [report.record_id for report in reports if report.handed_over]
            if handed_over:
                self.kick_many(handed_over)
        return accepted

    # -- draining --------------------------------------------------------------------------

    def drain(self, record_id: str, *, task_id: str | None = None) -> DrainReport:
        """Apply the record's inbox in order while holding its lease (``drain_many`` of one
        record). Returns at once when another worker holds the lease (it will drain what was
        queued); raises LeaseLost when the lease was lost underneath."""
        report = self.drain_many([record_id], task_id=task_id)[0]
        if report.lost:
            raise LeaseLost(f"lost the lease of record {record_id}")
        return report

    def drain_many(self, record_ids: Sequence[str], *,
                   task_id: str | None = None) -> list[DrainReport]:
        """Drain several records' inboxes at once, each in order under its own lease (see
        ``worker.service.drain.Drain.run`` for the rules and the reports)."""
        if self._leases is None:
            self._leases = LeaseKeeper(self.store, self.settings.lease_seconds)
        return Drain(self, self.start_step, self._leases, task_id).run(record_ids)

    def start_step(self, step: RunStep, context: contextvars.Context) -> Future[StepResult]:
        """Start a step's backend calls off the drain's thread, in ``context``: on the step
        loop when the service has one, else on the step threads (``call_step``)."""
        if self._make_step_loop is not None:
            if self._step_loop is None:
                self._step_loop = self._make_step_loop()
            return self._step_loop.submit(step, context)
        if self._steps is None:
            self._steps = StepRunner(self.settings.step_threads)
        future: Future[StepResult] = self._steps.submit(context.run, self.call_step, step)
        return future

    def call_step(self, step: RunStep) -> StepResult:
        """Run a started step's backend calls (on a step thread; no store access)."""
        return call_step(self.backends, self.observer, step)

    def retry_delay(self, attempt: int) -> float:
        """Seconds before beat retry ``attempt`` (exponential, capped, jittered)."""
        return retry_delay(self.settings, self.rng, attempt)

    # -- sweeps (beat) ---------------------------------------------------------------------

    def recover(self) -> list[str]:
        """Kick a drain for every record with queued work and no live lease."""
        return sweeps.recover(self)

    def sweep_retries(self) -> list[str]:
        """Queue a retry for every record whose retry is due."""
        return sweeps.sweep_retries(self)

    def sweep_stuck(self) -> list[str]:
        """Kick records stuck in Processing or Deprovisioning with no live lease."""
        return sweeps.sweep_stuck(self)

    def sweep_calling_tests(self) -> list[str]:
        """Queue a timeout for every calling test InProgress past its limit."""
        return sweeps.sweep_calling_tests(self)

    def expire_failed(self) -> list[str]:
        """Drop failed-task entries past retention or over the cap, audited."""
        return failures.expire(self)
