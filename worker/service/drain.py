"""Draining records' inboxes: each record's events applied in order, under its lease.

Ordering (SPEC §3): an accepted event is appended to its record's inbox. One worker at a
time drains a record's inbox, holding the record's lease; it applies the head event and
commits (which pops it). The backend calls a change starts run on a step thread while the
drain goes on with the inbox; their result is applied when they end (``stale`` if the
record has left that step), and a new step waits for the one in flight. A killed worker's
lease expires after ``lease_seconds``; the recovery sweep then hands the record to another
worker, which runs any step in flight again with the same Idempotency-Keys.

One :class:`Drain` drains several records at once. The records advance together in rounds:
one pipelined read of their inboxes, each record's next events applied in memory as a chain
of commits computed from versions v, v+1, ... (each commit is an atomic compare-and-set, so
a chain lands up to its first refusal), every chain sent in one pipelined round trip, then
the steps those changes started, run side by side on the step threads, one per record.
"""

from __future__ import annotations

import contextvars
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field

import structlog

from statemachine import (
    Command,
    HistoryEntry,
    InvalidEvent,
    Outcome,
    ProvisioningState,
    Result,
    RunStep,
    StepResult,
    UnknownRecord,
    apply,
    dedupe_key,
    pending_step,
    trigger_of,
)
from worker import tracing
from worker.dataverse.outbox import entry_for
from worker.envelope import Envelope
from worker.errors import StoreError
from worker.service import failures
from worker.service.context import Context
from worker.service.effects import Plan, plan, retry_delay
from worker.service.leases import LeaseKeeper
from worker.service.steps import InFlight
from worker.store.protocol import Commit, CommitStatus, InboxItem, Release
from worker.task_names import HANDLE_EVENT

log = structlog.get_logger("worker")

INBOX_POLL_SECONDS = 0.05
# While steps run, the inboxes of their records are read again for the events that arrive
# meanwhile: every INBOX_POLL_SECONDS, or less often when so many steps are in flight that
# this would be more than INBOX_POLLS_PER_SECOND reads (hundreds of slow steps at once).
INBOX_POLLS_PER_SECOND = 1000
INBOX_READ = 32  # inbox events read per record per round trip


@dataclass
class DrainReport:
    record_id: str
    applied: int = 0
    unchanged: int = 0
    failed: int = 0
    steps: int = 0
    handed_over: bool = False
    lost: bool = False  # another worker took the lease over; the record is its now
    released: bool = False  # the lease was let go (drained, or handed over)
    outcomes: list[Result] = field(default_factory=list)


@dataclass
class _Lane:
    """One record a drain holds the lease of, and where its draining stands."""

    record_id: str
    record: ProvisioningState | None
    report: DrainReport
    buffer: deque[InboxItem] = field(default_factory=deque)  # read, not yet applied
    inflight: InFlight | None = None
    next_step: RunStep | None = None  # started by a committed change, not yet running
    step_trace: tracing.Context | None = None  # the apply span of the change that started it
    refill: bool = True  # read the inbox before going on
    polled: float = 0.0  # when the inbox was last read (monotonic)
    done: bool = False  # released, handed over or lost


@dataclass(frozen=True, slots=True)
class _Staged:
    """A commit computed in a round, waiting for the store's answer."""

    lane: _Lane
    commit: Commit
    command: Command
    outcome: Outcome
    plan: Plan
    envelope: Envelope | None  # the inbox event it pops; None for a step's result
    started: float  # perf_counter when it was computed
    trace: tracing.Context | None  # the apply span of its event (or of its step's event)


StartStep = Callable[[RunStep, contextvars.Context], Future[StepResult]]


