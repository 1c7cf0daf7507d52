"""Redis clients for the store: one server (``redis://``, ``rediss://``, ``unix://``) or a
Redis Cluster (``redis+cluster://host:port`` or ``rediss+cluster://``; any one node, the
others are discovered), as redis-py's ``Redis`` or ``RedisCluster``.

Celery's broker is never a cluster (kombu has no Redis Cluster transport): with a cluster
store, set PROVISIONING_BROKER_URL to a plain Redis or to RabbitMQ (docs/store.md).
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


def is_cluster(url: str) -> bool:
    return url.partition("://")[0] in CLUSTER_SCHEMES


def _plain(url: str) -> str:
    """``redis+cluster://…`` as redis-py's cluster clients take it (``redis://…``)."""
    scheme, rest = url.split("://", 1)
    return f"{scheme.removesuffix('+cluster')}://{rest}"


def store_client(url: str, *, connect_timeout: float = 5, timeout: float = 30,
                 retry_on_timeout: bool = True) -> Any:
    """A client for the store at ``url``, with the worker's timeouts. Responses decoded."""
    if is_cluster(url):
        return RedisCluster.from_url(
            _plain(url), decode_responses=True, socket_connect_timeout=connect_timeout,
            socket_timeout=timeout, retry_on_timeout=retry_on_timeout)
    return redis.Redis.from_url(
        url, decode_responses=True, socket_connect_timeout=connect_timeout,
        socket_timeout=timeout, health_check_interval=30 if retry_on_timeout else 0,
        retry_on_timeout=retry_on_timeout)


def async_store_client(url: str) -> Any:
    """An asyncio client for the store at ``url`` (the step loop's shared backend rates):
    ``redis.asyncio.RedisCluster`` for a cluster URL. Responses decoded."""
    if is_cluster(url):
        return AsyncRedisCluster.from_url(_plain(url), decode_responses=True)
    return redis.asyncio.Redis.from_url(url, decode_responses=True)
