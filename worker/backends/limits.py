"""What protects each backend from the worker (docs/configuration.md, docs/operations.md).

Before each HTTP try of a call, the call's :class:`Gate` (one per backend per process)
waits, in this order, for:

1. the backend's circuit (``worker.backends.breaker``): while it is open the try waits;
2. its shared rate (``PROVISIONING_<BACKEND>_RATE`` per second, across every process): a
   GCRA slot booked in Redis (:class:`RedisRate`) or in the process (:class:`LocalRate`);
3. a place among the ``PROVISIONING_<BACKEND>_MAX_IN_FLIGHT`` tries of this process
   (an ``asyncio.Semaphore``), held until the answer.

Waiting is never failing: a delayed try keeps its Idempotency-Key and its place in its
call's tries. The gate then records the answer in the breaker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from statemachine.effects import BackendStep
from worker import gcra
from worker.backends.breaker import Change, CircuitBreaker
from worker.keys import Keys
from worker.settings import BackendSettings

PROVISIONER, GATEKEEPER, CALLING_TEST = "provisioner", "gatekeeper", "calling_test"
BACKENDS = (PROVISIONER, GATEKEEPER, CALLING_TEST)
_BACKEND_OF = {
    BackendStep.PROVISION_CHANNEL: PROVISIONER,
    BackendStep.DEPROVISION_CHANNEL: PROVISIONER,
    BackendStep.ACTIVATE_GATE: GATEKEEPER,
    BackendStep.DEACTIVATE_GATE: GATEKEEPER,
    BackendStep.START_CALLING_TEST: CALLING_TEST,
}


def backend_of(step: BackendStep) -> str:
    """The backend a step calls: provisioner, gatekeeper or calling_test."""
    return _BACKEND_OF[step]


class RateStore(Protocol):
    """Books rate slots: ``reserve`` returns the seconds until the booked slot."""

    async def reserve(self, backend: str, interval: float, now: float) -> float: ...


@dataclass
class LocalRate:
    """GCRA slots kept in this process (one process, or tests)."""

    tat: dict[str, float] = field(default_factory=dict)

    async def reserve(self, backend: str, interval: float, now: float) -> float:
        wait, self.tat[backend] = gcra.reserve(self.tat.get(backend, 0.0), now, interval, 1)
        return wait


# The same two formulas as worker.gcra.reserve (burst 1), atomically in Redis. The key
# expires once its slot is past, so an idle limit leaves nothing behind.
RESERVE_LUA = """
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
if tat < now then tat = now end
local wait = tat - now
local new = tat + interval
redis.call('SET', KEYS[1], string.format('%.6f', new), 'PX',
           math.ceil((new - now) * 1000) + 1000)
return string.format('%.6f', wait)
"""


class RedisRate:
    """GCRA slots shared by every process through one Redis key per backend
    (``<prefix>:{rate:<backend>}``). ``now`` is each caller's wall clock: hosts whose clocks
    differ by more than an interval skew the shared rate by that much."""

    def __init__(self, client: Any, keys: Keys) -> None:
        self._client = client  # a redis.asyncio.Redis or RedisCluster
        self._keys = keys
        self._script = client.register_script(RESERVE_LUA)

    async def reserve(self, backend: str, interval: float, now: float) -> float:
        answer = await self._script(keys=[self._keys.rate(backend)],
                                    args=[f"{now:.6f}", f"{interval:.6f}"])
        return float(answer)


class Gate:
    """One backend's circuit, shared rate and in-flight cap in one process."""

    def __init__(self, backend: str, max_in_flight: int, rate: float,
                 breaker: CircuitBreaker, rates: RateStore, *,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        self.backend = backend
        self.max_in_flight = max_in_flight
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.breaker = breaker
        self.in_flight = 0
        self.waiting = 0  # tries held at the circuit, the rate or the cap
        self._semaphore = asyncio.Semaphore(max_in_flight)
        self._rates = rates
        self._clock = clock
        self._sleep = sleep

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Slot]:
        """Wait for the circuit, the rate and the cap; the body is one try, whose answer
        it records with :meth:`Slot.answered` or :meth:`Slot.transient`."""
        self.waiting += 1
        try:
            probe = await self._admitted()
            if self.interval:
                wait = await self._rates.reserve(self.backend, self.interval, self._clock())
                if wait > 0:
                    await self._sleep(wait)
            await self._semaphore.acquire()
        except BaseException:
            self.waiting -= 1
            raise
        self.waiting -= 1
        self.in_flight += 1
        slot = Slot(self.breaker, probe)
        try:
            yield slot
        finally:
            self.in_flight -= 1
            self._semaphore.release()
            if not slot.recorded:
                self.breaker.abandoned(probe)

    async def _admitted(self) -> bool:
        """Wait until the circuit lets a try go; True when it goes as the probe."""
        while True:
            admission = self.breaker.admit()
            if admission.go:
                return admission.probe
            await self._sleep(min(admission.wait, 1.0))


@dataclass
class Slot:
    """One try's place at the gate; tells the breaker how the try ended."""

    breaker: CircuitBreaker
    probe: bool
    recorded: bool = False

    def answered(self) -> None:
        """The backend answered: a success, or a permanent failure."""
        self.recorded = True
        self.breaker.succeeded(self.probe)

    def transient(self, reason: str) -> bool:
        """A transient failure. True when it is forgiven: the circuit is open now (this
        failure opened it, or it was the probe), so the try is not held against its call,
        which waits for the circuit instead."""
        self.recorded = True
        self.breaker.failed(reason, self.probe)
        return not self.breaker.closed


class Gates:
    """The gates of the three backends in one process."""

    def __init__(self, settings: BackendSettings, rates: RateStore | None = None, *,
                 on_change: Callable[[Change], None] | None = None,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        store = rates if rates is not None else LocalRate()
        self.gates: Mapping[str, Gate] = {
            name: Gate(name, getattr(settings, f"{name}_max_in_flight"),
                       getattr(settings, f"{name}_rate"),
                       CircuitBreaker(name, settings.circuit_failures,
                                      settings.circuit_cooldown, clock=monotonic,
                                      on_change=on_change),
                       store, clock=clock, sleep=sleep)
            for name in BACKENDS}

    def for_step(self, step: BackendStep) -> Gate:
        return self.gates[backend_of(step)]
