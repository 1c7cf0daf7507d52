"""``celery beat``'s scheduler: Celery's default one, plus beat's heartbeat.

Selected by ``beat_scheduler`` in ``worker.broker.celery_config``; the heartbeat itself
(what it proves, how its age is read) is ``worker.ops.heartbeat``.
"""

from __future__ import annotations

from typing import Any

from celery.beat import PersistentScheduler

from worker import bootstrap
from worker.keys import Keys
from worker.ops.heartbeat import BeatHeartbeat


class HeartbeatScheduler(PersistentScheduler):
    """Celery's PersistentScheduler that also writes beat's heartbeat on its ticks."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        settings = bootstrap.current_settings()
        self._heartbeat = BeatHeartbeat(
            Keys(settings.key_prefix, settings.store_shards), settings.health_beat_max_age,
            connect=lambda: bootstrap.redis_client(settings, probe=True))
        super().__init__(*args, **kwargs)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """One scheduler tick, then the heartbeat; sleep no longer than its interval."""
        delay = super().tick(*args, **kwargs)
        return min(delay, self._heartbeat())

    def close(self) -> None:
        super().close()
        self._heartbeat.close()
