"""The worker's wiring: a Service with its backends, kick functions and observer."""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence

import httpx

from worker.backends import Backends, http_timeout
from worker.backends.aio import AsyncBackends, ClientPool
from worker.backends.limits import Gates, RedisRate
from worker.bootstrap import tracing
from worker.bootstrap.base import build_failed, build_store, redis_client
from worker.dispatch import Dispatch, TaskSender
from worker.keys import Keys
from worker.service import NoObserver, Observer, Service
from worker.service.circuits import CircuitReporter
from worker.service.step_loop import StepLoop
from worker.settings import Settings
from worker.store.circuits import CircuitBoard
from worker.store.connect import async_store_client


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
    does (metrics in a worker that serves them; None observes nothing). Steps run on the
    process's step loop (PROVISIONING_STEP_RUNNER=async, the default) or step threads.
    Tracing is set up for the process (once per pid) from the OTEL_* variables."""
    tracing.configure()
    client = redis_client(settings)
    http = httpx.Client(timeout=http_timeout(settings.backends), transport=transport)
    backends = Backends(settings.backends, http, owns_client=True)
    if app is not None:
        dispatch = Dispatch(app, settings.batch_records)
        kick, kick_many = kick or dispatch.kick, kick_many or dispatch.kick_many
    step_loop: Callable[[], StepLoop] | None = None
    if settings.step_runner == "async":
        async_transport = transport if isinstance(transport, httpx.AsyncBaseTransport) \
            else None
        board = CircuitBoard(client, Keys(settings.key_prefix, settings.store_shards))
        seen = observer or NoObserver()
        step_loop = lambda: StepLoop(  # noqa: E731 - built in the process that drains
            lambda: _async_backends(settings, async_transport, board, seen), seen)
    store = build_store(settings, client)
    store.ensure_format()  # stamps a new store; refuses a v1 one (run provisioning migrate)
    return Service(settings, store, build_failed(settings, client),
                   backends, kick=kick, kick_many=kick_many, observer=observer,
                   step_loop=step_loop)


def _async_backends(settings: Settings, transport: httpx.AsyncBaseTransport | None,
                    board: CircuitBoard, observer: Observer) -> AsyncBackends:
    """The step loop's backends, built on its thread: gates with the shared rates in Redis
    (an asyncio client of the loop's own) and the circuits reported."""
    backends = settings.backends
    rates = None
    if backends.provisioner_rate or backends.gatekeeper_rate or backends.calling_test_rate:
        rates = RedisRate(async_store_client(settings.redis_url),
                          Keys(settings.key_prefix, settings.store_shards))
    reporter = CircuitReporter(board, observer, socket.gethostname(),
                               backends.circuit_cooldown)
    wire = ClientPool(backends, transport) if transport is not None else None
    return AsyncBackends(backends, wire, gates=Gates(backends, rates, on_change=reporter),
                         owns_client=True)
