"""The Provisioning State worker: Celery tasks, the Redis store, backends, the CLI.

``worker.submit(event)`` validates and enqueues one event (or a list of events) from
Python; ``celery -A worker.app worker`` runs the worker. Importing this package opens no
connection and reads no environment.
"""

from __future__ import annotations

from worker.api import SubmitReport, submit

__all__ = ["SubmitReport", "submit"]
