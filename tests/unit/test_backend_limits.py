"""The backends' protection (worker/backends/breaker.py, limits.py, worker/gcra.py), with
an injected clock: the circuit breaker's states, the shared GCRA rate (in the process and
in Redis, which must agree), and a gate's cap on tries in flight."""

from __future__ import annotations

import asyncio
from typing import Any

import fakeredis
import pytest

from statemachine.effects import BackendStep
from worker import gcra
from worker.backends.breaker import GO, Change, CircuitBreaker, CircuitState
from worker.backends.limits import Gate, Gates, LocalRate, RedisRate, backend_of
from worker.keys import Keys
from worker.settings import BackendSettings


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- GCRA -----------------------------------------------------------------------------------


def test_gcra_spaces_requests_one_interval_apart_after_the_burst() -> None:
    tat, waits = 0.0, []
    for _ in range(4):
        wait, tat = gcra.reserve(tat, 100.0, 0.5, 2)
        waits.append(wait)
    assert waits == [0.0, 0.0, 0.5, 1.0]  # two at once, then one every half second
    assert gcra.delay(tat, 102.0, 0.5, 2) == 0.0  # idle long enough: free again


def test_local_and_redis_rates_book_the_same_slots() -> None:
    client = fakeredis.FakeAsyncRedis(decode_responses=True)
    shared, local = RedisRate(client, Keys("t")), LocalRate()

    async def book(rate: Any, times: list[float]) -> list[float]:
        return [round(await rate.reserve("provisioner", 0.25, now), 6) for now in times]

    times = [50.0, 50.0, 50.1, 50.9, 52.0]
    expected = [0.0, 0.25, 0.4, 0.0, 0.0]
    assert asyncio.run(book(local, times)) == expected
    assert asyncio.run(book(shared, times)) == expected


def test_the_redis_rate_is_one_budget_for_every_process() -> None:
    server = fakeredis.FakeServer()
    first = RedisRate(fakeredis.FakeAsyncRedis(server=server), Keys("t"))
    second = RedisRate(fakeredis.FakeAsyncRedis(server=server), Keys("t"))

    async def run() -> list[float]:
        return [await first.reserve("gatekeeper", 1.0, 10.0),
                await second.reserve("gatekeeper", 1.0, 10.0),
                await first.reserve("gatekeeper", 1.0, 10.0),
                await second.reserve("provisioner", 1.0, 10.0)]  # its own budget

    assert asyncio.run(run()) == [0.0, 1.0, 2.0, 0.0]


# -- the circuit breaker --------------------------------------------------------------------


def test_the_circuit_opens_after_n_consecutive_transient_failures() -> None:
    clock, changes = Clock(), list[Change]()
    breaker = CircuitBreaker("provisioner", 3, 10.0, clock=clock, on_change=changes.append)
    breaker.failed("HTTP 503")
    breaker.failed("HTTP 503")
    breaker.succeeded()  # an answer resets the count
    breaker.failed("HTTP 503")
    breaker.failed("HTTP 503")
    assert breaker.admit().go and breaker.closed
    breaker.failed("ConnectError")
    assert breaker.state is CircuitState.OPEN
    assert [(c.state, c.failures, c.reason) for c in changes] == [
        (CircuitState.OPEN, 3, "ConnectError")]
    assert changes[0].until == clock.now + 10.0
    admission = breaker.admit()
    assert not admission.go and admission.wait == 10.0


def test_one_probe_after_the_cooldown_closes_it_or_opens_it_again() -> None:
    clock = Clock()
    breaker = CircuitBreaker("gatekeeper", 1, 5.0, clock=clock)
    breaker.failed("HTTP 500")
    clock.now += 4.0
    assert breaker.admit().wait == pytest.approx(1.0)
    clock.now += 1.0
    probe = breaker.admit()
    assert probe.go and probe.probe and breaker.state is CircuitState.HALF_OPEN
    other = breaker.admit()  # only one probe at a time; the others keep waiting
    assert not other.go
    breaker.failed("HTTP 500", probe=True)
    assert breaker.state is CircuitState.OPEN and not breaker.admit().go
    clock.now += 5.0
    assert breaker.admit().probe
    breaker.succeeded(probe=True)
    assert breaker.closed and breaker.admit() == GO


def test_a_cancelled_probe_lets_the_next_caller_probe() -> None:
    clock = Clock()
    breaker = CircuitBreaker("calling_test", 1, 1.0, clock=clock)
    breaker.failed("ReadTimeout")
    clock.now += 1.0
    assert breaker.admit().probe
    breaker.abandoned(probe=True)
    assert breaker.admit().probe


