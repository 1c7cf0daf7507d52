"""The names of the worker's Celery tasks: a wire contract, not an implementation detail.

Producers send them (SPEC §3 pins ``provisioning.handle_event`` for any Celery client; the
dispatcher sends the drain tasks), ``worker.tasks`` registers them, and the failed-task
store records them in each entry's ``task`` (what ``failed list --json`` shows and what
replay reads). They live here, below every layer that names them, rather than in
``worker/tasks.py``, which only the Celery edge may import.
"""

from __future__ import annotations

HANDLE_EVENT = "provisioning.handle_event"
DRAIN_RECORD = "provisioning.drain_record"
DRAIN_RECORDS = "provisioning.drain_records"
RETRY_TASK = "provisioning.retry"  # a record in Error that used up its retries
RECOVER = "provisioning.recover"
SWEEP_RETRIES = "provisioning.sweep_retries"
SWEEP_STUCK = "provisioning.sweep_stuck"
SWEEP_CALLING_TESTS = "provisioning.sweep_calling_tests"
EXPIRE_FAILED = "provisioning.expire_failed"
SWEEP_RETENTION = "provisioning.sweep_retention"  # worker/store/retention.py
MIRROR_OUTBOX = "provisioning.mirror_outbox"
