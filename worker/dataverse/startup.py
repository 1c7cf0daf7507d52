"""The mirror's first start in a process: ``dataverse check`` against the organization's
metadata before the first run, and again after a pause while a blocking difference stays."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog

from statemachine import format_time
from worker.dataverse.errors import DataverseError
from worker.dataverse.metadata import check_organization
from worker.dataverse.mirror import Mirror
from worker.keys import dumps

log = structlog.get_logger("worker.dataverse")

_lock = threading.Lock()
# pid -> None once the check passed, else the time before which it is not run again.
_checks: dict[int, float | None] = {}


def first_start(mirror: Mirror, *, clock: Callable[[], float] = time.time,
                ) -> dict[str, Any] | None:
    """None once this process's mirror passed ``dataverse check`` (run before its first
    run); else why it does not start yet. A blocking difference is recorded in the mirror's
    status (``dataverse status`` shows it, code ``schema_mismatch``) and logged; the check
    runs again after ``backoff_cap`` seconds, so fixing the organization is enough."""
    pid = os.getpid()
    with _lock:
        if pid in _checks:
            retry_at = _checks[pid]
            if retry_at is None:
                return None
            if clock() < retry_at:
                return {"mirror": "not started", "reason": "waiting to check the "
                        "organization's metadata again"}
    try:
        report = check_organization(mirror.client)
    except DataverseError as exc:
        error: dict[str, Any] = {"code": exc.code, "message": exc.message,
                                 "status": exc.status, "kind": type(exc).__name__}
        outcome: dict[str, Any] = {"mirror": "not started",
                                   "reason": f"dataverse check failed: {exc}"}
    else:
        if report.ok:
            with _lock:
                _checks[pid] = None
            return None
        error = {"code": "schema_mismatch", "message": report.summary(), "status": None,
                 "kind": "SchemaMismatch"}
        outcome = {"mirror": "refused", "blocking": [f"{d.column}: {d.message}"
                                                     for d in report.blocking]}
    with _lock:
        _checks[pid] = clock() + mirror.settings.backoff_cap
    mirror.state.update_status({
        "last_error_at": format_time(datetime.fromtimestamp(clock(), UTC)),
        "last_error": dumps(error), "pause_reason": "check"})
    log.error("dataverse.not_started", **outcome)
    return outcome


def reset() -> None:
    """Forget the checks run so far (tests, and a forked child)."""
    with _lock:
        _checks.clear()
