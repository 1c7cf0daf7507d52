"""kombu's Redis transport, failing as a connection error once its connection is gone.

After a broker loss, Celery's consumer calls ``Connection.collect()`` (which detaches the
transport from its connection: ``transport.client = None``) and then ``close()``; closing
the channel again restores the unacknowledged messages through a new Redis pool, built by
``Channel._connparams`` from ``transport.client``: an ``AttributeError`` ('NoneType' object
has no attribute 'hostname'). Celery takes that for an unrecoverable error and the worker
exits, where it should reconnect (celery 5.7, kombu 5.7; seen in tests/faults
test_redis_restart about one run in five). Here the detached channel raises
``redis.ConnectionError``, which kombu and Celery handle as the broker being away (the
ack is skipped, the message stays in kombu's unacked set until the visibility timeout,
and the recovery sweep re-kicks the record anyway).

Selected by ``broker_transport`` in ``worker.app.celery_config``; the URL scheme stays
``redis://``.
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:  # detached by Connection.collect()
            raise redis.ConnectionError("the broker connection was closed")
        parent: Any = super()  # kombu's stubs leave out this private method
        return parent._connparams(asynchronous=asynchronous)


class Transport(kombu_redis.Transport):
    Channel = Channel