def test_zero_failures_turns_the_breaker_off() -> None:
    breaker = CircuitBreaker("provisioner", 0, 1.0, clock=Clock())
    for _ in range(100):
        breaker.failed("HTTP 503")
    assert breaker.closed and breaker.admit().go


# -- a gate -----------------------------------------------------------------------------------


def test_a_gate_lets_at_most_max_in_flight_tries_through_at_once() -> None:
    breaker = CircuitBreaker("provisioner", 0, 1.0)
    gate = Gate("provisioner", 3, 0.0, breaker, LocalRate())
    peak = 0

    async def one() -> None:
        nonlocal peak
        async with gate.slot() as slot:
            peak = max(peak, gate.in_flight)
            await asyncio.sleep(0.01)
            slot.answered()

    async def run() -> None:
        await asyncio.gather(*(one() for _ in range(20)))

    asyncio.run(run())
    assert peak == 3 and gate.in_flight == 0 and gate.waiting == 0


def test_a_gate_waits_for_its_rate_and_its_circuit_without_failing() -> None:
    clock, slept = Clock(), list[float]()

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds

    breaker = CircuitBreaker("gatekeeper", 1, 4.0, clock=clock)
    gate = Gate("gatekeeper", 10, 2.0, breaker, LocalRate(), clock=clock, sleep=sleep)

    async def run() -> list[bool]:
        forgiven = []
        for _ in range(2):
            async with gate.slot() as slot:
                forgiven.append(slot.transient("HTTP 503"))
        return forgiven

    # The first try opens the circuit (forgiven: the call waits instead of failing); the
    # second waits out the cool-down, goes as the probe, fails, and is forgiven too.
    assert asyncio.run(run()) == [True, True]
    assert slept == [1.0] * 4  # the cool-down, looked at every second; no rate wait
    assert breaker.state is CircuitState.OPEN


def test_every_step_has_its_backend_and_gate() -> None:
    gates = Gates(BackendSettings(provisioner_max_in_flight=7, gatekeeper_rate=5.0))
    assert backend_of(BackendStep.DEPROVISION_CHANNEL) == "provisioner"
    assert gates.for_step(BackendStep.PROVISION_CHANNEL).max_in_flight == 7
    assert gates.for_step(BackendStep.DEACTIVATE_GATE).interval == 0.2
    assert gates.for_step(BackendStep.START_CALLING_TEST).backend == "calling_test"


@pytest.mark.parametrize(("name", "value"), [("provisioner_max_in_flight", 0),
                                             ("gatekeeper_rate", -1.0),
                                             ("circuit_cooldown", 0.0)])
def test_bad_limits_are_refused_naming_the_variable(name: str, value: float) -> None:
    from worker.errors import ConfigurationError
    from worker.settings import Settings

    with pytest.raises(ConfigurationError, match=f"PROVISIONING_{name.upper()}"):
        Settings.from_env({f"PROVISIONING_{name.upper()}": str(value)})


def test_each_change_of_a_circuit_is_logged_measured_and_published_for_health() -> None:
    from structlog.testing import capture_logs

    from worker.service.circuits import CircuitReporter
    from worker.store.circuits import CircuitBoard

    class Seen:
        def __init__(self) -> None:
            self.states: list[tuple[str, int]] = []

        def circuit_changed(self, backend: str, state: int) -> None:
            self.states.append((backend, state))

    client = fakeredis.FakeRedis(decode_responses=True)
    board = CircuitBoard(client, Keys("t"))
    seen = Seen()
    reporter = CircuitReporter(board, seen, "host", cooldown=10.0)
    breaker = CircuitBreaker("gatekeeper", 1, 10.0, clock=Clock(), on_change=reporter)
    with capture_logs() as logs:
        breaker.failed("HTTP 502")
        (entry,) = board.read()
        assert (entry.backend, entry.state, entry.failures, entry.reason) == (
            "gatekeeper", "open", 1, "HTTP 502")
        assert 0 < client.pttl(Keys("t").circuit("gatekeeper", reporter.holder)) <= 25_000
        breaker.succeeded()
        assert board.read() == []
    assert seen.states == [("gatekeeper", 2), ("gatekeeper", 0)]
    assert [(e["event"], e["state"], e["log_level"]) for e in logs] == [
        ("backend.circuit", "open", "warning"), ("backend.circuit", "closed", "warning")]
