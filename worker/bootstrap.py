"""The composition root: builds the real store, backends and service from Settings.

Tasks get their Service from ``process_service()``, built once per worker process (after
Celery's prefork, so no connection is shared across processes).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import httpx
import redis

from worker.backends import Backends
from worker.failed import RedisFailedStore
from worker.keys import Keys
from worker.observe import Observer
from worker.redis_store import RedisStateStore
from worker.service import Service
from worker.settings import Settings

if TYPE_CHECKING:
    from worker.dataverse import Mirror

_lock = threading.Lock()
_cache: dict[str, object] = {}


def redis_client(settings: Settings) -> redis.Redis:
    """The store's client: a ``RedisCluster`` for a cluster URL (worker/connect.py)."""
    from worker.connect import store_client

    client: redis.Redis = store_client(settings.redis_url)
    return client


def make_store(settings: Settings, client: redis.Redis) -> RedisStateStore:
    return RedisStateStore(client, keys=Keys(settings.key_prefix, settings.store_shards),
                           history_limit=settings.history_limit,
                           dedupe_window=settings.dedupe_window_seconds)


def build_service(
    settings: Settings,
    *,
    kick: Callable[[str], None] | None = None,
    kick_many: Callable[[Sequence[str]], None] | None = None,
    transport: httpx.BaseTransport | None = None,
    observer: Observer | None = None,
) -> Service:
    """Wire a Service on Redis with real HTTP backends (or ``transport``, e.g. the emulator).

    ``observer`` sees what the service does (``worker.metrics.PrometheusObserver`` in a
    worker that serves metrics); None observes nothing."""
    client = redis_client(settings)
    keys = Keys(settings.key_prefix, settings.store_shards)
    store = make_store(settings, client)
    store.ensure_format()
    failed = RedisFailedStore(client, keys)
    timeout = httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout)
    http = httpx.Client(timeout=timeout, transport=transport)
    backends = Backends(settings.backends, http, owns_client=True)
    return Service(settings, store, failed, backends, kick=kick, kick_many=kick_many,
                   observer=observer)


def build_mirror(
    settings: Settings,
    *,
    transport: httpx.BaseTransport | None = None,
    environ: Mapping[str, str] | None = None,
) -> Mirror | None:
    """Wire the Dataverse mirror on Redis (None when PROVISIONING_DATAVERSE_URL is not set).

    ``transport`` replaces the network (e.g. the emulator's); ``environ`` the environment
    the mirror's own PROVISIONING_DATAVERSE_* tunables are read from."""
    if not settings.dataverse_url:
        return None
    from worker.dataverse import (
        SERVICE_WINDOW_SECONDS,
        DataverseClient,
        Mirror,
        MirrorSettings,
        Pacer,
        RedisMirrorState,
        TokenCache,
    )

    mirror_settings = MirrorSettings.from_env(settings, environ)
    client = redis_client(settings)
    keys = Keys(settings.key_prefix, settings.store_shards)
    store = make_store(settings, client)
    http = httpx.Client(timeout=httpx.Timeout(mirror_settings.timeout), transport=transport)
    pacer = Pacer(mirror_settings.requests_per_window, SERVICE_WINDOW_SECONDS,
                  mirror_settings.burst)
    dataverse = DataverseClient(mirror_settings, http, TokenCache(mirror_settings, http), pacer)
    return Mirror(mirror_settings, store, RedisMirrorState(client, keys), dataverse)


def current_settings() -> Settings:
    """Settings from the environment, read once per process."""
    with _lock:
        settings = _cache.get("settings")
        if not isinstance(settings, Settings):
            settings = Settings.from_env()
            _cache["settings"] = settings
        return settings


def process_service(kick: Callable[[str], None],
                    kick_many: Callable[[Sequence[str]], None] | None = None) -> Service:
    """The Service of this process, rebuilt after a fork."""
    with _lock:
        key = f"service:{os.getpid()}"
        service = _cache.get(key)
        if not isinstance(service, Service):
            service = None
    if service is None:
        from worker import metrics

        settings = current_settings()
        service = build_service(settings, kick=kick, kick_many=kick_many,
                                observer=metrics.observer(settings))
        with _lock:
            _cache[key] = service
    return service


def reset() -> None:
    """Forget cached settings and services (tests, and a forked child)."""
    with _lock:
        _cache.clear()
