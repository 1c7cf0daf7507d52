"""The composition root: every client, store, backend and service is built here, once.

Entry points (the Celery app, the CLI, ``worker.submit``, beat, the emulator tools) ask
this package for what they need and pass it down; nothing below the entry points imports
it. Split by what each wiring loads:

* ``base``: settings read once per process, the one Redis client factory, the stores
  (the read-only commands' whole wiring: no Celery, no httpx);
* ``services``: a ``Service`` with its backends, kick functions and observer;
* ``mirror``: the Dataverse mirror and its settings.
"""

from worker.bootstrap.base import (
    build_failed,
    build_store,
    current_settings,
    redis_client,
    reset,
)

__all__ = ["build_failed", "build_store", "current_settings", "redis_client", "reset"]
