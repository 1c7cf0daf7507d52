"""The Celery tasks. Each decodes its message, calls one service function, and maps
errors to a retry or a final failure; the behaviour lives in ``worker.service``."""

from __future__ import annotations

from typing import Any

import structlog
from celery import Task

from worker import task_names, tracing
from worker.app import app, process_mirror, process_service
from worker.dataverse.startup import first_start
from worker.errors import InvalidArguments, LeaseLost, PoisonMessage, StoreError
from worker.store import retention
from worker.task_names import DRAIN_RECORD, DRAIN_RECORDS, HANDLE_EVENT

log = structlog.get_logger("worker")


def _message_body(task: Task[Any, Any]) -> dict[str, Any]:
    """The whole original message, kept in a failed-task entry so it can be replayed."""
    request = task.request
    return {
        "task": task.name,
        "id": request.id,
        "args": list(request.args or ()),
        "kwargs": dict(request.kwargs or {}),
        "headers": {
            "origin": getattr(request, "origin", None),
            "retries": request.retries,
            "delivery_info": dict(request.delivery_info or {}),
        },
    }


@app.task(name=HANDLE_EVENT, bind=True, acks_late=True, max_retries=10)
def handle_event(self: Task[Any, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Validate one event (the message's one argument), accept it into its record's inbox,
    and drain that inbox.

    A ``replay_of`` keyword (sent by ``provisioning failed replay``) names the failed-task
    entry this message replays; the entry leaves the store once the event is processed.
    Any other shape of arguments goes to the failed-task store: nothing is lost.
    """
    service = process_service()
    body = _message_body(self)
    replay_of = kwargs.pop("replay_of", None)
    # A traced sender's context, in the message's traceparent header (Celery's own
    # OpenTelemetry instrumentation puts it there): the accept span's parent.
    sender = tracing.parent_of({"traceparent": getattr(self.request, "traceparent", None),
                                "tracestate": getattr(self.request, "tracestate", None)})
    with structlog.contextvars.bound_contextvars(task_id=self.request.id), \
            tracing.attached(sender):
        if len(args) != 1 or kwargs:
            entry = service.refuse(
                args[0] if args else None,
                InvalidArguments(f"{HANDLE_EVENT} takes exactly one argument, the event; got "
                                 f"{len(args)} positional and {sorted(kwargs) or 'no'} keyword"),
                task=HANDLE_EVENT, body=body, task_id=self.request.id,
                reasons=["args: must be exactly [event]"])
            return {"failed": entry.id}
        event = args[0]
        try:
            deliveries = service.store.count_deliveries(
                str(self.request.id), service.settings.visibility_timeout * 4)
            if deliveries > service.settings.max_deliveries:
                entry = service.refuse(
                    event, PoisonMessage(f"delivered {deliveries} times"), task=HANDLE_EVENT,
                    reasons=[f"delivered {deliveries} times; the limit is "
                             f"{service.settings.max_deliveries}"],
                    body=body, task_id=self.request.id)
                return {"failed": entry.id}
            result = service.handle_message(event, task_id=self.request.id, body=body,
                                            replay_of=replay_of)
        except (StoreError, LeaseLost) as exc:
            log.warning("task_retry", error=str(exc))
            raise self.retry(exc=exc, countdown=2) from exc
    if hasattr(result, "record_ids"):
        return {"accepted": list(result.record_ids)}
    return {"failed": result.id}


@app.task(name=DRAIN_RECORD, bind=True, acks_late=True, max_retries=10)
def drain_record(self: Task[Any, Any], record_id: str) -> dict[str, Any]:
    """Apply a record's queued events in order (no-op when another worker holds it)."""
    service = process_service()
    try:
        report = service.drain(str(record_id), task_id=self.request.id)
    except (StoreError, LeaseLost) as exc:
        log.warning("task_retry", error=str(exc), record_id=record_id)
        raise self.retry(exc=exc, countdown=2) from exc
    if report.handed_over:
        service.kick(record_id)
    return {"applied": report.applied, "unchanged": report.unchanged, "steps": report.steps}


@app.task(name=DRAIN_RECORDS, bind=True, acks_late=True, max_retries=10)
def drain_records(self: Task[Any, Any], record_ids: Any) -> dict[str, Any]:
    """Apply several records' queued events together, each in order (records another
    worker holds are skipped: it drains them). A message whose argument is not a list of
    record ids goes to the failed-task store."""
    service = process_service()
    if not (isinstance(record_ids, list) and all(isinstance(r, str) for r in record_ids)):
        entry = service.refuse(
            record_ids, InvalidArguments(f"{DRAIN_RECORDS} takes a list of record ids"),
            task=DRAIN_RECORDS, body=_message_body(self), task_id=self.request.id,
            reasons=["args[0]: must be a list of record ids (strings)"])
        return {"failed": entry.id}
    try:
        reports = service.drain_many(record_ids, task_id=self.request.id)
    except StoreError as exc:
        log.warning("task_retry", error=str(exc), records=len(record_ids))
        raise self.retry(exc=exc, countdown=2) from exc
    handed_over = [report.record_id for report in reports if report.handed_over]
    if handed_over:
        service.kick_many(handed_over)
    return {"records": len(reports),
            "applied": sum(report.applied for report in reports),
            "unchanged": sum(report.unchanged for report in reports),
            "steps": sum(report.steps for report in reports),
            "lost": [report.record_id for report in reports if report.lost]}


@app.task(name=task_names.RECOVER)
def recover() -> int:
    return len(process_service().recover())


@app.task(name=task_names.SWEEP_RETRIES)
def sweep_retries() -> int:
    return len(process_service().sweep_retries())


@app.task(name=task_names.SWEEP_STUCK)
def sweep_stuck() -> int:
    return len(process_service().sweep_stuck())


@app.task(name=task_names.EXPIRE_FAILED)
def expire_failed() -> int:
    return len(process_service().expire_failed())


@app.task(name=task_names.SWEEP_RETENTION)
def sweep_retention() -> dict[str, object]:
    """Deleted records past retention, old audit lines, an outbox nobody reads
    (worker/store/retention.py)."""
    service = process_service()
    return retention.sweep_retention(service.settings, service.store,
                                     service.failed).to_json()


@app.task(name=task_names.SWEEP_CALLING_TESTS)
def sweep_calling_tests() -> int:
    return len(process_service().sweep_calling_tests())


@app.task(name=task_names.MIRROR_OUTBOX)
def mirror_outbox() -> dict[str, Any]:
    """Send the Dataverse mirror's outbox in order (one consumer at a time, under a lock;
    a no-op when the mirror is off). Dataverse errors are recorded by the mirror, never
    raised; a store error is logged and the next beat run tries again."""
    try:
        mirror = process_mirror()
        if mirror is None:
            return {"mirror": "off"}
        refused = first_start(mirror)  # `dataverse check` before the first run
        if refused is not None:
            return refused
        return mirror.run().to_json()
    except StoreError as exc:
        log.warning("dataverse.run_failed", error=str(exc))
        return {"error": str(exc)}
