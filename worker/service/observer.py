"""What the service reports as it works, for metrics. The default observes nothing.

``worker.ops.metrics.PrometheusObserver`` implements this Protocol; tests may record calls.
"""

from __future__ import annotations

from typing import Protocol

from statemachine import HistoryEntry


class Observer(Protocol):
    def entry_committed(self, entry: HistoryEntry) -> None:
        """A history entry was stored (applied, ignored, rejected, duplicate or stale)."""
        ...

    def transition_seconds(self, trigger: str, seconds: float) -> None:
        """Time from loading the record to the committed change, for one command."""
        ...

    def backend_call(self, step: str, seconds: float, ok: bool, error_class: str | None,
                     attempts: int) -> None:
        """One backend call (all its in-task tries) finished."""
        ...

    def retry_scheduled(self, attempt: int) -> None: ...

    def circuit_changed(self, backend: str, state: int) -> None:
        """A backend's circuit changed: 0 closed, 1 half-open, 2 open."""
        ...

    def task_failed(self, task: str, exception: str) -> None:
        """An entry was written to the failed-task store."""
        ...


class NoObserver:
    """Observes nothing."""

    def entry_committed(self, entry: HistoryEntry) -> None:
        return None

    def transition_seconds(self, trigger: str, seconds: float) -> None:
        return None

    def backend_call(self, step: str, seconds: float, ok: bool, error_class: str | None,
                     attempts: int) -> None:
        return None

    def retry_scheduled(self, attempt: int) -> None:
        return None

    def circuit_changed(self, backend: str, state: int) -> None:
        return None

    def task_failed(self, task: str, exception: str) -> None:
        return None
