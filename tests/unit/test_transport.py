"""worker.transport: the broker's Redis transport fails as a connection error once its
connection is gone (so a worker reconnects after a Redis restart instead of exiting)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import redis
from kombu import Connection

from worker.app import celery_config
from worker.settings import Settings
from worker.transport import Channel, Transport


def test_a_channel_of_a_detached_transport_raises_a_connection_error() -> None:
    channel = Channel.__new__(Channel)
    channel.connection = SimpleNamespace(client=None)  # what Connection.collect() leaves
    with pytest.raises(redis.ConnectionError, match="broker connection was closed"):
        channel._connparams()


def test_an_attached_channel_reads_its_connection_as_kombu_does() -> None:
    connection = Connection("redis://127.0.0.1:6390/3", transport=Transport)
    channel = Channel.__new__(Channel)
    channel.connection = SimpleNamespace(client=connection, default_port=6379)
    channel.max_connections = 10
    for name in ("socket_timeout", "socket_connect_timeout", "socket_keepalive",
                 "socket_keepalive_options", "health_check_interval", "retry_on_timeout",
                 "client_name", "credential_provider"):
        setattr(channel, name, None)
    params = channel._connparams()
    assert (params["host"], params["port"], params["db"]) == ("127.0.0.1", 6390, 3)


@pytest.mark.parametrize(("broker", "transport"), [
    ("redis://127.0.0.1:6379/0", "worker.transport:Transport"),
    ("rediss://cache.example:6380/0", "worker.transport:Transport"),
    ("amqp://guest:guest@127.0.0.1:5672//", None),
])
def test_the_worker_uses_it_for_a_redis_broker_only(broker: str, transport: str | None) -> None:
    config = celery_config(Settings(broker_url=broker))
    assert config.get("broker_transport") == transport
    if transport is not None:
        assert Connection(broker, transport=transport).transport_cls == transport
