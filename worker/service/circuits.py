"""What a change of a backend's circuit does: a log line, the metric, and the entry that
``provisioning health`` reads (``worker.store.circuits``)."""

from __future__ import annotations

import os

import structlog

from worker.backends.breaker import Change, CircuitState
from worker.errors import StoreError
from worker.service.observer import Observer
from worker.store.circuits import CircuitBoard

log = structlog.get_logger("worker")


class CircuitReporter:
    """Called by the breakers (on the step loop's thread) at each change of state."""

    def __init__(self, board: CircuitBoard | None, observer: Observer, hostname: str,
                 cooldown: float) -> None:
        self.board = board
        self.observer = observer
        self.holder = f"{hostname}:{os.getpid()}"
        self.cooldown = cooldown

    def __call__(self, change: Change) -> None:
        # Every change is a warning: an operator wants to see the closing too.
        log.warning("backend.circuit", backend=change.backend, state=change.state.label,
              failures=change.failures, reason=change.reason,
              cooldown_s=self.cooldown if change.state is CircuitState.OPEN else None)
        self.observer.circuit_changed(change.backend, int(change.state))
        if self.board is None:
            return
        try:
            if change.state is CircuitState.CLOSED:
                self.board.clear(change.backend, self.holder)
            else:
                # Kept a little past a cool-down: refreshed by each probe while it stays open.
                self.board.publish(change.backend, self.holder, change.state.label,
                                   change.failures, change.reason, 2 * self.cooldown + 5)
        except StoreError as exc:
            log.warning("backend.circuit_not_published", backend=change.backend,
                        error=str(exc))
