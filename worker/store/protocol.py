"""The record store port: a Protocol with a Redis implementation and an in-memory twin.

Both run the same contract tests (tests/unit/test_store_contract.py). The guarantees:

* ``accept`` appends an event to its record's inbox once per event id within the dedupe
  window (SPEC §3), in call order.
* ``commit`` is one atomic step: compare the version, write (or delete) the record, append
  its history entries, mark the dedupe key applied, pop the inbox head it applied, update
  the indexes and the retry schedule. It fails as a whole (CONFLICT/DUPLICATE) or not at all.
* A lease names the one worker that drains a record's inbox; it expires, so a killed
  worker blocks its records for at most ``lease_seconds``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Protocol

from statemachine import HistoryEntry, ProvisioningState, StatusReason

# The stores' duplicate-detection window when none is given (PROVISIONING_DEDUPE_WINDOW_SECONDS
# sets it in the worker; the same 7 days).
DEFAULT_DEDUPE_WINDOW = 7 * 86400.0


@dataclass(frozen=True, slots=True)
class InboxItem:
    """An accepted event waiting in its record's inbox. ``payload`` is the envelope JSON."""

    event_id: str
    payload: str


class CommitStatus(StrEnum):
    OK = "ok"
    CONFLICT = "conflict"  # the version, the inbox head or the lease was not as expected
    DUPLICATE = "duplicate"  # the dedupe key was already applied


@dataclass(frozen=True, slots=True)
class Claim:
    """A record whose lease ``acquire_many`` took: the record as stored, and the head of
    its inbox."""

    record: ProvisioningState | None
    inbox: list[InboxItem]


class Release(IntEnum):
    """What releasing a lease did (``StateStore.release_many``)."""

    NOT_HOLDER = -1  # the lease is not (or no longer) the caller's
    BUSY = 0  # the inbox is not empty: the lease stays held, drain on
    RELEASED = 1


@dataclass(frozen=True, slots=True)
class Commit:
    """One atomic change of a record, as ``StateStore.commit`` carries it out.

    ``expected_version`` is the stored version the change was computed from (0: no record).
    ``after`` None with ``deleted`` removes the record (its history stays).
    ``pop_event_id`` pops the inbox head, which must be that event.
    ``retry_at`` schedules the record's retry (epoch seconds); ``cancel_retry`` drops it.
    ``outbox_entry`` (JSON) is appended to the mirror's outbox in the same step.
    """

    record_id: str
    expected_version: int
    before: ProvisioningState | None
    after: ProvisioningState | None
    entries: tuple[HistoryEntry, ...]
    dedupe_key: str | None = None
    pop_event_id: str | None = None
    lease_owner: str | None = None
    deleted: bool = False
    retry_at: float | None = None
    cancel_retry: bool = False
    outbox_entry: str | None = None


@dataclass(frozen=True, slots=True)
class RecordPage:
    """One page of ``StateStore.page_records``: the records, and the id to pass as
    ``after`` for the next page (None on the last page)."""

    records: list[ProvisioningState]
    next_after: str | None


@dataclass(frozen=True, slots=True)
class Deletion:
    """When a record was deleted and when its history was purged (epoch seconds; None:
    not deleted / not purged, or purged longer than one retention ago)."""

    deleted_at: float | None
    purged_at: float | None


