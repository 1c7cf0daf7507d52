"""The service functions every entry point calls: accept, drain, recover, sweep.

Celery tasks stay thin and call these; tests drive them directly with the in-memory
store and the emulator transport.

Ordering (SPEC §3): an accepted event is appended to its record's inbox. One worker at a
time drains a record's inbox, holding the record's lease; it applies the head event and
commits (which pops it). The backend calls a change starts run on a background thread
while the drain goes on with the inbox; their result is applied when they end (``stale``
if the record has left that step), and a new step waits for the one in flight. A killed
worker's lease expires after ``lease_seconds``; the recovery sweep then hands the record
to another worker, which runs any step in flight again with the same Idempotency-Keys.
"""

from __future__ import annotations

import contextvars
import queue
import random
import socket
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from statemachine import (
    LOOKUP_BY_PARENT,
    AutomatedCallingStatus,
    CallingTestTimedOut,
    CancelRetry,
    Command,
    DeleteRecord,
    Event,
    EventType,
    HistoryEntry,
    InvalidEvent,
    Outcome,
    ParentDeleted,
    ProvisioningState,
    Result,
    RetryDue,
    RunStep,
    ScheduleRetry,
    StatusReason,
    StepKind,
    StepResult,
    UnknownRecord,
    apply,
    dedupe_key,
    format_time,
    parse_event,
    parse_time,
    pending_step,
    trigger_of,
)
from worker.backends import Backends
from worker.envelope import EVENT, Envelope
from worker.errors import LeaseLost, RetriesExhausted, StoreError
from worker.failed import FailedStore, FailedTask, entry_id
from worker.keys import dumps
from worker.observe import NoObserver, Observer
from worker.settings import Settings
from worker.store import Commit, CommitStatus, InboxItem, Release, StateStore

log = structlog.get_logger("worker")

HANDLE_EVENT = "provisioning.handle_event"
DRAIN_RECORD = "provisioning.drain_record"
DRAIN_RECORDS = "provisioning.drain_records"
RETRY_TASK = "provisioning.retry"


@dataclass(frozen=True, slots=True)
class Accepted:
    """What accepting one event did: the records it was queued for, and the new ones."""

    event: Event
    record_ids: tuple[str, ...]
    new: bool


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


INBOX_POLL_SECONDS = 0.05
INBOX_READ = 32  # inbox events read per record per round trip
RECOVERY_BATCH = 1000  # orphans kicked per sweep at most; the next sweep takes the rest


@dataclass(frozen=True, slots=True)
class _InFlight:
    """A step whose backend calls are running in the background thread."""

    key: tuple[StepKind, int]
    future: Future[StepResult]


@dataclass
class _Lane:
    """One record a drain holds the lease of, and where its draining stands."""

    record_id: str
    record: ProvisioningState | None
    report: DrainReport
    buffer: deque[InboxItem] = field(default_factory=deque)  # read, not yet applied
    inflight: _InFlight | None = None
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
    envelope: Envelope | None  # the inbox event it pops; None for a step's result
    exhausted: ScheduleRetry | None
    started: float  # perf_counter when it was computed


