"""Retention (docs/store.md): what beat's ``provisioning.sweep_retention`` drops, so the
store stays bounded however long it runs.

* A deleted record's history and dedupe window go PROVISIONING_DELETED_RETENTION_SECONDS
  after its deletion (``StateStore.purge_deleted``, read through each shard's ``deleted``
  index; ``history`` says when, and that it was: worker/cli/render.describe_deletion).
* Audit lines go after PROVISIONING_AUDIT_RETENTION_SECONDS, then the oldest beyond
  PROVISIONING_AUDIT_MAX_ENTRIES (``provisioning failed audit --json`` exports them first).
* The Dataverse outbox, when the mirror is off (PROVISIONING_DATAVERSE_URL unset, so no
  consumer will ever read it), keeps its newest PROVISIONING_OUTBOX_MAX_ENTRIES; with the
  mirror on nothing is dropped, and a full outbox is reported (``outbox_full``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog

from worker.settings import Settings
from worker.store.failed import FailedStore
from worker.store.protocol import StateStore

log = structlog.get_logger("worker")
PURGE_BATCH = 1000  # deleted records purged per sweep at most; the next sweep goes on


@dataclass(frozen=True)
class RetentionReport:
    purged: list[str]
    audit_trimmed: int
    outbox_trimmed: int

    def to_json(self) -> dict[str, object]:
        return {"purged": len(self.purged), "audit_trimmed": self.audit_trimmed,
                "outbox_trimmed": self.outbox_trimmed}


def sweep_retention(settings: Settings, store: StateStore, failed: FailedStore, *,
                    now: float | None = None) -> RetentionReport:
    """One retention sweep (idempotent: two beats running it at once drop each thing once)."""
    moment = time.time() if now is None else now
    purged = store.purge_deleted(moment - settings.deleted_retention_seconds, PURGE_BATCH)
    audit_cutoff = datetime.fromtimestamp(moment, UTC) - timedelta(
        seconds=settings.audit_retention_seconds)
    audit = failed.trim_audit(audit_cutoff, settings.audit_max_entries)
    outbox = 0 if settings.dataverse_url else store.outbox_trim(settings.outbox_max_entries)
    report = RetentionReport(purged, audit, outbox)
    if purged or audit or outbox:
        log.info("retention", **report.to_json())
    return report


def outbox_full(settings: Settings, size: int) -> bool:
    """With the mirror on, the outbox has reached its cap: the consumer is not keeping up
    (``dataverse status`` and ``health`` say so; nothing is dropped)."""
    return size >= settings.outbox_max_entries
