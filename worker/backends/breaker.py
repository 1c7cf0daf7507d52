"""A circuit breaker per backend (docs/operations.md: a backend is down).

Closed: calls go. After ``failures`` consecutive transient failures (connection errors,
timeouts, 408, 425, 429, 5xx) it opens: for ``cooldown`` seconds no call goes, the steps
that would call wait. Then one call goes as a probe (half-open) while the others keep
waiting: an answer that is not a transient failure closes the circuit and every waiting
step goes on; a transient failure opens it for another cool-down. A successful answer, or
a permanent one (the backend answered; the request was wrong), resets the count.

Pure and synchronous, with an injected clock: :class:`worker.backends.limits.Gate` waits
on it from the event loop. ``on_change`` is told each change of state.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass


class CircuitState(enum.IntEnum):
    """The states, valued as the metric ``provisioning_backend_circuit_state`` shows them."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")


@dataclass(frozen=True, slots=True)
class Admission:
    """What a call may do now: go (``probe`` when it is the one probe), or wait ``wait``
    seconds and ask again."""

    go: bool
    probe: bool = False
    wait: float = 0.0


GO = Admission(True)


@dataclass(frozen=True, slots=True)
class Change:
    """A change of state, for logs, metrics and ``provisioning health``."""

    backend: str
    state: CircuitState
    failures: int  # consecutive transient failures when it changed
    until: float | None  # the clock's time the cool-down ends (open), else None
    reason: str  # the failure that opened it, or what closed it


class CircuitBreaker:
    """One backend's circuit; see the module docstring. ``failures`` = 0 turns it off."""

    def __init__(self, backend: str, failures: int, cooldown: float, *,
                 clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[Change], None] | None = None) -> None:
        if failures < 0 or cooldown <= 0:
            raise ValueError("failures must not be negative and cooldown must be positive")
        self.backend = backend
        self.failures = failures
        self.cooldown = cooldown
        self.state = CircuitState.CLOSED
        self.consecutive = 0
        self.opened_at = 0.0
        self._probing = False
        self._clock = clock
        self._on_change = on_change

    @property
    def closed(self) -> bool:
        return self.state is CircuitState.CLOSED

    def admit(self) -> Admission:
        """May a call go now? Open past its cool-down with no probe out: this call is the
        probe (half-open). Otherwise wait until the cool-down ends (or a probe's answer)."""
        if self.state is CircuitState.CLOSED:
            return GO
        if self._probing:
            return Admission(False, wait=self.cooldown / 10)
        remaining = self.opened_at + self.cooldown - self._clock()
        if remaining > 0:
            return Admission(False, wait=remaining)
        self._probing = True
        self._change(CircuitState.HALF_OPEN, "cool-down over: one probe call")
        return Admission(True, probe=True)

    def succeeded(self, probe: bool = False) -> None:
        """The backend answered (a success, or a permanent failure): the count resets; a
        probe's answer closes the circuit."""
        self.consecutive = 0
        if probe:
            self._probing = False
        if self.state is not CircuitState.CLOSED:
            self._change(CircuitState.CLOSED, "the backend answered")

    def failed(self, reason: str, probe: bool = False) -> None:
        """A transient failure: counted; the ``failures``-th in a row, or a probe's, opens
        the circuit for a cool-down."""
        self.consecutive += 1
        if probe:
            self._probing = False
            self._open(reason)
        elif (self.state is CircuitState.CLOSED and self.failures
              and self.consecutive >= self.failures):
            self._open(reason)

    def abandoned(self, probe: bool) -> None:
        """A call that went was cancelled before its answer (a shutdown): a probe's turn
        passes to the next caller."""
        if probe and self._probing:
            self._probing = False
            self.state = CircuitState.OPEN  # the cool-down is over: the next caller probes

    def _open(self, reason: str) -> None:
        self.opened_at = self._clock()
        self._change(CircuitState.OPEN, reason)

    def _change(self, state: CircuitState, reason: str) -> None:
        self.state = state
        if self._on_change is not None:
            until = self.opened_at + self.cooldown if state is CircuitState.OPEN else None
            self._on_change(Change(self.backend, state, self.consecutive, until, reason))
