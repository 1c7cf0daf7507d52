"""The overview: what needs attention first, each tile a link to the list behind it.

Cheap by design (bench/console.py: 100,000 records, 10,000 failed entries): the counts are
the index sets' sizes (worker/store/counts.py), the failed entries of the last hour one
ZCOUNT, the oldest inbox the pending set's head, beat's heartbeat one key, the mirror's
status one hash and the outbox's head, the circuits their keys. Records stuck in
Processing are read only while few are in Processing (STUCK_SCAN at most); past that the
tile says how many are in Processing and that they were not checked one by one.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from statemachine import StatusReason
from worker.bootstrap.mirror import mirror_settings
from worker.console.context import Console, blocking, console, require, show
from worker.dataverse import RedisMirrorState
from worker.dataverse.status import mirror_status
from worker.errors import ConfigurationError
from worker.ops.heartbeat import read_heartbeat
from worker.store.circuits import CircuitBoard
from worker.store.counts import StoreCounts

STUCK_SCAN = 500  # records in Processing read to find the stuck ones, at most
HOUR = 3600.0


def mirror_report(con: Console, now: datetime) -> dict[str, Any]:
    """``dataverse status --json``'s facts; ``config_error`` when its settings are wrong."""
    settings = con.api.settings
    store = con.api.service.store
    if not settings.dataverse_url:
        return {**mirror_status(store, None, None, now), "config_error": None}
    try:
        config = mirror_settings(settings)
    except ConfigurationError as exc:
        return {**mirror_status(store, None, None, now), "config_error": str(exc)}
    state = RedisMirrorState(con.client, con.keys)
    return {**mirror_status(store, state, config, now), "config_error": None}


def facts(con: Console) -> dict[str, Any]:
    """Everything the overview shows, read in a few round trips."""
    now = datetime.now(UTC)
    settings = con.api.settings
    counts = StoreCounts(con.client, con.keys)
    by_status = counts.records_by_status()
    backlog = counts.backlog()
    failed = counts.failed_tasks()
    failed_hour = counts.failed_tasks_since(time.time() - HOUR)
    processing = by_status.get(StatusReason.PROCESSING, 0)
    stuck: int | None = None
    if processing <= STUCK_SCAN:
        limit = settings.stuck_after_seconds
        stuck = sum(1 for record in con.api.service.store.list_records(
            status=StatusReason.PROCESSING)
            if (now - record.modified_on).total_seconds() >= limit)
    beat = read_heartbeat(con.client, con.keys, settings.health_beat_max_age)
    circuits = CircuitBoard(con.client, con.keys).read()
    return {
        "now": now,
        "by_status": [(status.label, by_status.get(status, 0)) for status in StatusReason],
        "total": sum(by_status.values()),
        "failed": failed, "failed_hour": failed_hour,
        "processing": processing, "stuck": stuck, "stuck_after": settings.stuck_after_seconds,
        "pending": backlog.pending,
        "oldest_inbox": None if backlog.oldest_pending_since is None
        else max(0.0, now.timestamp() - backlog.oldest_pending_since),
        "beat": beat, "beat_max_age": settings.health_beat_max_age,
        "mirror": mirror_report(con, now),
        "circuits": circuits,
    }


async def overview(request: Request) -> Response:
    session = await require(request)
    return show(request, "overview.html", session,
                facts=await blocking(request, facts, console(request)))


async def mirror(request: Request) -> Response:
    """The Dataverse mirror: the facts of ``provisioning dataverse status``."""
    session = await require(request)
    con = console(request)
    report = await blocking(request, mirror_report, con, datetime.now(UTC))
    return show(request, "mirror.html", session, mirror=report)
