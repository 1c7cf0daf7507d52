"""The mirror: the one ordered consumer that sends the outbox to Dataverse.

``Mirror.run()`` takes the consumer lock (``SET NX PX``, renewed while it runs), then sends
outbox entries oldest first, acknowledging each (``StateStore.outbox_ack``) only after
Dataverse accepted it, until the outbox is empty or the run's time budget is used. So
delivery is at-least-once and in commit order, hence in order per record. It never sleeps
out a pause: on a 429 it records ``Retry-After`` as a pause, on an outage or a refusal a
growing backoff, and returns; the next run (beat, every ``interval``) sends nothing before
the pause ends. Event processing never waits for it: it runs in its own task, on its own
data (the outbox the commit already wrote).

How each entry is sent (Dataverse Web API, ``msdyn_ocprovisioningstates(<id>)``):

* ``create``: POST the write form with the record's id; statecode cannot be set on create,
  so a record that is not Active gets a second PATCH of statecode and statuscode together.
* ``update``: PATCH only the changed columns (statuscode always with statecode) with
  ``If-Match: <the row's etag>``. A 412 (someone else changed the row) or a 404 (someone
  deleted it) re-reads the row and *reconciles*: the worker's record wins, the columns
  that differ are PATCHed with the fresh etag (a missing row is created again).
* ``delete``: DELETE; a 404 means it is already gone.

The etag Dataverse answers after each write is kept per record (``MirrorState``), since a
row's versionnumber in Dataverse is the organization's, not the worker's.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from statemachine import (
    LOOKUPS,
    PRIMARY_KEY,
    InvalidRecord,
    ProvisioningState,
    StateCode,
    format_time,
)
from worker.dataverse.client import DataverseClient
from worker.dataverse.errors import (
    DataverseConflict,
    DataverseError,
    DataverseNotFound,
    DataverseRejected,
    DataverseThrottled,
    MirrorBusy,
    UnreadableEntry,
)
from worker.dataverse.outbox import OutboxEntry
from worker.dataverse.settings import MirrorSettings
from worker.dataverse.state import MirrorState
from worker.errors import StoreError
from worker.keys import dumps
from worker.store.protocol import StateStore

log = structlog.get_logger("worker.dataverse")

# Dataverse: "Cannot insert duplicate key" (-2147220937), should it come without a 412.
DUPLICATE_KEY = "0x80040237"
# Columns the mirror writes (statecode only ever together with statuscode).
WRITTEN = ("msdyn_name", "statecode", "statuscode", "msdyn_gatekeeperstatus",
           "msdyn_gatekeeperstatusreason", "msdyn_automatedcallingstatus",
           "msdyn_exceptiondetails", "msdyn_errormessage", "msdyn_provisioningresponse")
TEXT = frozenset({"msdyn_name", "msdyn_exceptiondetails", "msdyn_errormessage",
                  "msdyn_provisioningresponse"})
RECONCILE_TRIES = 3
PEEK = 50


@dataclass
class RunReport:
    """What one run did. ``stopped``: empty, budget, paused, throttled, unavailable,
    rejected, locked (another consumer runs) or lock_lost."""

    sent: int = 0
    remaining: int = 0
    stopped: str = "empty"
    error: str | None = None
    requests: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def create_body(record: ProvisioningState) -> dict[str, Any]:
    """The POST body: the write form with the id, without statecode (Dataverse sets the
    default state on create), without statuscode when it belongs to another state, and
    without unset lookups (a new row has none; null binds are for clearing, on PATCH)."""
    body = {key: value for key, value in record.to_dataverse_write().items()
            if value is not None or not key.endswith("@odata.bind")}
    body.pop("statecode", None)
    if record.statecode is not StateCode.ACTIVE:
        body.pop("statuscode", None)
    return {PRIMARY_KEY: record.id, **body}


def differing(record: ProvisioningState, row: dict[str, Any]) -> frozenset[str]:
    """Logical names of the columns whose value in Dataverse ``row`` is not the record's.

    Dataverse stores an empty text as null, so "" and null are the same here.
    """
    mine = record.to_dataverse()
    changed: set[str] = set()
    for column in WRITTEN:
        ours, theirs = mine.get(column), row.get(column)
        if column in TEXT:
            ours, theirs = ours or None, theirs or None
        if ours != theirs:
            changed.add(column)
    for lookup in LOOKUPS:
        ours, theirs = mine.get(lookup.value_property), row.get(lookup.value_property)
        if (ours or "").lower() != (theirs or "").lower():
            changed.add(lookup.column)
    if changed & {"statecode", "statuscode"}:
        changed |= {"statecode", "statuscode"}
    return frozenset(changed)


class Mirror:
    """The outbox consumer. Thread-safe only in the sense that two of them (anywhere) never
    send at once: the lock in ``MirrorState`` decides."""

    def __init__(
        self,
        settings: MirrorSettings,
        store: StateStore,
        state: MirrorState,
        client: DataverseClient,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        hostname: str | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.state = state
        self.client = client
        self.clock = clock
        self.monotonic = monotonic
        self.hostname = hostname or socket.gethostname()

    # -- one run -----------------------------------------------------------------------

    def run(self, budget: float | None = None) -> RunReport:
        """Send the outbox in order until it is empty or ``budget`` seconds (default
        ``run_budget``) are used; returns at once when another consumer holds the lock or a
        pause is on. Dataverse errors are recorded in the status, never raised."""
        owner = f"{self.hostname}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        if not self.state.acquire(owner, self.settings.lock_seconds):
            return RunReport(stopped="locked", remaining=self.store.outbox_size())
        requests_before = self.client.requests
        try:
            with self._keep_lock(owner):
                report = self._run(owner, budget if budget is not None
                                   else self.settings.run_budget)
        finally:
            self.state.release(owner)
        report.requests = self.client.requests - requests_before
        if report.sent or report.stopped not in ("empty", "paused"):
            log.info("dataverse.run", **report.to_json())
        return report

    def _run(self, owner: str, budget: float) -> RunReport:
        report = RunReport()
        status = self.state.status()
        paused_until = float(status.get("paused_until") or 0)
        pacer = self.client.pacer
        pacer.tat = max(pacer.tat, float(status.get("pace_tat") or 0))
        deadline = self.monotonic() + budget
        try:
            if paused_until > self.clock():
                report.stopped = "paused"
                return report
            while True:
                raws = self.store.outbox_peek(PEEK)
                if not raws:
                    report.stopped = "empty"
                    return report
                for raw in raws:
                    if self.monotonic() >= deadline or \
                            pacer.delay() > deadline - self.monotonic():
                        report.stopped = "budget"
                        return report
                    stopped = self._deliver(raw, owner, report)
                    if stopped is not None:
                        report.stopped = stopped
                        return report
                    report.sent += 1
        finally:
            self.state.update_status({"pace_tat": repr(pacer.tat)})
            report.remaining = self.store.outbox_size()

    def _deliver(self, raw: str, owner: str, report: RunReport) -> str | None:
        """Send the outbox head and acknowledge it; the reason to stop when it failed."""
        entry: OutboxEntry | None = None
        try:
            entry = OutboxEntry.decode(raw)
            self.send(entry)
        except DataverseThrottled as exc:
            self._failed(exc, entry, pause=exc.retry_after, reason="throttled",
                         count_failure=False)
            report.error = str(exc)
            return "throttled"
        except DataverseError as exc:
            failures = int(self.state.status().get("failures") or 0) + 1
            pause = min(self.settings.backoff_cap, 2.0 ** (failures - 1))
            self._failed(exc, entry, pause=pause,
                         reason="unavailable" if exc.transient else "rejected")
            report.error = str(exc)
            return "unavailable" if exc.transient else "rejected"
        except (UnreadableEntry, InvalidRecord) as exc:
            error = DataverseRejected("unreadable_entry", f"outbox entry cannot be sent: {exc}")
            self._failed(error, entry, pause=self.settings.backoff_cap, reason="rejected")
            report.error = str(error)
            return "rejected"
        if not self.state.renew(owner, self.settings.lock_seconds):
            # Another consumer may have sent (and acknowledged) it meanwhile: never ack twice.
            return "lock_lost"
        self.store.outbox_ack(1)
        self._succeeded(entry)
        return None

    # -- sending one entry -------------------------------------------------------------

    def send(self, entry: OutboxEntry) -> None:
        """Make the row in Dataverse what the entry says (raises DataverseError)."""
        with structlog.contextvars.bound_contextvars(record_id=entry.record_id,
                                                     version=entry.version, op=entry.op):
            if entry.op == "delete":
                self._delete(entry.record_id)
            elif entry.op == "create":
                self._create(entry.record())
            else:
                self._update(entry.record(), entry.columns)

    def _delete(self, record_id: str) -> None:
        try:
            self.client.delete(record_id)
        except DataverseNotFound:
            log.info("dataverse.already_deleted")  # a cascade in Dataverse, or a retry
        self.state.forget_etag(record_id)

    def _create(self, record: ProvisioningState) -> None:
        try:
            etag = self.client.create(create_body(record))
        except DataverseConflict:
            # The row exists: our earlier POST landed before a crash, or someone made it.
            self._reconcile(record, "exists")
            return
        except DataverseRejected as exc:
            if exc.code != DUPLICATE_KEY:
                raise
            self._reconcile(record, "exists")
            return
        self.state.set_etag(record.id, self._set_state(record, etag))

    def _set_state(self, record: ProvisioningState, etag: str) -> str:
        """After a create: PATCH statecode and statuscode together when not Active."""
        if record.statecode is StateCode.ACTIVE:
            return etag
        return self.client.update(record.id, {"statecode": int(record.statecode),
                                              "statuscode": int(record.status)}, etag=etag)

    def _update(self, record: ProvisioningState, columns: frozenset[str]) -> None:
        etag = self.state.etag(record.id)
        if etag is None:
            # A row the mirror has not written yet (created before the mirror was on, or
            # its etag was dropped by `dataverse skip`): read it, then send what differs.
            self._reconcile(record, "first write", conflict=False)
            return
        only = set(columns)
        if only & {"statuscode", "statecode"}:
            only |= {"statuscode", "statecode"}  # Dataverse: always write both together
        body = record.to_dataverse_write(only=frozenset(only))
        if not body:
            return
        try:
            etag = self.client.update(record.id, body, etag=etag)
        except DataverseConflict:
            self._reconcile(record, "changed in Dataverse")  # 412: stale If-Match
            return
        except DataverseNotFound:
            self._reconcile(record, "deleted in Dataverse")
            return
        self.state.set_etag(record.id, etag)

    def _reconcile(self, record: ProvisioningState, why: str, *, conflict: bool = True) -> None:
        """Re-read the row and write what differs from the record (the worker's record
        wins); create it when it is missing. Gives up with a DataverseConflict when the row
        keeps changing underneath."""
        if conflict:
            self.state.count("conflicts")
        for _ in range(RECONCILE_TRIES):
            row = self.client.get(record.id)
            if row is None:
                try:
                    etag = self.client.create(create_body(record))
                except DataverseConflict:
                    continue  # created meanwhile: read it again
                self.state.set_etag(record.id, self._set_state(record, etag))
                log.warning("dataverse.reconciled", why=why, created=True)
                return
            etag = str(row.get("@odata.etag") or "")
            columns = differing(record, row)
            if columns:
                try:
                    etag = self.client.update(
                        record.id, record.to_dataverse_write(only=columns), etag=etag or None)
                except (DataverseConflict, DataverseNotFound):
                    continue
            if etag:
                self.state.set_etag(record.id, etag)
            if conflict or columns:
                log.warning("dataverse.reconciled", why=why, columns=sorted(columns))
            return
        raise DataverseConflict("reconcile_failed", f"row {record.id} kept changing while "
                                f"the mirror reconciled it ({why})", status=412)

    def skip(self) -> OutboxEntry | str | None:
        """Drop the outbox head without sending it (an operator's way past an entry
        Dataverse will never accept). Its record's etag is forgotten, so the mirror's next
        write of that record re-reads the row and sends every column that differs.
        Returns the dropped entry (its raw text when unreadable), None when the outbox is
        empty; raises MirrorBusy while a run holds the lock."""
        owner = f"skip:{self.hostname}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        if not self.state.acquire(owner, self.settings.lock_seconds):
            raise MirrorBusy("the mirror is sending right now; try again in a few seconds")
        try:
            head = self.store.outbox_peek(1)
            if not head:
                return None
            self.store.outbox_ack(1)
            try:
                entry = OutboxEntry.decode(head[0])
            except UnreadableEntry:
                return head[0]
            self.state.forget_etag(entry.record_id)
            self.state.update_status({"failures": "0", "paused_until": None,
                                      "pause_reason": None})
            return entry
        finally:
            self.state.release(owner)

    # -- status ------------------------------------------------------------------------

    def _now(self) -> str:
        return format_time(datetime.fromtimestamp(self.clock(), UTC))

    def _succeeded(self, entry: OutboxEntry) -> None:
        self.state.update_status({
            "last_success_at": self._now(), "last_success": dumps(entry.describe()),
            "failures": "0", "paused_until": None, "pause_reason": None,
        })
        self.state.count("sent")
        log.info("dataverse.sent", **entry.describe())

    def _failed(self, error: DataverseError, entry: OutboxEntry | None, *, pause: float,
                reason: str, count_failure: bool = True) -> None:
        detail: dict[str, Any] = {"code": error.code, "message": error.message,
                                  "status": error.status, "kind": type(error).__name__}
        if entry is not None:
            detail.update(entry.describe())
        self.state.update_status({
            "last_error_at": self._now(), "last_error": dumps(detail),
            "paused_until": repr(self.clock() + pause), "pause_reason": reason,
        })
        if count_failure:
            self.state.count("failures")
        log.warning("dataverse.failed", pause=round(pause, 3), reason=reason, **detail)

    @contextmanager
    def _keep_lock(self, owner: str) -> Iterator[None]:
        """Renew the lock in the background while this consumer runs."""
        stop = threading.Event()
        seconds = self.settings.lock_seconds

        def renew() -> None:
            while not stop.wait(seconds / 3):
                try:
                    if not self.state.renew(owner, seconds):
                        return
                except StoreError as exc:  # the run notices a lost lock before it acks
                    log.warning("dataverse.lock_renew_failed", error=str(exc))

        keeper = threading.Thread(target=renew, name="dataverse-lock", daemon=True)
        keeper.start()
        try:
            yield
        finally:
            stop.set()
            keeper.join()
