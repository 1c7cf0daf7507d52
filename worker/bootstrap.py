"""The composition root: builds the real store, backends and service from Settings.

Tasks get their Service from ``process_service()``, built once per worker process (after
Celery's prefork, so no connection is shared across processes).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import httpx
import redis

from worker.backends import Backends
from worker.failed import RedisFailedStore
from worker.keys import Keys
from worker.redis_store import RedisStateStore
from worker.service import Service
from worker.settings import Settings

_lock = threading.Lock()
_cache: dict[str, object] = {}


def redis_client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(
        settings.redis_url, decode_responses=True, socket_connect_timeout=5,
        socket_timeout=30, health_check_interval=30, retry_on_timeout=True,
    )


def build_service(
    settings: Settings,
    *,
    kick: Callable[[str], None] | None = None,
    transport: httpx.BaseTransport | None = None,
) -> Service:
    """Wire a Service on Redis with real HTTP backends (or ``transport``, e.g. the emulator)."""
    client = redis_client(settings)
    keys = Keys(settings.key_prefix)
    store = RedisStateStore(client, keys=keys, history_limit=settings.history_limit)
    failed = RedisFailedStore(client, keys)
    timeout = httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout)
    http = httpx.Client(timeout=timeout, transport=transport)
    return Service(settings, store, failed, Backends(settings.backends, http), kick=kick)


def current_settings() -> Settings:
    """Settings from the environment, read once per process."""
    with _lock:
        settings = _cache.get("settings")
        if not isinstance(settings, Settings):
            settings = Settings.from_env()
            _cache["settings"] = settings
        return settings


def process_service(kick: Callable[[str], None]) -> Service:
    """The Service of this process, rebuilt after a fork."""
    with _lock:
        key = f"service:{os.getpid()}"
        service = _cache.get(key)
        if not isinstance(service, Service):
            service = None
    if service is None:
        service = build_service(current_settings(), kick=kick)
        with _lock:
            _cache[key] = service
    return service


def reset() -> None:
    """Forget cached settings and services (tests, and a forked child)."""
    with _lock:
        _cache.clear()
