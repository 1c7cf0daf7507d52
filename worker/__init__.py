"""The Provisioning State worker: Celery tasks, the Redis store, backends, the CLI.

``worker.submit(event)`` validates and enqueues one event (or a list of events) from
Python; ``celery -A worker.app worker`` runs the worker. Importing this package opens no
connection, reads no environment, and loads neither Celery nor httpx: ``submit`` is
loaded on first use (PEP 562), so that ``provisioning list`` and the other read-only
commands, which live in this package too, start in a fraction of a second.
"""

from __future__ import annotations

import typing

if typing.TYPE_CHECKING:
    from worker.api import SubmitReport, submit

__all__ = ["SubmitReport", "submit"]


def __getattr__(name: str) -> typing.Any:
    if name in __all__:
        # The one function-level import of the product: ``submit`` needs Celery and
        # httpx, and ``import worker.cli`` (every read command) must not load them.
        from worker import api  # noqa: PLC0415

        return getattr(api, name)
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
