"""The backends' client on an asyncio event loop: :class:`AsyncBackends`.

The same contract as ``worker.backends.client.Backends.call`` (read its docstring): the same
requests, Idempotency-Keys, transient/permanent split, backoff and ``Retry-After``, judged by
the same functions. Two things differ, both from the backends' :class:`Gates`: a try waits
for its backend's circuit, shared rate and in-flight cap before it goes; and a transient
failure that finds the circuit open is not held against the call (it waits for the
circuit instead of using up its tries, so a backend that is down delays steps rather than
failing them).
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from statemachine.effects import BackendCall
from worker import tracing
from worker.backends.client import (
    NO_ANSWER,
    TryOutcome,
    bind_try,
    client_span,
    headers_for,
    http_timeout,
    judge,
    not_configured,
    transport_failure,
)
from worker.backends.errors import BackendNotConfigured
from worker.backends.limits import Gates
from worker.backends.policy import backoff_delay
from worker.backends.requests import Request, request_for
from worker.backends.results import CallResult, failed
from worker.backends.wire import AiohttpWire
from worker.settings import BackendSettings


def total_connections(settings: BackendSettings) -> int:
    """Connections for every try the gates let through at once (one per try: HTTP/1.1)."""
    return (settings.provisioner_max_in_flight + settings.gatekeeper_max_in_flight
            + settings.calling_test_max_in_flight)


# Connections per client of a ClientPool. httpcore's pool costs O(connections²) on every
# request it queues or finishes (it counts its idle connections once per connection): one
# client of 600 connections burned 25 CPU s on 1,000 calls, and its loop fell to one call
# at a time. Shards of 16 keep that cost small.
SHARD_CONNECTIONS = 16


class ClientPool:
    """Keep-alive HTTP/1.1 connections for the three backends, sized for every try the
    gates let through at once (one connection per try in flight), as several small
    ``httpx.AsyncClient``s; each try goes to the least busy one. For an httpx transport
    (the emulator's, in-process); the worker's wire is ``worker.backends.wire``."""

    def __init__(self, settings: BackendSettings,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        shards = max(1, -(-total_connections(settings) // SHARD_CONNECTIONS))
        limits = httpx.Limits(max_connections=SHARD_CONNECTIONS,
                              max_keepalive_connections=SHARD_CONNECTIONS,
                              keepalive_expiry=30.0)
        tls = ssl.create_default_context()  # one for all (loading the CAs takes ~80 ms)
        self.clients = [httpx.AsyncClient(timeout=http_timeout(settings), limits=limits,
                                          transport=transport, verify=tls)
                        for _ in range(shards)]
        self.busy = [0] * shards

    async def request(self, method: str, url: str, **options: Any) -> httpx.Response:
        shard = min(range(len(self.busy)), key=self.busy.__getitem__)
        self.busy[shard] += 1
        try:
            return await self.clients[shard].request(method, url, **options)
        finally:
            self.busy[shard] -= 1

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()


class AsyncBackends:
    """The backends' HTTP clients (a :class:`ClientPool`, or one ``httpx.AsyncClient``),
    used from one event loop.

    ``close()`` closes the client (a client passed in belongs to the caller unless
    ``owns_client``); ``sleep`` and ``rng`` are injected for tests.
    """

    def __init__(self, settings: BackendSettings,
                 client: httpx.AsyncClient | ClientPool | AiohttpWire | None = None,
                 *, gates: Gates | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 rng: random.Random | None = None, owns_client: bool | None = None) -> None:
        self._settings = settings
        self._owns_client = client is None if owns_client is None else owns_client
        self._client = client if client is not None else AiohttpWire(
            settings, total_connections(settings))
        self.gates = gates if gates is not None else Gates(settings)
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()

    async def close(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def call(self, call: BackendCall) -> CallResult:
        """Carry out ``call`` with in-task retries; never raises for HTTP or network
        problems (InvalidCallError for a call lacking a field its step needs)."""
        try:
            request = request_for(self._settings, call)
        except BackendNotConfigured as exc:
            return not_configured(call, exc)
        gate = self.gates.for_step(call.step)
        tries = 0  # HTTP tries made
        counted = 0  # tries held against the call (max_tries)
        while True:
            tries += 1
            async with gate.slot() as slot:
                outcome = await self._try(call, request, tries)
                if outcome.result is not None or outcome.failure is None \
                        or not outcome.failure.transient:
                    slot.answered()
                    forgiven = False
                else:
                    forgiven = slot.transient(outcome.failure.error_class)
            if outcome.result is not None:
                return outcome.result
            assert outcome.failure is not None
            if forgiven:
                continue  # the next try waits at the open circuit
            counted += 1
            if counted >= self._settings.max_tries:
                return failed(outcome.failure)
            await self._sleep(backoff_delay(counted, outcome.retry_after, self._settings,
                                            self._rng))

    async def _try(self, call: BackendCall, request: Request, attempt: int) -> TryOutcome:
        bound = bind_try(call, request, attempt)
        with client_span(call, request, attempt) as span:
            started = time.monotonic()
            try:
                response = await self._client.request(
                    request.method, request.url, json=request.json,
                    headers=tracing.inject(headers_for(call)),
                    timeout=http_timeout(self._settings))
            except NO_ANSWER as exc:
                tracing.http_failed(span, type(exc).__name__)
                return transport_failure(bound, call, attempt, exc)
            tracing.http_answered(span, response.status_code)
            return judge(bound, call, request, attempt, response, started, self._settings)
