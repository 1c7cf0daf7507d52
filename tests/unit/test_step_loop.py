"""Steps on the asyncio step loop (worker/service/step_loop.py) through AsyncBackends
(worker/backends/aio.py): the same answers, keys and retry policy as the sync client; a
backend that is down delays a step instead of failing it; the cap on tries in flight; the
drain's futures; the aiohttp wire judged like httpx."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from typing import Any

import httpx
import pytest

from statemachine import RunStep, StepKind
from statemachine.effects import BackendCall, BackendStep, idempotency_key
from statemachine.table import ChannelKind
from worker.backends import Backends
from worker.backends.aio import AsyncBackends, ClientPool
from worker.backends.breaker import Change, CircuitState
from worker.backends.limits import Gates
from worker.backends.wire import AiohttpWire
from worker.emulators import Answer, Emulator, EmulatorServer
from worker.service.observer import NoObserver
from worker.service.step_loop import StepLoop
from worker.settings import BackendSettings

BASE = "http://emulator.local"
RECORD = "4f9d1c1e-0000-4000-8000-000000000001"


def settings(**overrides: Any) -> BackendSettings:
    values: dict[str, Any] = {"provisioner_url": BASE, "gatekeeper_url": BASE,
                              "calling_test_url": BASE, "backoff_base": 0.0,
                              "backoff_cap": 0.0, "max_tries": 3}
    values.update(overrides)
    return BackendSettings(**values)


def call(step: BackendStep, record: str = RECORD, version: int = 2) -> BackendCall:
    return BackendCall(step=step, record_id=record,
                       idempotency_key=idempotency_key(record, version, step),
                       kind=ChannelKind.WHATSAPP, channel_id=f"chan-{record}",
                       name="Contoso", links={})


def step(record: str = RECORD) -> RunStep:
    return RunStep(StepKind.PROVISION, record, f"evt-{record}", 2,
                   (call(BackendStep.PROVISION_CHANNEL, record),
                    call(BackendStep.ACTIVATE_GATE, record)))


async def no_sleep(seconds: float) -> None:
    await asyncio.sleep(0)


def backends(emulator: Emulator, **overrides: Any) -> AsyncBackends:
    configured = settings(**overrides)
    return AsyncBackends(configured, ClientPool(configured, emulator.transport()),
                         sleep=no_sleep)


def test_the_async_client_answers_as_the_sync_one_with_the_same_keys() -> None:
    emulator = Emulator(seed=1)
    emulator.script(RECORD, BackendStep.ACTIVATE_GATE, [503, 503])
    looped = asyncio.run(backends(emulator).call(call(BackendStep.ACTIVATE_GATE)))
    assert looped.ok and looped.attempts == 3
    keys = {r.idempotency_key for r in emulator.requests}
    assert keys == {idempotency_key(RECORD, 2, BackendStep.ACTIVATE_GATE)}

    twin = Emulator(seed=1)
    twin.script(RECORD, BackendStep.ACTIVATE_GATE, [503, 503])
    with Backends(settings(), httpx.Client(transport=twin.transport()),
                  sleep=lambda _: None) as sync:
        assert sync.call(call(BackendStep.ACTIVATE_GATE)) == looped


def test_transient_failures_past_the_tries_fail_the_call_while_the_circuit_is_closed() -> None:
    emulator = Emulator()
    emulator.script(RECORD, BackendStep.PROVISION_CHANNEL, [], then=Answer.of(503))
    result = asyncio.run(backends(emulator, circuit_failures=0).call(
        call(BackendStep.PROVISION_CHANNEL)))
    assert not result.ok and result.failure is not None
    assert (result.failure.transient, result.failure.attempts) == (True, 3)


def test_a_backend_that_is_down_delays_the_call_and_never_fails_it() -> None:
    """Six 503s against 3 tries: the second failure opens the circuit, the call then waits
    for it (its tries are not used up) and succeeds once the backend answers again."""
    emulator = Emulator()
    emulator.script(RECORD, BackendStep.PROVISION_CHANNEL, [503] * 6)
    changes: list[Change] = []
    configured = settings(circuit_failures=2, circuit_cooldown=0.02)
    client = AsyncBackends(configured, ClientPool(configured, emulator.transport()),
                           gates=Gates(configured, on_change=changes.append),
                           sleep=no_sleep)
    result = asyncio.run(client.call(call(BackendStep.PROVISION_CHANNEL)))
    assert result.ok and result.attempts == 7
    states = [c.state for c in changes]
    assert states[:2] == [CircuitState.OPEN, CircuitState.HALF_OPEN]
    assert states[-1] is CircuitState.CLOSED
    assert states.count(CircuitState.HALF_OPEN) == 5  # one probe per cool-down
    assert len({r.idempotency_key for r in emulator.requests}) == 1


def test_a_process_sends_at_most_max_in_flight_tries_to_a_backend() -> None:
    emulator = Emulator(latency_ms=30)
    server = EmulatorServer(("127.0.0.1", 0), emulator).start()
    try:
        configured = BackendSettings(provisioner_url=server.url, gatekeeper_url=server.url,
                                     provisioner_max_in_flight=4)
        loop = StepLoop(lambda: AsyncBackends(configured), NoObserver())
        try:
            futures = [loop.submit(RunStep(
                StepKind.PROVISION, f"rec-{n:03d}", f"evt-{n}", 2,
                (call(BackendStep.PROVISION_CHANNEL, f"rec-{n:03d}"),)))
                for n in range(40)]
            results = [future.result(30) for future in futures]
        finally:
            loop.close()
    finally:
        server.shutdown()
    assert all(result.ok for result in results)
    assert len(emulator.requests) == 40
    assert emulator.max_concurrency == 4  # 40 steps ready at once, 4 tries at a time


def test_steps_run_side_by_side_in_their_own_context_and_can_be_cancelled() -> None:
    emulator = Emulator()
    release = asyncio.Event()
    started = threading.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        if "hold" in request.url.path:
            started.set()
            await release.wait()
        return emulator._handle_httpx(request)

    configured = settings()
    loop = StepLoop(lambda: AsyncBackends(
        configured, ClientPool(configured, httpx.MockTransport(handler)), sleep=no_sleep),
        NoObserver())
    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker")
    try:
        held = loop.submit(step("hold"))
        assert started.wait(10)
        marker.set("mine")
        seen: list[str] = []
        quick = loop.submit(step("quick"), contextvars.copy_context())
        assert quick.result(10).ok  # not held back by the step that waits
        quick_again = loop.submit(step("ctx"), contextvars.copy_context())
        quick_again.add_done_callback(lambda _: seen.append("done"))
        assert quick_again.result(10).ok
        assert held.cancel()
        deadline = time.monotonic() + 5
        while loop.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        assert loop.in_flight == 0  # the cancelled step's task was cancelled too
    finally:
        loop.close()
    assert seen == ["done"]


@pytest.mark.parametrize(("answer", "expect"), [
    ((201, {"response": "made"}), (True, None)),
    ((503, {"error": "down"}), (False, "HTTP 503")),
    ((409, {"error": "conflict"}), (False, "HTTP 409")),
])
def test_the_aiohttp_wire_is_judged_as_httpx_answers_are(answer: tuple[int, Any],
                                                       expect: tuple[bool, str | None]) -> None:
    emulator = Emulator()
    emulator.script(RECORD, BackendStep.PROVISION_CHANNEL, [answer])
    server = EmulatorServer(("127.0.0.1", 0), emulator).start()
    configured = BackendSettings(provisioner_url=server.url, max_tries=1)

    async def run() -> Any:
        wire = AiohttpWire(configured, 10)
        try:
            return await AsyncBackends(configured, wire).call(
                call(BackendStep.PROVISION_CHANNEL))
        finally:
            await wire.aclose()

    try:
        result = asyncio.run(run())
    finally:
        server.shutdown()
    assert (result.ok, result.failure.error_class if result.failure else None) == expect
    request = emulator.requests[-1]
    assert request.idempotency_key == idempotency_key(RECORD, 2, BackendStep.PROVISION_CHANNEL)
    assert request.payload == {"record_id": RECORD, "name": "Contoso", "links": {}}


def test_the_aiohttp_wire_turns_a_refused_connection_into_a_transient_connect_error() -> None:
    configured = BackendSettings(provisioner_url="http://127.0.0.1:9", max_tries=1)

    async def run() -> Any:
        wire = AiohttpWire(configured, 10)
        try:
            return await AsyncBackends(configured, wire).call(
                call(BackendStep.PROVISION_CHANNEL))
        finally:
            await wire.aclose()

    result = asyncio.run(run())
    assert result.failure is not None
    assert (result.failure.error_class, result.failure.transient) == ("ConnectError", True)


def test_the_aiohttp_wire_turns_a_late_answer_into_a_transient_read_timeout() -> None:
    emulator = Emulator()
    emulator.script(RECORD, BackendStep.PROVISION_CHANNEL, [Answer(200, delay_ms=600)])
    server = EmulatorServer(("127.0.0.1", 0), emulator).start()
    configured = BackendSettings(provisioner_url=server.url, max_tries=1, read_timeout=0.2)

    async def run() -> Any:
        wire = AiohttpWire(configured, 10)
        try:
            return await AsyncBackends(configured, wire).call(
                call(BackendStep.PROVISION_CHANNEL))
        finally:
            await wire.aclose()

    try:
        result = asyncio.run(run())
    finally:
        server.shutdown()
    assert result.failure is not None
    assert (result.failure.error_class, result.failure.transient) == ("ReadTimeout", True)
