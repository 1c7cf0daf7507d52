"""Failed-task bookkeeping: what could not be processed goes to the failed-task store (SPEC
§3: nothing is lost), a replayed entry leaves it once processed, and beat ages entries out.
Every removal is audited."""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from typing import Any

import structlog

from statemachine import Outcome, ProvisioningState, ScheduleRetry, format_time, parse_time
from worker.envelope import Envelope
from worker.errors import RetriesExhausted
from worker.service.context import Context
from worker.store.failed import FailedTask, entry_id
from worker.task_names import RETRY_TASK

log = structlog.get_logger("worker")


def refuse(
    ctx: Context, raw: Any, error: BaseException, *, task: str, reasons: list[str],
    body: Mapping[str, Any] | None = None, task_id: str | None = None,
) -> FailedTask:
    """Put what could not be processed in the failed-task store; nothing is lost."""
    event = raw if isinstance(raw, Mapping) else {}
    event_id = event.get("id") if isinstance(event.get("id"), str) else None
    event_type = event.get("type") if isinstance(event.get("type"), str) else None
    subject = event.get("subject") if isinstance(event.get("subject"), str) else None
    message_body = dict(body) if body is not None else {"args": [raw], "kwargs": {}}
    stamp = format_time(ctx.now())
    entry = FailedTask(
        id=entry_id(task, event_id, message_body),
        task=task, event_id=event_id, event_type=event_type, record_id=subject,
        exception=type(error).__name__, message=str(error),
        traceback="".join(traceback.format_exception(error)),
        attempts=1, first_failed_at=stamp, last_failed_at=stamp, hostname=ctx.hostname,
        reasons=tuple(reasons), body=message_body,
    )
    stored = ctx.failed.record(entry)
    ctx.observer.task_failed(task, stored.exception)
    log.warning("task_failed", entry=stored.id, task=task, exception=stored.exception,
                event_id=event_id, record_id=subject, reason=stored.message,
                task_id=task_id)
    return stored


def retries_exhausted(ctx: Context, record: ProvisioningState | None, effect: ScheduleRetry,
                      task_id: str | None) -> None:
    """A record in Error used up its beat retries: an entry for an operator to replay."""
    if record is None:
        return
    error = RetriesExhausted(
        f"retries exhausted after {effect.attempt - 1} retries: "
        f"{record.error_message or record.exception_details[:200]}")
    raw = {"id": record.tracking.step_event_id, "subject": record.id,
           "type": f"step.{record.tracking.failed_call or 'unknown'}"}
    refuse(ctx, raw, error, task=RETRY_TASK, task_id=task_id,
           reasons=[record.exception_details],
           body={"args": [record.id], "kwargs": {"version": record.version}})


def resolve_replay(ctx: Context, replayed: str, envelope: Envelope, outcome: Outcome) -> None:
    """A replayed entry was processed: it leaves the failed-task store, audited."""
    if ctx.failed.remove(replayed):
        ctx.failed.append_audit({
            "at": format_time(ctx.now()), "operator": "worker", "action": "resolved",
            "entry": replayed, "event_id": envelope.event_id,
            "record_id": envelope.record_id, "reason": "",
            "result": f"{outcome.result.value}: {outcome.reason}",
        })
        log.info("replay_resolved", entry=replayed, outcome=outcome.result.value)


def expire(ctx: Context) -> list[str]:
    """Drop failed-task entries past the retention time, then the oldest past the cap;
    each drop is audited (beat, hourly)."""
    entries = ctx.failed.all()  # oldest last failure first
    now = ctx.now()
    retention = ctx.settings.failed_retention_seconds
    expired = [e for e in entries
               if e.last_failed_at
               and (now - parse_time(e.last_failed_at)).total_seconds() > retention]
    rest = [e for e in entries if e not in expired]
    over = max(0, len(rest) - ctx.settings.failed_max_entries)
    dropped = []
    for entry, why in [*((e, "past retention") for e in expired),
                       *((e, "over the size cap") for e in rest[:over])]:
        if ctx.failed.remove(entry.id):
            ctx.failed.append_audit({
                "at": format_time(now), "operator": "beat", "action": "expire",
                "entry": entry.id, "event_id": entry.event_id,
                "record_id": entry.record_id, "reason": why, "result": "removed",
            })
            dropped.append(entry.id)
    return dropped