class Drain:
    """One drain of several records (a ``drain_records`` task, or a batch of one).

    ``start_step`` starts a step's backend calls off this thread (on the process's step
    loop, or its step threads) in the given context and returns their future; ``leases``
    renews the leases this drain holds while it works.
    """

    def __init__(self, ctx: Context, start_step: StartStep, leases: LeaseKeeper,
                 task_id: str | None) -> None:
        self.ctx = ctx
        self.start_step = start_step
        self.leases = leases
        self.task_id = task_id
        self.owner = f"{ctx.hostname}:{uuid.uuid4().hex[:12]}"
        self._woken = threading.Event()  # set when a step of this drain ends

    def run(self, record_ids: Sequence[str]) -> list[DrainReport]:
        """Drain the records' inboxes, each in order under its own lease.

        Per record: a step's backend calls run while the drain goes on applying the events
        that arrive meanwhile (a ``provision.requested`` on a Processing record is then
        ``ignored``, SPEC §2.1); a new step waits for the one in flight, whose result is
        applied first (``stale`` when the record has left that step), so a record never
        has two steps talking to the backends at once.

        Returns one report per distinct record id, in order. A record whose lease another
        worker holds is skipped (empty report); one whose lease is lost underneath is
        reported ``lost`` and left to its new holder; one still busy past the drain budget
        is ``handed_over`` (its lease let go, the record left pending for a new task).
        """
        ids = list(dict.fromkeys(record_ids))
        reports = [DrainReport(record_id) for record_id in ids]
        if not ids:
            return reports
        # Holding the leases, this drain is the records' only writer: it reads them once
        # (with the head of each inbox, in the same round trip as the leases), then keeps
        # the versions its commits stored.
        claims = self.ctx.store.acquire_many(ids, self.owner, self.ctx.settings.lease_seconds,
                                             INBOX_READ)
        now = time.monotonic()
        # A step a record is in when its lease is taken (a crash, a handed-over drain) is run
        # again, with the same Idempotency-Keys, in the trace the record kept for it.
        lanes = [_Lane(report.record_id, claim.record, report, deque(claim.inbox),
                       next_step=pending_step(claim.record) if claim.record else None,
                       step_trace=tracing.context_of(
                           claim.record.tracking.step_trace if claim.record else None),
                       refill=False, polled=now)
                 for report, claim in zip(reports, claims, strict=True) if claim is not None]
        if not lanes:
            return reports
        with self._keep_leases([lane.record_id for lane in lanes]), \
                structlog.contextvars.bound_contextvars(task_id=self.task_id):
            try:
                self._rounds(lanes)
            finally:
                for lane in lanes:
                    if lane.inflight is not None:
                        lane.inflight.future.cancel()
                for lane in lanes:
                    if not lane.report.lost and not lane.report.released:
                        self._hand_over(lane.record_id)
        return reports

    def _rounds(self, lanes: list[_Lane]) -> None:
        """The rounds of ``run`` until every lane is released, handed over or lost."""
        deadline = time.monotonic() + self.ctx.settings.drain_budget_seconds
        while True:
            live = [lane for lane in lanes if not lane.done]
            if not live:
                return
            now = time.monotonic()
            late = now > deadline  # bounded task time: no new events, hand the rest over
            reading = [lane for lane in live if lane.refill and not late]
            if reading:
                inboxes = self.ctx.store.heads([lane.record_id for lane in reading],
                                               INBOX_READ)
                for lane, items in zip(reading, inboxes, strict=True):
                    lane.buffer = deque(items)
                    lane.refill, lane.polled = False, now
            staged: list[_Staged] = []
            releasing: list[_Lane] = []  # done once their commits land: release with them
            for lane in live:
                chain = self._chain(lane, events=not late)
                staged.extend(chain)
                if not late and self._finished_with(lane, chain):
                    releasing.append(lane)
            progressed = bool(staged or releasing)
            if progressed:
                statuses, answers = self.ctx.store.commit_many(
                    [change.commit for change in staged],
                    release=[lane.record_id for lane in releasing], owner=self.owner)
                self._settle(staged, statuses)
                self._released(releasing, answers)
            for lane in live:
                if self._start_next_step(lane):
                    progressed = True
            idle = [lane for lane in live if not lane.done and lane.inflight is None and late]
            if idle:
                progressed = True
                self._hand_over_late(idle)
            if not progressed:
                self._wait_for_steps(live)

    # -- a lane's chain of commits ---------------------------------------------------------

    def _chain(self, lane: _Lane, *, events: bool) -> list[_Staged]:
        """The lane's next commits, computed in memory from versions v, v+1, ...: a
        finished step's result first, then inbox events until one starts a new step (it
        starts once the chain is committed) or a step waits to start."""
        staged: list[_Staged] = []
        record = lane.record
        waiting = lane.next_step is not None
        if lane.inflight is not None and lane.inflight.future.done():
            result = lane.inflight.future.result()  # a crash in the thread is raised here
            lane.inflight = None
            if record is None:  # deleted by a Cascade meanwhile: nothing left to change
                log.info("step_result_for_deleted_record", step=result.kind.value,
                         record_id=lane.record_id)
            else:
                outcome = self._apply(record, result,
                                      trace=tracing.traceparent(lane.step_trace))
                change = self._stage(lane, record, result, outcome, None, lane.step_trace)
                staged.append(change)
                record = change.outcome.record
                waiting = waiting or change.plan.step is not None
        while events and lane.buffer and not waiting:
            item = lane.buffer[0]
            envelope = Envelope.decode(item.payload)
            stored = record.tracking.step_trace if record is not None else None
            with tracing.applying(envelope.event or tracing.carrier(stored),
                                  envelope.context.get(tracing.TRACE_KEY),
                                  lane.record_id, envelope.event_id, envelope.kind) as applied:
                try:
                    command = envelope.command()
                    outcome = self._apply(record, command,
                                          replayed=bool(envelope.context.get("replay_of")),
                                          trace=tracing.traceparent())
                except (InvalidEvent, UnknownRecord) as exc:
                    if staged:
                        break  # refused once the commits before it have landed
                    lane.buffer.popleft()
                    reasons = ([str(p) for p in exc.problems]
                               if isinstance(exc, InvalidEvent) else [str(exc)])
                    with structlog.contextvars.bound_contextvars(
                            record_id=lane.record_id, event_id=envelope.event_id):
                        if not self._fail_head(envelope, exc, reasons):
                            self._lost(lane)
                            return []
                    lane.report.failed += 1
                    continue
                tracing.annotate(**{"provisioning.outcome": outcome.result.value})
            lane.buffer.popleft()
            change = self._stage(lane, record, command, outcome, envelope, applied)
            staged.append(change)
            record = outcome.record
            waiting = change.plan.step is not None  # the step starts, then events go on
        return staged

    def _stage(self, lane: _Lane, record: ProvisioningState | None, command: Command,
               outcome: Outcome, envelope: Envelope | None,
               trace: tracing.Context | None) -> _Staged:
        """The commit of ``outcome`` (popping ``envelope`` from the inbox, if any)."""
        settings = self.ctx.settings
        what = plan(outcome, settings, lambda attempt: retry_delay(settings, self.ctx.rng,
                                                                   attempt))
        entries = tuple(entry.with_task(self.task_id) for entry in outcome.entries)
        outbox = entry_for(record, outcome) if settings.dataverse_url else None
        commit = Commit(
            record_id=lane.record_id,
            expected_version=record.version if record is not None else 0,
            before=record, after=outcome.record, entries=entries,
            dedupe_key=dedupe_key(command) if outcome.applied else None,
            pop_event_id=envelope.event_id if envelope is not None else None,
            lease_owner=self.owner, deleted=outcome.deleted,
            retry_at=what.retry_at, cancel_retry=what.cancel_retry, outbox_entry=outbox,
        )
        return _Staged(lane, commit, command, outcome, what, envelope, time.perf_counter(),
                       trace)

    def _apply(self, record: ProvisioningState | None, command: Command, *,
               replayed: bool = False, trace: str | None = None) -> Outcome:
        """Apply ``command`` (a step it starts keeps ``trace``). Only a replay looks its
        dedupe key up first (to record ``duplicate``); else the commit refuses an applied key."""
        duplicate = replayed and record is not None and self.ctx.store.is_applied(
            record.id, dedupe_key(command))
        return apply(record, command, now=self.ctx.now(), duplicate=duplicate, trace=trace)

    @staticmethod
    def _finished_with(lane: _Lane, chain: list[_Staged]) -> bool:
        """Whether the lane has nothing left to do once ``chain`` lands: no step running,
        waiting or started by the chain, no event read and not applied, and no step result
        in the chain (its refusal could leave a step to run again)."""
        if lane.done or lane.inflight is not None or lane.buffer or lane.refill:
            return False
        if any(change.envelope is None for change in chain):
            return False
        step = lane.next_step
        for change in chain:
            if change.plan.deleted:
                step = None
            elif change.plan.step is not None:
                step = change.plan.step
        return step is None

    # -- the store's answers ---------------------------------------------------------------

    def _settle(self, staged: list[_Staged], statuses: list[CommitStatus]) -> None:
        """Take in the store's answers to a round's commits, in order. A chain stops at its
        first refusal: the rest of it was refused too (its versions no longer match) and
        its events are still in the inbox, read again next round."""
        stopped: set[str] = set()
        for change, status in zip(staged, statuses, strict=True):
            lane = change.lane
            if lane.record_id in stopped or lane.done:
                continue
            if status is CommitStatus.OK:
                lane.record = change.outcome.record
                if change.plan.deleted:
                    lane.next_step = None
                elif change.plan.step is not None:
                    lane.next_step, lane.step_trace = change.plan.step, change.trace
                self._committed(change, change.commit.entries, change.outcome)
                if change.plan.scheduled is not None and change.commit.retry_at is not None:
                    self.ctx.observer.retry_scheduled(change.plan.scheduled.attempt)
                if change.plan.exhausted is not None:
                    failures.retries_exhausted(self.ctx, change.outcome.record,
                                               change.plan.exhausted, self.task_id)
                continue
            stopped.add(lane.record_id)
            lane.buffer.clear()
            lane.refill = True
            if status is CommitStatus.DUPLICATE and self._duplicate(change):
                continue
            self._lost(lane)

    def _duplicate(self, change: _Staged) -> bool:
        """The change's dedupe key was applied by an earlier delivery that died before it
        popped: record the duplicate and pop, changing nothing else. False: lease lost."""
        record = change.commit.before
        outcome = apply(record, change.command, now=self.ctx.now(), duplicate=True)
        entries = tuple(entry.with_task(self.task_id) for entry in outcome.entries)
        status = self.ctx.store.commit(Commit(
            record_id=change.commit.record_id, expected_version=change.commit.expected_version,
            before=record, after=record, entries=entries,
            pop_event_id=change.commit.pop_event_id, lease_owner=self.owner,
        ))
        if status is not CommitStatus.OK:
            return False
        change.lane.record = record
        self._committed(change, entries, outcome)
        return True

    def _committed(self, change: _Staged, entries: tuple[HistoryEntry, ...],
                   outcome: Outcome) -> None:
        """Count, observe and log what a commit stored."""
        report = change.lane.report
        trigger = trigger_of(change.command)
        for entry in entries:
            self.ctx.observer.entry_committed(entry)
            report.outcomes.append(entry.outcome)
            if entry.outcome is Result.APPLIED:
                report.applied += 1
            else:
                report.unchanged += 1
            with tracing.attached(change.trace):  # the line carries the event's trace id
                log.info("history", event_id=entry.event_id, event_type=entry.event_type,
                         trigger=entry.trigger, outcome=entry.outcome.value,
                         version=entry.version, reason=entry.reason,
                         record_id=entry.record_id, task_id=self.task_id)
        self.ctx.observer.transition_seconds(trigger, time.perf_counter() - change.started)
        envelope = change.envelope
        if envelope is not None and envelope.context.get("replay_of"):
            failures.resolve_replay(self.ctx, str(envelope.context["replay_of"]), envelope,
                                    outcome)

    def _fail_head(self, envelope: Envelope, error: BaseException, reasons: list[str]) -> bool:
        """Keep an event that cannot apply in the failed-task store, then pop it; False
        when the pop was refused (the lease is no longer ours)."""
        raw = envelope.event if envelope.event is not None else envelope.encode()
        body = envelope.message or {"args": [envelope.event], "kwargs": {}}
        failures.refuse(self.ctx, raw, error, task=HANDLE_EVENT, reasons=reasons, body=body,
                        task_id=self.task_id)
        return self.ctx.store.drop_head(envelope.record_id, envelope.event_id, self.owner)

    # -- steps -----------------------------------------------------------------------------

    def _start_next_step(self, lane: _Lane) -> bool:
        """Start the step a committed change started, once no other step runs; False when
        there is none to start."""
        step = lane.next_step
        if lane.done or lane.inflight is not None or step is None or lane.record is None:
            return False
        lane.next_step = None
        lane.report.steps += 1
        with structlog.contextvars.bound_contextvars(record_id=lane.record_id), \
                tracing.attached(lane.step_trace):
            context = contextvars.copy_context()  # the step logs with record_id, in the trace
        future = self.start_step(step, context)
        future.add_done_callback(lambda _: self._woken.set())
        lane.inflight = InFlight((step.kind, step.started_version), future)
        return True

    def _wait_for_steps(self, lanes: list[_Lane]) -> None:
        """Nothing to do but wait: for a step to end, or for the next look at the inboxes
        of records whose step runs (events that arrive meanwhile are applied)."""
        futures = [lane.inflight.future for lane in lanes if lane.inflight is not None]
        poll = max(INBOX_POLL_SECONDS, len(futures) / INBOX_POLLS_PER_SECOND)
        if futures:
            # Cleared before looking, so that a step ending meanwhile still wakes the wait.
            self._woken.clear()
            if not any(future.done() for future in futures):
                self._woken.wait(poll)
        now = time.monotonic()
        for lane in lanes:
            if not lane.buffer and now - lane.polled >= poll:
                lane.refill = True

    # -- leases ----------------------------------------------------------------------------

    @contextmanager
    def _keep_leases(self, record_ids: list[str]) -> Iterator[None]:
        """Renew the leases in the background while this drain works (long backend calls
        included); a killed process stops renewing and the leases expire."""
        for record_id in record_ids:
            self.leases.hold(record_id, self.owner)
        try:
            yield
        finally:
            for record_id in record_ids:
                self.leases.drop(record_id)

    def _released(self, lanes: list[_Lane], answers: list[Release]) -> None:
        """The store's answers to releasing leases: BUSY means events arrived meanwhile
        (or an event of the chain was refused): read the inbox again."""
        for lane, answer in zip(lanes, answers, strict=True):
            if lane.done:  # its chain was refused as lost already
                continue
            if answer is Release.RELEASED:
                lane.report.released = True
                self._finish_lane(lane)
            elif answer is Release.BUSY:
                lane.refill = True
            else:
                self._lost(lane)

    def _hand_over_late(self, lanes: list[_Lane]) -> None:
        """Past the drain budget: let go of the records with no step running. One whose
        inbox is empty is released as usual; the others are handed over (their lease let
        go, the record left pending) for a fresh task to drain."""
        waiting = [lane for lane in lanes if not lane.buffer]
        for lane in lanes:
            if lane.buffer:
                self._finish_lane(lane, handed_over=True)
        answers = self.ctx.store.release_many([lane.record_id for lane in waiting],
                                              self.owner)
        for lane, answer in zip(waiting, answers, strict=True):
            if answer is Release.RELEASED:
                lane.report.released = True
                self._finish_lane(lane)
            elif answer is Release.BUSY:
                self._finish_lane(lane, handed_over=True)
            else:
                self._lost(lane)

    def _finish_lane(self, lane: _Lane, *, handed_over: bool = False) -> None:
        lane.done = True
        self.leases.drop(lane.record_id)
        if handed_over:
            lane.report.handed_over = True
            self._hand_over(lane.record_id)
            lane.report.released = True

    def _hand_over(self, record_id: str) -> None:
        """Let the lease go now rather than at expiry; the record stays pending, so a kick
        or the recovery sweep drains the rest."""
        try:
            self.ctx.store.release_lease(record_id, self.owner, hand_over=True)
        except StoreError:
            log.warning("lease_hand_over_failed", record_id=record_id)

    def _lost(self, lane: _Lane) -> None:
        log.warning("lease_lost", record_id=lane.record_id)
        lane.report.lost = True
        self._finish_lane(lane)

