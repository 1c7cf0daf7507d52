"""Keeping the leases a drain holds alive while it works (long backend calls included)."""

from __future__ import annotations

import threading
import time

import structlog

from worker.errors import StoreError
from worker.store.protocol import StateStore

log = structlog.get_logger("worker")


class LeaseKeeper:
    """One thread per process renews every lease this process holds, every third of the
    lease time; a killed process stops renewing, and its leases expire (then the recovery
    sweep hands the records to another worker)."""

    def __init__(self, store: StateStore, seconds: float) -> None:
        self.store = store
        self.seconds = seconds
        self._held: dict[str, str] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
        self._thread.start()

    def hold(self, record_id: str, owner: str) -> None:
        with self._lock:
            self._held[record_id] = owner

    def drop(self, record_id: str) -> None:
        with self._lock:
            self._held.pop(record_id, None)

    def _run(self) -> None:
        while True:
            time.sleep(self.seconds / 3)
            with self._lock:
                held = list(self._held.items())
            for record_id, owner in held:
                try:
                    self.store.renew_lease(record_id, owner, self.seconds)
                except StoreError:
                    log.warning("lease_renew_failed", record_id=record_id)
