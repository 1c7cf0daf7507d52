"""The Celery application: ``celery -A worker.app worker`` and ``celery -A worker.app beat``.

Configuration is read from the environment lazily, the first time Celery needs it, so
importing this module opens no connection and reads no variable.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from celery import Celery, bootsteps
from celery.signals import celeryd_after_setup, worker_process_init, worker_process_shutdown

from worker import bootstrap
from worker.service import DRAIN_RECORD, DRAIN_RECORDS
from worker.settings import Settings


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings for at-least-once, JSON-only, one-message-at-a-time processing."""
    config: dict[str, Any] = {
        "broker_url": settings.broker,
        "broker_connection_retry_on_startup": True,
        # A message not acknowledged within this time is delivered again; it must be
        # longer than the longest task (task_time_limit below).
        "broker_transport_options": {"visibility_timeout": settings.visibility_timeout},
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_soft_time_limit": max(60, int(settings.visibility_timeout * 0.5)),
        "task_time_limit": max(90, int(settings.visibility_timeout * 0.6)),
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        # Shutdown (README "Deploy"): the images set REMAP_SIGTERM=SIGQUIT, so SIGTERM starts
        # a soft shutdown: running tasks get this long to finish, then the rest are cancelled
        # and their unacknowledged messages go back to the queue. Idle workers exit at once
        # (a held ETA message is requeued when the broker connection closes). Kubernetes'
        # terminationGracePeriodSeconds and systemd's TimeoutStopSec are longer than this.
        "worker_soft_shutdown_timeout": settings.soft_shutdown_timeout,
        "worker_enable_soft_shutdown_on_idle": False,
        # beat writes a heartbeat for `provisioning health` (worker/health.py).
        "beat_scheduler": "worker.health:HeartbeatScheduler",
        "worker_hijack_root_logger": False,
        # Keeps refused (non-JSON, malformed) messages in the failed-task store.
        "worker_consumer": "worker.consumer:Consumer",
        # structlog writes JSON lines to stderr itself; Celery must not re-wrap them.
        "worker_redirect_stdouts": False,
        "beat_schedule": {
            "recover-orphaned-inboxes": {
                "task": "provisioning.recover", "schedule": settings.recovery_interval,
            },
            "retry-sweep": {
                "task": "provisioning.sweep_retries", "schedule": settings.retry_sweep_interval,
            },
            "calling-test-timeouts": {
                "task": "provisioning.sweep_calling_tests",
                "schedule": settings.retry_sweep_interval,
            },
            "stuck-records": {
                "task": "provisioning.sweep_stuck",
                "schedule": max(10.0, settings.stuck_after_seconds / 5),
            },
            "failed-task-age-out": {
                "task": "provisioning.expire_failed", "schedule": 3600.0,
            },
            "retention": {  # worker/retention.py
                "task": "provisioning.sweep_retention", "schedule": 3600.0,
            },
            **_mirror_schedule(settings),
        },
    }
    if settings.broker.partition("://")[0] in ("redis", "rediss"):
        # Reconnects after a Redis restart instead of exiting (see worker/transport.py).
        config["broker_transport"] = "worker.transport:Transport"
    return config


def _mirror_schedule(settings: Settings) -> dict[str, Any]:
    """The Dataverse mirror's consumer, only when PROVISIONING_DATAVERSE_URL is set. A run
    not started within a few intervals expires: busy workers never pile runs up."""
    if not settings.dataverse_url:
        return {}
    from worker.dataverse import MirrorSettings

    mirror = MirrorSettings.from_env(settings)
    return {"dataverse-mirror": {
        "task": "provisioning.mirror_outbox", "schedule": mirror.interval,
        "options": {"queue": mirror.queue, "expires": max(5.0, mirror.interval * 3)},
    }}


app = Celery("provisioning", include=["worker.tasks"])
app.add_defaults(lambda: celery_config(bootstrap.current_settings()))


