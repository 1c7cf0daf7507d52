"""What the worker does about a change: ``Outcome.effects`` interpreted, in one place.

The core returns effects as values (``statemachine.effects``); :func:`plan` turns one
outcome's effects into a :class:`Plan` the drain carries out: the retry to schedule or to
cancel, the retries used up (a failed-task entry for an operator), the step to start once
the change is committed, and whether the record is gone.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from statemachine import CancelRetry, DeleteRecord, Outcome, RunStep, ScheduleRetry
from worker.settings import Settings


@dataclass(frozen=True, slots=True)
class Plan:
    """What committing one outcome asks of the store and of the worker."""

    retry_at: float | None = None  # epoch seconds the beat retry is due (scheduled)
    cancel_retry: bool = False  # drop any retry scheduled for the record
    scheduled: ScheduleRetry | None = None  # the retry scheduled (for metrics)
    exhausted: ScheduleRetry | None = None  # past PROVISIONING_MAX_RETRIES: an operator's
    step: RunStep | None = None  # the step this change starts (run once it is committed)
    deleted: bool = False  # the record is gone (a Cascade delete)


def retry_delay(settings: Settings, rng: random.Random, attempt: int) -> float:
    """Exponential with a cap and jitter: base·2^(attempt-1), capped, then 50-100%."""
    delay = min(settings.retry_cap_seconds, settings.retry_base_seconds * 2.0 ** (attempt - 1))
    return delay * (0.5 + rng.random() / 2)


def plan(outcome: Outcome, settings: Settings, delay: Callable[[int], float],
         clock: Callable[[], float] = time.time) -> Plan:
    """Interpret ``outcome.effects``. ``delay(attempt)`` is the wait before retry
    ``attempt``; a retry past ``settings.max_retries`` is not scheduled but ``exhausted``."""
    retry_at: float | None = None
    scheduled = exhausted = None
    cancel = deleted = False
    step: RunStep | None = None
    for effect in outcome.effects:
        if isinstance(effect, ScheduleRetry):
            if effect.attempt > settings.max_retries:
                exhausted, cancel = effect, True
            else:
                scheduled, retry_at = effect, clock() + delay(effect.attempt)
        elif isinstance(effect, CancelRetry):
            cancel = True
        elif isinstance(effect, DeleteRecord):
            cancel = deleted = True
        elif isinstance(effect, RunStep):
            step = effect
    return Plan(retry_at=retry_at, cancel_retry=cancel and retry_at is None,
                scheduled=scheduled, exhausted=exhausted, step=step,
                deleted=deleted or outcome.deleted)
