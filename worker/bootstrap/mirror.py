"""The Dataverse mirror's wiring: its settings (read once per process) and the Mirror."""

from __future__ import annotations

import threading
from collections.abc import Mapping

import httpx

from worker.bootstrap.base import build_store, redis_client
from worker.dataverse import (
    SERVICE_WINDOW_SECONDS,
    DataverseClient,
    Mirror,
    MirrorSettings,
    Pacer,
    RedisMirrorState,
)
from worker.dataverse.credentials import token_source
from worker.keys import Keys
from worker.settings import Settings

_lock = threading.Lock()
_cache: dict[Settings, MirrorSettings] = {}


def mirror_settings(settings: Settings,
                    environ: Mapping[str, str] | None = None) -> MirrorSettings:
    """The mirror's settings (PROVISIONING_DATAVERSE_*), read once per Settings; raises
    ConfigurationError when the mirror is off or misconfigured. ``environ`` reads them from
    there instead (tests), uncached."""
    if environ is not None:
        return MirrorSettings.from_env(settings, environ)
    with _lock:
        cached = _cache.get(settings)
        if cached is None:
            _cache.clear()  # one Settings per process: keep only the current one's
            cached = _cache[settings] = MirrorSettings.from_env(settings)
        return cached


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
    config = mirror_settings(settings, environ)
    client = redis_client(settings)
    http = httpx.Client(timeout=httpx.Timeout(config.timeout), transport=transport)
    pacer = Pacer(config.requests_per_window, SERVICE_WINDOW_SECONDS, config.burst)
    dataverse = DataverseClient(config, http, token_source(config, http), pacer)
    keys = Keys(settings.key_prefix, settings.store_shards)
    return Mirror(config, build_store(settings, client), RedisMirrorState(client, keys),
                  dataverse)