def kick(record_id: str) -> None:
    """Ask some worker to drain ``record_id``'s inbox."""
    app.send_task(DRAIN_RECORD, args=[record_id])


def kick_many(record_ids: Sequence[str]) -> None:
    """Ask workers to drain these records' inboxes: one ``drain_records`` task per
    ``PROVISIONING_BATCH_RECORDS`` records, sent in one broker round trip."""
    size = bootstrap.current_settings().batch_records
    chunks = [list(record_ids[start:start + size]) for start in range(0, len(record_ids), size)]
    if len(chunks) == 1:
        app.send_task(DRAIN_RECORDS, args=[chunks[0]])
        return
    with app.producer_or_acquire() as producer:
        for chunk in chunks:
            app.send_task(DRAIN_RECORDS, args=[chunk], producer=producer)


class Recovery(bootsteps.StartStopStep):
    """Every worker sweeps for orphaned inboxes on a timer, so a killed worker's events are
    applied within lease + interval seconds even when beat is not running."""

    requires = ("celery.worker.components:Timer",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.tref: Any = None

    def start(self, parent: Any) -> None:
        interval = bootstrap.current_settings().recovery_interval
        self.tref = parent.timer.call_repeatedly(interval, _recover, priority=10)

    def stop(self, parent: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()


def _recover() -> None:
    from worker.logs import configure

    configure(bootstrap.current_settings())
    try:
        bootstrap.process_service(kick).recover()
    except Exception as exc:  # noqa: BLE001 - a timer callback must never kill the worker
        import structlog

        structlog.get_logger("worker").warning("recovery_failed", error=str(exc))


class Metrics(bootsteps.StartStopStep):
    """Serves ``/metrics`` and ``/healthz`` from the worker's main process on
    PROVISIONING_METRICS_ADDRESS:PROVISIONING_METRICS_PORT (0: off), see worker/metrics.py.

    The multiprocess directory is prepared when the step is created, before the pool forks
    its children, so that every child writes its samples there."""

    requires = ("celery.worker.components:Timer",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.endpoint: Any = None
        self.tref: Any = None
        settings = bootstrap.current_settings()
        self.enabled = settings.metrics_port != 0
        if self.enabled:
            from worker import metrics

            metrics.prepare(settings)

    def start(self, parent: Any) -> None:
        from worker import metrics
        from worker.logs import configure

        settings = bootstrap.current_settings()
        configure(settings)
        self.endpoint = metrics.serve(settings)
        if self.endpoint is not None:
            self.tref = parent.timer.call_repeatedly(
                metrics.LIVENESS_TICK, self.endpoint.tick, priority=0)

    def stop(self, parent: Any) -> None:
        from worker import metrics

        if self.tref is not None:
            self.tref.cancel()
        if self.endpoint is not None:
            self.endpoint.stop()
            self.endpoint = None
        metrics.release()

    def terminate(self, parent: Any) -> None:  # a cold shutdown terminates, never stops
        self.stop(parent)


app.steps["worker"].add(Recovery)
app.steps["worker"].add(Metrics)


@celeryd_after_setup.connect
def _log_settings(sender: str, **_: Any) -> None:
    """One startup line with every setting, passwords redacted (Settings.describe)."""
    import structlog

    from worker.logs import configure

    settings = bootstrap.current_settings()
    configure(settings)
    structlog.get_logger("worker").info("worker_settings", worker=sender,
                                        settings=settings.describe())


@worker_process_init.connect
def _fresh_process(**_: Any) -> None:
    """A prefork child must not reuse the parent's connections."""
    from worker.logs import configure

    bootstrap.reset()
    configure(bootstrap.current_settings())


@worker_process_shutdown.connect
def _process_gone(pid: int | None = None, **_: Any) -> None:
    """prometheus-client's multiprocess bookkeeping for an exiting pool child."""
    from worker import metrics

    metrics.process_exited(pid or os.getpid())
