"""Beat's sweeps (and every worker's recovery timer): work nobody is draining is found and
kicked, due retries and timed-out calling tests are queued through the records' inboxes."""

from __future__ import annotations

import time

import structlog

from statemachine import (
    AutomatedCallingStatus,
    CallingTestTimedOut,
    RetryDue,
    StatusReason,
    format_time,
)
from worker.envelope import Envelope
from worker.service.context import Context

log = structlog.get_logger("worker")

RECOVERY_BATCH = 1000  # orphans kicked per sweep at most; the next sweep takes the rest


def recover(ctx: Context) -> list[str]:
    """Kick a drain for every record with queued work and no live lease."""
    kicked = ctx.store.claim_orphans(RECOVERY_BATCH, ctx.settings.recovery_interval)
    if kicked:
        ctx.kick_many(kicked)
        log.info("recovered", records=len(kicked))
    return kicked


def sweep_retries(ctx: Context) -> list[str]:
    """Queue a retry for every record whose retry is due (two sweeps queue it once)."""
    queued = []
    for record_id, _due in ctx.store.due_retries(time.time()):
        record = ctx.store.load(record_id)
        if record is None:
            continue
        envelope = Envelope.internal(
            RetryDue(record_id, record.version, format_time(record.created_on)),
            format_time(ctx.now()))
        if ctx.store.accept(record_id, envelope.event_id, envelope.encode(), now=time.time()):
            queued.append(record_id)
    if queued:
        ctx.kick_many(queued)
    return queued


def sweep_stuck(ctx: Context) -> list[str]:
    """Kick records Processing or Deprovisioning without progress past the limit and with
    no live lease: their step is run again (same Idempotency-Keys)."""
    kicked = []
    limit = ctx.settings.stuck_after_seconds
    now = ctx.now()
    for status in (StatusReason.PROCESSING, StatusReason.DEPROVISIONING):
        for record in ctx.store.list_records(status=status):
            stale = (now - record.modified_on).total_seconds() >= limit
            if stale and ctx.store.lease_ttl(record.id) is None:
                kicked.append(record.id)
    if kicked:
        ctx.kick_many(kicked)
        log.warning("stuck_records_kicked", records=len(kicked))
    return kicked


def sweep_calling_tests(ctx: Context) -> list[str]:
    """Queue a timeout for every calling test InProgress past its limit (read through the
    InProgress index, not every Running record)."""
    queued = []
    limit = ctx.settings.calling_test_timeout
    now = ctx.now()
    for record in ctx.store.list_records(testing=True):
        started = record.tracking.calling_test_started_at
        version = record.tracking.calling_test_version
        if (record.calling_status is not AutomatedCallingStatus.IN_PROGRESS
                or started is None or version is None
                or (now - started).total_seconds() < limit):
            continue
        envelope = Envelope.internal(
            CallingTestTimedOut(record.id, version, format_time(record.created_on)),
            format_time(now))
        if ctx.store.accept(record.id, envelope.event_id, envelope.encode(), now=time.time()):
            queued.append(record.id)
    if queued:
        ctx.kick_many(queued)
    return queued
