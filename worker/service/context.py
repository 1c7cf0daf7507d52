"""What the service's parts share: the ``Service``'s wiring, as a Protocol.

Each part of the service (ingest, drain, failures, sweeps) is written against this rather
than against ``Service`` itself, so the parts import nothing of each other's wiring and a
test can swap one dependency (the store, the clock) on the ``Service`` it built.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Protocol

from worker.backends import Backends
from worker.service.observer import Observer
from worker.settings import Settings
from worker.store.failed import FailedStore
from worker.store.protocol import StateStore


def utcnow() -> datetime:
    return datetime.now(UTC)


class Context(Protocol):
    settings: Settings
    store: StateStore
    failed: FailedStore
    backends: Backends
    observer: Observer
    hostname: str
    rng: random.Random
    now: Callable[[], datetime]
    kick: Callable[[str], None]
    kick_many: Callable[[Sequence[str]], None]