class _StepRunner:
    """Runs steps' backend calls on a few daemon threads (steps of different records side
    by side; a record never has two steps at once, the drain sees to that).

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


class _LeaseKeeper:
    """One thread per process renews every lease this process holds, every third of the
    lease time; a killed process stops renewing, and its leases expire."""

    def __init__(self, store: StateStore, seconds: float) -> None:
        self.store = store
        self.seconds = seconds
        self._held: dict[str, str] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
        self._thread.start()

    def hold(self, record_id: str, owner: str) -> None:
        with self._lock:
            self._held[record_id] = owner

    def drop(self, record_id: str) -> None:
        with self._lock:
            self._held.pop(record_id, None)

    def _run(self) -> None:
        while True:
            time.sleep(self.seconds / 3)
            with self._lock:
                held = list(self._held.items())
            for record_id, owner in held:
                try:
                    self.store.renew_lease(record_id, owner, self.seconds)
                except StoreError:
                    log.warning("lease_renew_failed", record_id=record_id)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Service:
    """Wires the store, the failed-task store and the backends into the worker's behaviour."""

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
    ) -> None:
        self.settings = settings
        self.store = store
        self.failed = failed
        self.backends = backends
        self.kick = kick or (lambda record_id: None)
        self.kick_many: Callable[[Sequence[str]], None] = kick_many or self._kick_each
        self.now = now
        self.rng = rng or random.Random()
        self.hostname = hostname or socket.gethostname()
        self.observer: Observer = observer or NoObserver()
        self._steps: _StepRunner | None = None
        self._leases: _LeaseKeeper | None = None

    def _kick_each(self, record_ids: Sequence[str]) -> None:
        for record_id in record_ids:
            self.kick(record_id)

    def close(self) -> None:
        """Close the backends' HTTP client and the step thread (a process that ends)."""
        self.backends.close()
        self._steps = None  # its daemon thread idles until the process ends

    # -- accepting ---------------------------------------------------------------------

    def accept(
        self, event: Event, *, context: Mapping[str, Any] | None = None,
        message: Mapping[str, Any] | None = None,
    ) -> Accepted:
        """Queue a validated event in its record's inbox (each linking record's, for
        ``parent.deleted``). Accepting the same event id again queues nothing."""
        return self.accept_all([event], context=context, message=message)[0]

    def accept_all(
        self, events: Sequence[Event], *, context: Mapping[str, Any] | None = None,
        message: Mapping[str, Any] | None = None,
    ) -> list[Accepted]:
        """``accept`` for many events in one pipelined round trip, in the given order."""
        accepted_at = format_time(self.now())
        targets = [self.targets(event) for event in events]
        items = [
            (record_id, event.id, Envelope(
                kind=EVENT, record_id=record_id, event_id=event.id,
                event=event.to_cloudevent(), accepted_at=accepted_at,
                context=dict(context or {}), message=dict(message) if message else None,
            ).encode())
            for event, record_ids in zip(events, targets, strict=True)
            for record_id in record_ids
        ]
        # The caller kicks a drain for these records: recovery sweeps leave them alone for
        # a lease time (a record waiting its turn in a backlog is not an orphan).
        added = (self.store.accept_many(items, now=time.time(),
                                        claim_seconds=self.settings.lease_seconds)
                 if items else [])
        results, start = [], 0
        for event, record_ids in zip(events, targets, strict=True):
            flags = added[start:start + len(record_ids)]  # one per target, in order
            start += len(record_ids)
            results.append(Accepted(event, tuple(record_ids), any(flags)))
        return results

    def targets(self, event: Event) -> list[str]:
        """The records an event is for: its subject, or every record linking a deleted parent."""
        if event.type is EventType.PARENT_DELETED:
            assert isinstance(event.data, ParentDeleted)
            lookup = LOOKUP_BY_PARENT[event.data.table]
            return self.store.records_linking(lookup.column, event.data.parent_id)
        assert event.subject is not None
        return [event.subject]

    def refuse(
        self, raw: Any, error: BaseException, *, task: str, reasons: list[str],
        body: Mapping[str, Any] | None = None, task_id: str | None = None,
    ) -> FailedTask:
        """Put what could not be processed in the failed-task store; nothing is lost."""
        event = raw if isinstance(raw, Mapping) else {}
        event_id = event.get("id") if isinstance(event.get("id"), str) else None
        event_type = event.get("type") if isinstance(event.get("type"), str) else None
        subject = event.get("subject") if isinstance(event.get("subject"), str) else None
        message_body = dict(body) if body is not None else {"args": [raw], "kwargs": {}}
        stamp = format_time(self.now())
        entry = FailedTask(
            id=entry_id(task, event_id, message_body),
            task=task, event_id=event_id, event_type=event_type, record_id=subject,
            exception=type(error).__name__, message=str(error),
            traceback="".join(traceback.format_exception(error)),
            attempts=1, first_failed_at=stamp, last_failed_at=stamp, hostname=self.hostname,
            reasons=tuple(reasons), body=message_body,
        )
        stored = self.failed.record(entry)
        self.observer.task_failed(task, stored.exception)
        log.warning("task_failed", entry=stored.id, task=task, exception=stored.exception,
                    event_id=event_id, record_id=subject, reason=stored.message,
                    task_id=task_id)
        return stored

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

    # -- draining ----------------------------------------------------------------------

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
        """Drain several records' inboxes at once, each in order under its own lease.

        The records advance together in rounds: one pipelined read of their inboxes, each
        record's next events applied in memory as a chain of commits computed from
        versions v, v+1, ..., every chain sent in one pipelined round trip (each commit is
        an atomic compare-and-set, so a chain lands up to its first refusal), then the
        backend steps those changes started, run side by side on the step threads, one per
        record. Per record the rules are ``drain``'s: a step's backend calls run while the
        drain goes on applying the events that arrive meanwhile (a ``provision.requested``
        on a Processing record is then ``ignored``, SPEC §2.1); a new step waits for the
        one in flight, whose result is applied first (``stale`` when the record has left
        that step), so a record never has two steps talking to the backends at once.

        Returns one report per distinct record id, in order. A record whose lease another
        worker holds is skipped (empty report); one whose lease is lost underneath is
        reported ``lost`` and left to its new holder; one still busy past the drain budget
        is ``handed_over`` (its lease let go, the record left pending for a new task).
        """
        ids = list(dict.fromkeys(record_ids))
        reports = [DrainReport(record_id) for record_id in ids]
        if not ids:
            return reports
        owner = f"{self.hostname}:{uuid.uuid4().hex[:12]}"
        # Holding the leases, this drain is the records' only writer: it reads them once
        # (with the head of each inbox, in the same round trip as the leases), then keeps
        # the versions its commits stored.
        claims = self.store.acquire_many(ids, owner, self.settings.lease_seconds, INBOX_READ)
        now = time.monotonic()
        lanes = [_Lane(report.record_id, claim.record, report, deque(claim.inbox),
                       refill=False, polled=now)
                 for report, claim in zip(reports, claims, strict=True) if claim is not None]
        if not lanes:
            return reports
        mine = [lane.report for lane in lanes]
        with self._keep_leases([lane.record_id for lane in lanes], owner), \
                structlog.contextvars.bound_contextvars(task_id=task_id):
            try:
                self._run_lanes(lanes, owner, task_id)
            finally:
                for lane in lanes:
                    if lane.inflight is not None:
                        lane.inflight.future.cancel()
                for report in mine:
                    if not report.lost and not report.released:
                        self._hand_over(report.record_id, owner)
        return reports

    def _run_lanes(self, lanes: list[_Lane], owner: str, task_id: str | None) -> None:
        """The rounds of ``drain_many`` until every lane is released, handed over or lost."""
        deadline = time.monotonic() + self.settings.drain_budget_seconds
        while True:
            live = [lane for lane in lanes if not lane.done]
            if not live:
                return
            now = time.monotonic()
            late = now > deadline  # bounded task time: no new events, hand the rest over
            reading = [lane for lane in live if lane.refill and not late]
            if reading:
                inboxes = self.store.heads([lane.record_id for lane in reading], INBOX_READ)
                for lane, items in zip(reading, inboxes, strict=True):
                    lane.buffer = deque(items)
                    lane.refill, lane.polled = False, now
            staged: list[_Staged] = []
            releasing: list[_Lane] = []  # done once their commits land: release with them
            for lane in live:
                chain = self._chain(lane, owner, task_id, events=not late)
                staged.extend(chain)
                if not late and self._finished_with(lane, chain):
                    releasing.append(lane)
            progressed = bool(staged or releasing)
            if progressed:
                statuses, answers = self.store.commit_many(
                    [change.commit for change in staged],
                    release=[lane.record_id for lane in releasing], owner=owner)
                self._settle(staged, statuses, owner, task_id)
                self._released(releasing, answers)
            for lane in live:
                if lane.done or lane.inflight is not None or lane.record is None:
                    continue
                step = pending_step(lane.record)
                if step is not None:
                    with structlog.contextvars.bound_contextvars(record_id=lane.record_id):
                        lane.inflight = self._start_step(step, lane.report)
                    progressed = True
            idle = [lane for lane in live if not lane.done and lane.inflight is None and late]
            if idle:
                progressed = True
                self._hand_over_late(idle, owner)
            if not progressed:
                self._wait_for_steps(live)

    @staticmethod
    def _finished_with(lane: _Lane, chain: list[_Staged]) -> bool:
        """Whether the lane has nothing left to do once ``chain`` lands: no step running
        or to start, no event read and not applied, and no step result in the chain (its
        refusal could leave a step to run again)."""
        if lane.done or lane.inflight is not None or lane.buffer or lane.refill:
            return False
        if any(change.envelope is None for change in chain):
            return False
        record = chain[-1].outcome.record if chain else lane.record
        return record is None or pending_step(record) is None

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

    def _wait_for_steps(self, lanes: list[_Lane]) -> None:
        """Nothing to do but wait: for a step to end, or for the next look at the inboxes
        of records whose step runs (events that arrive meanwhile are applied)."""
        futures = [lane.inflight.future for lane in lanes if lane.inflight is not None]
        if futures:
            wait(futures, timeout=INBOX_POLL_SECONDS, return_when=FIRST_COMPLETED)
        now = time.monotonic()
        for lane in lanes:
            if not lane.buffer and now - lane.polled >= INBOX_POLL_SECONDS:
                lane.refill = True

    def _hand_over_late(self, lanes: list[_Lane], owner: str) -> None:
        """Past the drain budget: let go of the records with no step running. One whose
        inbox is empty is released as usual; the others are handed over (their lease let
        go, the record left pending) for a fresh task to drain."""
        waiting = [lane for lane in lanes if not lane.buffer]
        for lane in lanes:
            if lane.buffer:
                self._finish_lane(lane, handed_over=True, owner=owner)
        answers = self.store.release_many([lane.record_id for lane in waiting], owner)
        for lane, answer in zip(waiting, answers, strict=True):
            if answer is Release.RELEASED:
                lane.report.released = True
                self._finish_lane(lane)
            elif answer is Release.BUSY:
                self._finish_lane(lane, handed_over=True, owner=owner)
            else:
                self._lost(lane)

    def _finish_lane(self, lane: _Lane, *, handed_over: bool = False,
                     owner: str | None = None) -> None:
        lane.done = True
        if self._leases is not None:
            self._leases.drop(lane.record_id)
        if handed_over:
            assert owner is not None
            lane.report.handed_over = True
            self._hand_over(lane.record_id, owner)
            lane.report.released = True

    def _lost(self, lane: _Lane) -> None:
        log.warning("lease_lost", record_id=lane.record_id)
        lane.report.lost = True
        self._finish_lane(lane)

    def _chain(self, lane: _Lane, owner: str, task_id: str | None, *,
               events: bool) -> list[_Staged]:
        """The lane's next commits, computed in memory from versions v, v+1, ...: a
        finished step's result first, then inbox events until one starts a new step (it
        starts once the chain is committed) or must wait for the step in flight."""
        staged: list[_Staged] = []
        record = lane.record
        if lane.inflight is not None and lane.inflight.future.done():
            result = lane.inflight.future.result()  # a crash in the thread is raised here
            lane.inflight = None
            if record is None:  # deleted by a Cascade meanwhile: nothing left to change
                log.info("step_result_for_deleted_record", step=result.kind.value,
                         record_id=lane.record_id)
            else:
                change = self._stage(lane, record, result, self._apply(record, result),
                                     owner, task_id, None)
                staged.append(change)
                record = change.outcome.record
        while events and lane.buffer:
            step = pending_step(record) if record is not None else None
            if step is not None and (lane.inflight is None
                                     or lane.inflight.key != (step.kind, step.started_version)):
                break  # the step starts, or the one in flight ends, first
            item = lane.buffer[0]
            envelope = Envelope.decode(item.payload)
            try:
                command = envelope.command()
                outcome = self._apply(record, command,
                                      replayed=bool(envelope.context.get("replay_of")))
            except (InvalidEvent, UnknownRecord) as exc:
                if staged:
                    break  # refused once the commits before it have landed
                lane.buffer.popleft()
                reasons = ([str(p) for p in exc.problems] if isinstance(exc, InvalidEvent)
                           else [str(exc)])
                with structlog.contextvars.bound_contextvars(
                        record_id=lane.record_id, event_id=envelope.event_id):
                    if not self._fail_head(envelope, exc, owner, task_id, reasons):
                        self._lost(lane)
                        return []
                lane.report.failed += 1
                continue
            lane.buffer.popleft()
            change = self._stage(lane, record, command, outcome, owner, task_id, envelope)
            staged.append(change)
            record = outcome.record
        return staged

    def _stage(self, lane: _Lane, record: ProvisioningState | None, command: Command,
               outcome: Outcome, owner: str, task_id: str | None,
               envelope: Envelope | None) -> _Staged:
        """The commit of ``outcome`` (popping ``envelope`` from the inbox, if any)."""
        retry_at, cancel = None, False
        exhausted: ScheduleRetry | None = None
        for effect in outcome.effects:
            if isinstance(effect, ScheduleRetry):
                if effect.attempt > self.settings.max_retries:
                    exhausted = effect
                    cancel = True
                else:
                    retry_at = time.time() + self.retry_delay(effect.attempt)
            elif isinstance(effect, CancelRetry | DeleteRecord):
                cancel = True
        entries = tuple(entry.with_task(task_id) for entry in outcome.entries)
        outbox = self._outbox_entry(record, outcome) if self.settings.dataverse_url else None
        commit = Commit(
            record_id=lane.record_id,
            expected_version=record.version if record is not None else 0,
            before=record, after=outcome.record, entries=entries,
            dedupe_key=dedupe_key(command) if outcome.applied else None,
            pop_event_id=envelope.event_id if envelope is not None else None,
            lease_owner=owner, deleted=outcome.deleted,
            retry_at=retry_at, cancel_retry=cancel and retry_at is None, outbox_entry=outbox,
        )
        return _Staged(lane, commit, command, outcome, envelope, exhausted,
                       time.perf_counter())

    def _settle(self, staged: list[_Staged], statuses: list[CommitStatus], owner: str,
                task_id: str | None) -> None:
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
                self._committed(change, change.commit.entries, change.outcome, task_id)
                if change.commit.retry_at is not None:
                    for effect in change.outcome.effects:
                        if isinstance(effect, ScheduleRetry):
                            self.observer.retry_scheduled(effect.attempt)
                if change.exhausted is not None:
                    self._retries_exhausted(change.outcome.record, change.exhausted, task_id)
                continue
            stopped.add(lane.record_id)
            lane.buffer.clear()
            lane.refill = True
            if status is CommitStatus.DUPLICATE and self._duplicate(change, owner, task_id):
                continue
            self._lost(lane)

    def _duplicate(self, change: _Staged, owner: str, task_id: str | None) -> bool:
        """The change's dedupe key was applied by an earlier delivery that died before it
        popped: record the duplicate and pop, changing nothing else. False: lease lost."""
        record = change.commit.before
        outcome = apply(record, change.command, now=self.now(), duplicate=True)
        entries = tuple(entry.with_task(task_id) for entry in outcome.entries)
        status = self.store.commit(Commit(
            record_id=change.commit.record_id, expected_version=change.commit.expected_version,
            before=record, after=record, entries=entries,
            pop_event_id=change.commit.pop_event_id, lease_owner=owner,
        ))
        if status is not CommitStatus.OK:
            return False
        change.lane.record = record
        self._committed(change, entries, outcome, task_id)
        return True

    def _committed(self, change: _Staged, entries: tuple[HistoryEntry, ...], outcome: Outcome,
                   task_id: str | None) -> None:
        """Count, observe and log what a commit stored."""
        report = change.lane.report
        trigger = trigger_of(change.command)
        for entry in entries:
            self.observer.entry_committed(entry)
            report.outcomes.append(entry.outcome)
            if entry.outcome is Result.APPLIED:
                report.applied += 1
            else:
                report.unchanged += 1
            log.info("history", event_id=entry.event_id, event_type=entry.event_type,
                     trigger=entry.trigger, outcome=entry.outcome.value, version=entry.version,
                     reason=entry.reason, record_id=entry.record_id, task_id=task_id)
        self.observer.transition_seconds(trigger, time.perf_counter() - change.started)
        envelope = change.envelope
        if envelope is not None and envelope.context.get("replay_of"):
            self._resolved(str(envelope.context["replay_of"]), envelope, outcome)

    def _hand_over(self, record_id: str, owner: str) -> None:
        """Let the lease go now rather than at expiry; the record stays pending, so a kick
        or the recovery sweep drains the rest."""
        try:
            self.store.release_lease(record_id, owner, hand_over=True)
        except StoreError:
            log.warning("lease_hand_over_failed", record_id=record_id)

    @contextmanager
    def _keep_leases(self, record_ids: list[str], owner: str) -> Iterator[None]:
        """Renew the leases in the background while this worker drains (long backend
        calls included); a killed process stops renewing and the leases expire."""
        if self._leases is None:
            self._leases = _LeaseKeeper(self.store, self.settings.lease_seconds)
        for record_id in record_ids:
            self._leases.hold(record_id, owner)
        try:
            yield
        finally:
            for record_id in record_ids:
                self._leases.drop(record_id)

    def _resolved(self, entry_id: str, envelope: Envelope, outcome: Outcome) -> None:
        """A replayed entry was processed: it leaves the failed-task store, audited."""
        if self.failed.remove(entry_id):
            self.failed.append_audit({
                "at": format_time(self.now()), "operator": "worker", "action": "resolved",
                "entry": entry_id, "event_id": envelope.event_id,
                "record_id": envelope.record_id, "reason": "",
                "result": f"{outcome.result.value}: {outcome.reason}",
            })
            log.info("replay_resolved", entry=entry_id, outcome=outcome.result.value)

    def _apply(self, record: ProvisioningState | None, command: Command, *,
               replayed: bool = False) -> Outcome:
        """Apply ``command``. Only a replay looks its dedupe key up first (so that an event
        already applied is recorded as ``duplicate`` whatever the record's state now); on
        the normal path the accepted-event dedupe keeps duplicates out of the inbox, and the
        commit refuses an applied key anyway (saving a round trip per command)."""
        duplicate = replayed and record is not None and self.store.is_applied(
            record.id, dedupe_key(command))
        return apply(record, command, now=self.now(), duplicate=duplicate)

    def _fail_head(self, envelope: Envelope, error: BaseException, owner: str,
                   task_id: str | None, reasons: list[str]) -> bool:
        """Keep an event that cannot apply in the failed-task store, then pop it; False
        when the pop was refused (the lease is no longer ours)."""
        raw = envelope.event if envelope.event is not None else envelope.encode()
        body = envelope.message or {"args": [envelope.event], "kwargs": {}}
        self.refuse(raw, error, task=HANDLE_EVENT, reasons=reasons, body=body, task_id=task_id)
        return self.store.drop_head(envelope.record_id, envelope.event_id, owner)

    def _outbox_entry(self, before: ProvisioningState | None, outcome: Outcome) -> str | None:
        """What the Dataverse mirror must send for this change (None: nothing it sees)."""
        if not outcome.applied:
            return None
        after = outcome.record
        columns: list[str]
        row: dict[str, Any] | None
        if outcome.deleted:
            op, columns, row = "delete", [], None
        elif before is None:
            assert after is not None
            op, columns, row = "create", [], after.to_dataverse()
        else:
            assert after is not None
            changed = after.changed_columns(before)
            if not changed:
                return None  # the worker's own bookkeeping (a calling test id): not a column
            op, columns, row = "update", sorted(changed), after.to_dataverse()
        last = outcome.entries[-1]
        return dumps({"op": op, "record_id": last.record_id, "version": last.version,
                      "columns": columns, "row": row, "event_id": last.event_id,
                      "at": format_time(last.at)})

    def retry_delay(self, attempt: int) -> float:
        """Exponential with a cap and jitter: base·2^(attempt-1), capped, then 50-100%."""
        delay = min(self.settings.retry_cap_seconds,
                    self.settings.retry_base_seconds * 2.0 ** (attempt - 1))
        return delay * (0.5 + self.rng.random() / 2)

    def _retries_exhausted(self, record: ProvisioningState | None, effect: ScheduleRetry,
                           task_id: str | None) -> None:
        if record is None:
            return
        error = RetriesExhausted(
            f"retries exhausted after {effect.attempt - 1} retries: "
            f"{record.error_message or record.exception_details[:200]}")
        raw = {"id": record.tracking.step_event_id, "subject": record.id,
               "type": f"step.{record.tracking.failed_call or 'unknown'}"}
        self.refuse(raw, error, task=RETRY_TASK, task_id=task_id,
                    reasons=[record.exception_details],
                    body={"args": [record.id], "kwargs": {"version": record.version}})

    def _start_step(self, step: RunStep, report: DrainReport) -> _InFlight:
        """Run a started step's backend calls on a step thread."""
        report.steps += 1
        context = contextvars.copy_context()
        future = self._executor().submit(context.run, self._call_step, step)
        return _InFlight((step.kind, step.started_version), future)

    def _executor(self) -> _StepRunner:
        if self._steps is None:
            self._steps = _StepRunner(self.settings.step_threads)
        return self._steps

    def _call_step(self, step: RunStep) -> StepResult:
        """The step's calls in order, stopping at the first failure (no store access)."""
        with structlog.contextvars.bound_contextvars(event_id=step.event_id,
                                                     trigger=step.kind.value):
            response: str | None = None
            test_id: str | None = None
            for call in step.calls:
                started = time.perf_counter()
                outcome = self.backends.call(call)
                self.observer.backend_call(
                    call.step.value, time.perf_counter() - started, outcome.ok,
                    outcome.failure.error_class if outcome.failure else None, outcome.attempts)
                if outcome.response is not None:
                    response = outcome.response
                if outcome.test_id is not None:
                    test_id = outcome.test_id
                if not outcome.ok:
                    failure = outcome.failure
                    assert failure is not None
                    return StepResult(
                        step.record_id, step.event_id, step.kind, step.started_version,
                        ok=False, failed_call=call.step, details=failure.details(),
                        summary=failure.summary(), response=response,
                    )
            return StepResult(step.record_id, step.event_id, step.kind, step.started_version,
                              ok=True, response=response, test_id=test_id)

    # -- sweeps (beat) -----------------------------------------------------------------

    def recover(self) -> list[str]:
        """Kick a drain for every record with queued work and no live lease."""
        kicked = self.store.claim_orphans(RECOVERY_BATCH, self.settings.recovery_interval)
        if kicked:
            self.kick_many(kicked)
        if kicked:
            log.info("recovered", records=len(kicked))
        return kicked

    def sweep_retries(self) -> list[str]:
        """Queue a retry for every record whose retry is due (two sweeps queue it once)."""
        queued = []
        for record_id, _due in self.store.due_retries(time.time()):
            record = self.store.load(record_id)
            if record is None:
                continue
            envelope = Envelope.internal(
                RetryDue(record_id, record.version, format_time(record.created_on)),
                format_time(self.now()))
            if self.store.accept(record_id, envelope.event_id, envelope.encode(),
                                 now=time.time()):
                queued.append(record_id)
        if queued:
            self.kick_many(queued)
        return queued

    def sweep_stuck(self) -> list[str]:
        """Kick records Processing or Deprovisioning without progress past the limit and with
        no live lease: their step is run again (same Idempotency-Keys)."""
        kicked = []
        limit = self.settings.stuck_after_seconds
        now = self.now()
        for status in (StatusReason.PROCESSING, StatusReason.DEPROVISIONING):
            for record in self.store.list_records(status=status):
                stale = (now - record.modified_on).total_seconds() >= limit
                if stale and self.store.lease_ttl(record.id) is None:
                    kicked.append(record.id)
        if kicked:
            self.kick_many(kicked)
            log.warning("stuck_records_kicked", records=len(kicked))
        return kicked

    def expire_failed(self) -> list[str]:
        """Drop failed-task entries past the retention time, then the oldest past the cap;
        each drop is audited."""
        entries = self.failed.all()  # oldest last failure first
        now = self.now()
        retention = self.settings.failed_retention_seconds
        expired = [e for e in entries
                   if e.last_failed_at
                   and (now - parse_time(e.last_failed_at)).total_seconds() > retention]
        rest = [e for e in entries if e not in expired]
        over = max(0, len(rest) - self.settings.failed_max_entries)
        dropped = []
        for entry, why in [*((e, "past retention") for e in expired),
                           *((e, "over the size cap") for e in rest[:over])]:
            if self.failed.remove(entry.id):
                self.failed.append_audit({
                    "at": format_time(now), "operator": "beat", "action": "expire",
                    "entry": entry.id, "event_id": entry.event_id,
                    "record_id": entry.record_id, "reason": why, "result": "removed",
                })
                dropped.append(entry.id)
        return dropped

    def sweep_calling_tests(self) -> list[str]:
        """Queue a timeout for every calling test InProgress past its limit (read through
        the InProgress index, not every Running record)."""
        queued = []
        limit = self.settings.calling_test_timeout
        now = self.now()
        for record in self.store.list_records(testing=True):
            started = record.tracking.calling_test_started_at
            version = record.tracking.calling_test_version
            if (record.calling_status is not AutomatedCallingStatus.IN_PROGRESS
                    or started is None or version is None
                    or (now - started).total_seconds() < limit):
                continue
            envelope = Envelope.internal(
                CallingTestTimedOut(record.id, version, format_time(record.created_on)),
                format_time(now))
            if self.store.accept(record.id, envelope.event_id, envelope.encode(),
                                 now=time.time()):
                queued.append(record.id)
        if queued:
            self.kick_many(queued)
        return queued
