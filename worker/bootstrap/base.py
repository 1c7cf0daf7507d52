"""The light part of the composition root: settings read once per process, the one Redis
client factory, and the stores. The read-only commands' whole wiring is here, so they
never load Celery, httpx or the backends."""

from __future__ import annotations

import threading

import redis

from worker.keys import Keys
from worker.settings import Settings
from worker.store.connect import store_client
from worker.store.failed import RedisFailedStore
from worker.store.redis import RedisStateStore

_lock = threading.Lock()
_settings: Settings | None = None


def current_settings() -> Settings:
    """Settings from the environment, read once per process."""
    global _settings  # noqa: PLW0603 - one Settings per process, by design
    with _lock:
        if _settings is None:
            _settings = Settings.from_env()
        return _settings


def reset() -> None:
    """Forget what was read from the environment (tests, and a forked child)."""
    global _settings  # noqa: PLW0603
    with _lock:
        _settings = None


def redis_client(settings: Settings, *, probe: bool = False) -> redis.Redis:
    """The one Redis client factory: a ``RedisCluster`` for a ``redis+cluster://`` URL
    (worker/store/connect.py). ``probe``: short timeouts and no retries, for health
    checks and scrapes (a dead Redis answers within PROVISIONING_HEALTH_TIMEOUT instead
    of hanging the probe); otherwise the worker's patient client."""
    client: redis.Redis
    if probe:
        client = store_client(settings.redis_url, connect_timeout=settings.health_timeout,
                              timeout=settings.health_timeout, retry_on_timeout=False)
    else:
        client = store_client(settings.redis_url)
    return client


def build_store(settings: Settings, client: redis.Redis | None = None) -> RedisStateStore:
    """The record store on Redis (the read-only commands' whole wiring, with the failed
    store)."""
    return RedisStateStore(client or redis_client(settings),
                           keys=Keys(settings.key_prefix, settings.store_shards),
                           history_limit=settings.history_limit,
                           dedupe_window=settings.dedupe_window_seconds)


def build_failed(settings: Settings, client: redis.Redis | None = None) -> RedisFailedStore:
    """The failed-task store on Redis."""
    return RedisFailedStore(client or redis_client(settings),
                            Keys(settings.key_prefix, settings.store_shards))