class StateStore(Protocol):
    """Where records, their history and their inboxes live."""

    def accept(self, record_id: str, event_id: str, payload: str, *, now: float) -> bool:
        """Append to the inbox unless ``event_id`` was accepted before; True when appended."""
        ...

    def accept_many(self, items: Sequence[tuple[str, str, str]], *, now: float,
                    claim_seconds: float = 0.0) -> list[bool]:
        """``accept`` for many (record id, event id, payload) at once, pipelined. With
        ``claim_seconds``, each record is also claimed as ``claim_orphans`` claims it: the
        caller kicks a drain itself, so recovery sweeps leave it alone that long."""
        ...

    def forget_accepted(self, record_id: str, event_id: str) -> None:
        """Let ``event_id`` be accepted again (a replay of an event that failed)."""
        ...

    def head(self, record_id: str) -> InboxItem | None:
        """The oldest event of the inbox, or None."""
        ...

    def heads(self, record_ids: Sequence[str], count: int) -> list[list[InboxItem]]:
        """The oldest ``count`` events of each record's inbox, in one round trip."""
        ...

    def inbox_size(self, record_id: str) -> int: ...

    def drop_head(self, record_id: str, event_id: str, owner: str) -> bool:
        """Pop the inbox head when it is ``event_id`` and ``owner`` holds the lease."""
        ...

    def load(self, record_id: str) -> ProvisioningState | None: ...

    def is_applied(self, record_id: str, key: str) -> bool: ...

    def commit(self, commit: Commit) -> CommitStatus: ...

    def commit_many(self, commits: Sequence[Commit], *, release: Sequence[str] = (),
                    owner: str = "") -> tuple[list[CommitStatus], list[Release]]:
        """Each commit as ``commit`` does it, in order, then ``release_many(release,
        owner)``, all in one round trip. Every commit is atomic on its own, and a later
        commit of the same record sees the earlier ones (so a chain computed from versions
        v, v+1, ... lands up to its first refusal, and the rest of that chain is refused
        as a CONFLICT); a release after a refused pop finds the inbox not empty (BUSY)."""
        ...

    def history(self, record_id: str) -> list[HistoryEntry]: ...

    def append_history(self, record_id: str, entries: Iterable[HistoryEntry]) -> None:
        """Add entries that changed nothing (no version check needed)."""
        ...

    def list_records(
        self, *, status: StatusReason | None = None, kind: str | None = None,
        testing: bool = False,
    ) -> list[ProvisioningState]:
        """Records through the index sets (no key scan); ``testing``: only those with a
        calling test InProgress."""
        ...

    def page_records(
        self, *, status: StatusReason | None = None, kind: str | None = None,
        after: str | None = None, limit: int = 100,
    ) -> RecordPage:
        """Up to ``limit`` records in record-id order, those with an id greater than
        ``after`` (the paging cursor). Stable: a record that matches the filters for the
        whole listing appears on exactly one page, whatever is created, changed or deleted
        meanwhile; records that change in or out of the filters meanwhile may or may not
        appear. Reads the index sets' ids and only the records of the page."""
        ...

    def records_linking(self, column: str, value: str) -> list[str]: ...

    def acquire_lease(self, record_id: str, owner: str, seconds: float) -> bool: ...

    def acquire_many(self, record_ids: Sequence[str], owner: str, seconds: float,
                     read: int) -> list[Claim | None]:
        """``acquire_lease`` for many records in one round trip, with what a drain reads
        first: for each record whose lease it got, the record and the oldest ``read``
        events of its inbox (None for the others)."""
        ...

    def renew_lease(self, record_id: str, owner: str, seconds: float) -> bool: ...

    def release_lease(self, record_id: str, owner: str, *, hand_over: bool = False) -> bool:
        """Release when the inbox is empty; False leaves it held. ``hand_over`` releases
        whatever the inbox holds and keeps the record pending, for another worker."""
        ...

    def release_many(self, record_ids: Sequence[str], owner: str) -> list[Release]:
        """``release_lease`` (not handing over) for many records in one round trip."""
        ...

    def lease_ttl(self, record_id: str) -> float | None:
        """Seconds left on the lease, None when nobody holds it."""
        ...

    def pending(self) -> list[str]:
        """Records with accepted work not yet drained (a non-empty inbox or a step in flight)."""
        ...

    def claim_orphans(self, limit: int, claim_seconds: float) -> list[str]:
        """Pending records with no live lease, each claimed for ``claim_seconds`` so that
        concurrent recovery sweeps return it once per interval."""
        ...

    def due_retries(self, now: float) -> list[tuple[str, float]]: ...

    def count_deliveries(self, task_id: str, ttl_seconds: int) -> int:
        """Count one more delivery of a Celery message; returns the count so far."""
        ...

    def outbox_peek(self, count: int) -> list[str]:
        """The oldest ``count`` outbox entries (JSON), in commit order; they stay there."""
        ...

    def outbox_ack(self, count: int) -> None:
        """Drop the oldest ``count`` outbox entries (after the mirror sent them)."""
        ...

    def outbox_size(self) -> int: ...

    def outbox_trim(self, keep: int) -> int:
        """Drop the oldest entries beyond ``keep`` (the mirror is off); how many went."""
        ...

    def deletion(self, record_id: str) -> Deletion: ...

    def purge_deleted(self, cutoff: float, limit: int) -> list[str]:
        """Drop the history and dedupe window of up to ``limit`` records deleted at or
        before ``cutoff`` (epoch seconds) and still deleted, remembering when (``deletion``),
        and forget purges older than ``cutoff``. Returns the purged record ids."""
        ...

    def ping(self) -> bool: ...
