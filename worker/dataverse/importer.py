"""``provisioning dataverse import``: load an organization's existing rows into the store.

Each row keeps its id, its states, its lookups, its times and its versionnumber (the
record's version); the channel kind, which Dataverse does not store, is read from the
channel lookup that is set (SPEC §1.2). A row is written through ``StateStore.commit`` as
one change from nothing (``expected_version=0``) with one history entry (trigger
``import``, outcome ``applied``), never through ``apply()``: nothing happened to the
channel, the row is only now known to the worker. Refused, each with its reasons: a row
that does not parse, and a row that breaks an invariant of SPEC §2.4 (the worker could
never apply an event to it). Skipped: rows whose id the store already knows (a live
record, or a deleted one with history). Running it again imports only the new rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import structlog

from statemachine import (
    HistoryEntry,
    InvalidRecord,
    ProvisioningState,
    Result,
    Snapshot,
    Tracking,
    violations,
)
from statemachine.table import ChannelKind
from worker.dataverse.client import DataverseClient
from worker.dataverse.errors import DataverseThrottled, RowRefused
from worker.dataverse.state import MirrorState
from worker.store.protocol import Commit, CommitStatus, StateStore

log = structlog.get_logger("worker.dataverse")

IMPORT_EVENT_TYPE = "dataverse.import"
IMPORT_TRIGGER = "import"
MAX_THROTTLE_WAITS = 20


class Imported(StrEnum):
    IMPORTED = "imported"
    EXISTS = "exists"  # a live record with this id
    KNOWN = "known"  # no live record, but history: deleted here; never resurrected


@dataclass
class ImportReport:
    rows: int = 0
    pages: int = 0
    imported: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    refused: list[RowRefused] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.refused

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "pages": self.pages, "imported": self.imported,
                "existing": self.existing,
                "refused": [{"id": r.record_id, "problems": list(r.problems)}
                            for r in self.refused]}


def channel_kind_of(links: dict[str, str | None]) -> ChannelKind | None:
    """The channel kind whose lookup is set; voice before phonenumber (a voice channel
    links a phone number too), otherwise in SPEC §1.2 order."""
    for kind in ChannelKind:
        if links.get(kind.lookup.column):
            return kind
    return None


def record_from_row(row: dict[str, Any]) -> ProvisioningState:
    """The record a Dataverse row becomes; RowRefused names every problem."""
    raw_id = row.get("msdyn_ocprovisioningstateid")
    try:
        record = ProvisioningState.from_dataverse(row)
    except InvalidRecord as exc:
        raise RowRefused(raw_id if isinstance(raw_id, str) else None,
                         [str(problem) for problem in exc.problems]) from exc
    problems = [f"invariant {line}" for line in violations(record)]
    if record.version < 1:
        problems.append("versionnumber: must be at least 1")
    if problems:
        raise RowRefused(record.id, problems)
    return record.evolve(tracking=Tracking(channel_kind=channel_kind_of(record.links)))


def import_record(store: StateStore, record: ProvisioningState, *, source: str,
                  at: datetime | None = None) -> Imported:
    """Write ``record`` as its own version with one ``import`` history entry, unless the
    store knows its id. Atomic (one commit that expects no record)."""
    if store.load(record.id) is not None:
        return Imported.EXISTS
    if store.history(record.id):
        return Imported.KNOWN
    entry = HistoryEntry(
        record_id=record.id, version=record.version,
        event_id=f"import:{record.id}:{record.version}", event_type=IMPORT_EVENT_TYPE,
        trigger=IMPORT_TRIGGER, outcome=Result.APPLIED,
        reason=f"imported from {source} (versionnumber {record.version})",
        before=None, after=Snapshot.of(record), at=at or datetime.now(UTC),
    )
    status = store.commit(Commit(record_id=record.id, expected_version=0, before=None,
                                 after=record, entries=(entry,)))
    if status is not CommitStatus.OK:
        return Imported.EXISTS  # created by an event meanwhile
    return Imported.IMPORTED


class Importer:
    """Pages through the entity set and imports each row."""

    def __init__(self, client: DataverseClient, store: StateStore,
                 state: MirrorState | None = None, *,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.client = client
        self.store = store
        self.state = state
        self.sleep = sleep

    def run(self, page_size: int, *, dry_run: bool = False,
            progress: Callable[[int], None] | None = None) -> ImportReport:
        """Import every row; a 429 waits its Retry-After and asks for the same page again.
        ``progress`` is told the number of rows of each page once they are done.

        Other Dataverse errors raise (a second run resumes: known ids are skipped)."""
        report = ImportReport()
        link: str | None = None
        waits = 0
        source = self.client.settings.url
        while True:
            try:
                rows, next_link = self.client.page(page_size, link)
            except DataverseThrottled as exc:
                waits += 1
                if waits > MAX_THROTTLE_WAITS:
                    raise
                log.warning("dataverse.import_throttled", retry_after=exc.retry_after)
                self.sleep(exc.retry_after)
                continue
            report.pages += 1
            for row in rows:
                report.rows += 1
                self._row(row, report, source=source, dry_run=dry_run)
            if progress is not None:
                progress(len(rows))
            if next_link is None:
                return report
            link = next_link

    def _row(self, row: dict[str, Any], report: ImportReport, *, source: str,
             dry_run: bool) -> None:
        try:
            record = record_from_row(row)
        except RowRefused as refused:
            report.refused.append(refused)
            return
        if dry_run:
            known = self.store.load(record.id) is not None or bool(self.store.history(record.id))
            (report.existing if known else report.imported).append(record.id)
            return
        outcome = import_record(self.store, record, source=source)
        if outcome is not Imported.IMPORTED:
            report.existing.append(record.id)
            return
        report.imported.append(record.id)
        if self.state is not None:
            # The mirror's next PATCH of this row sends If-Match with this etag.
            etag = row.get("@odata.etag")
            self.state.set_etag(record.id, etag if isinstance(etag, str) and etag
                                else record.etag)
