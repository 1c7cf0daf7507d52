"""The worker's wiring: a Service with its backends, kick functions and observer."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import httpx

from worker.backends import Backends, http_timeout
from worker.bootstrap.base import build_failed, build_store, redis_client
from worker.dispatch import Dispatch, TaskSender
from worker.service import Observer, Service
from worker.settings import Settings


def build_service(
    settings: Settings,
    *,
    app: TaskSender | None = None,
    kick: Callable[[str], None] | None = None,
    kick_many: Callable[[Sequence[str]], None] | None = None,
    transport: httpx.BaseTransport | None = None,
    observer: Observer | None = None,
) -> Service:
    """Wire a Service on Redis with real HTTP backends (or ``transport``, e.g. the emulator).

    ``app`` is the Celery application the kick functions send drain tasks through;
    ``kick``/``kick_many`` replace them (tools and tests that drain in-process; with
    neither, kicks go nowhere); ``observer`` sees what the service
    does (metrics in a worker that serves them; None observes nothing)."""
    client = redis_client(settings)
    http = httpx.Client(timeout=http_timeout(settings.backends), transport=transport)
    backends = Backends(settings.backends, http, owns_client=True)
    if app is not None:
        dispatch = Dispatch(app, settings.batch_records)
        kick, kick_many = kick or dispatch.kick, kick_many or dispatch.kick_many
    return Service(settings, build_store(settings, client), build_failed(settings, client),
                   backends, kick=kick, kick_many=kick_many, observer=observer)
