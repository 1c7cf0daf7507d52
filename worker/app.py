"""The Celery application: ``celery -A worker.app worker`` and ``celery -A worker.app beat``.

The composition root of Celery processes: the app, its configuration, the ``Service`` of
each worker process (``process_service``, built by ``worker.bootstrap`` with this app's kick
functions), and the worker's bootsteps (recovery timer, metrics endpoint). Configuration is
read from the environment lazily, the first time Celery needs it, so importing this module
opens no connection and reads no variable.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import click
import structlog
from celery import Celery, bootsteps
from celery.signals import celeryd_after_setup, worker_process_init, worker_process_shutdown

from worker import bootstrap, task_names
from worker.bootstrap import tracing
from worker.bootstrap.mirror import build_mirror, mirror_settings
from worker.bootstrap.services import build_service
from worker.dataverse import Mirror, startup
from worker.errors import ConfigurationError
from worker.logs import configure
from worker.ops import metrics
from worker.service import Service
from worker.settings import Settings

log = structlog.get_logger("worker")


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
        "task_soft_time_limit": settings.task_soft_time_limit,
        "task_time_limit": settings.task_time_limit,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        # Shutdown (docs/deploy.md): the images set REMAP_SIGTERM=SIGQUIT, so SIGTERM starts
        # a soft shutdown: running tasks get this long to finish, then the rest are cancelled
        # and their unacknowledged messages go back to the queue. Idle workers exit at once
        # (a held ETA message is requeued when the broker connection closes). Kubernetes'
        # terminationGracePeriodSeconds and systemd's TimeoutStopSec are longer than this.
        "worker_soft_shutdown_timeout": settings.soft_shutdown_timeout,
        "worker_enable_soft_shutdown_on_idle": False,
        # beat writes a heartbeat for `provisioning health` (worker/ops/heartbeat.py).
        "beat_scheduler": "worker.beat:HeartbeatScheduler",
        "worker_hijack_root_logger": False,
        # Keeps refused (non-JSON, malformed) messages in the failed-task store.
        "worker_consumer": "worker.consumer:Consumer",
        # structlog writes JSON lines to stderr itself; Celery must not re-wrap them.
        "worker_redirect_stdouts": False,
        "beat_schedule": {
            "recover-orphaned-inboxes": {
                "task": task_names.RECOVER, "schedule": settings.recovery_interval,
            },
            "retry-sweep": {
                "task": task_names.SWEEP_RETRIES, "schedule": settings.retry_sweep_interval,
            },
            "calling-test-timeouts": {
                "task": task_names.SWEEP_CALLING_TESTS,
                "schedule": settings.retry_sweep_interval,
            },
            "stuck-records": {
                "task": task_names.SWEEP_STUCK,
                "schedule": max(10.0, settings.stuck_after_seconds / 5),
            },
            "failed-task-age-out": {
                "task": task_names.EXPIRE_FAILED, "schedule": 3600.0,
            },
            "retention": {  # worker/store/retention.py
                "task": task_names.SWEEP_RETENTION, "schedule": 3600.0,
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
    mirror = mirror_settings(settings)
    return {"dataverse-mirror": {
        "task": task_names.MIRROR_OUTBOX, "schedule": mirror.interval,
        "options": {"queue": mirror.queue, "expires": max(5.0, mirror.interval * 3)},
    }}


class SettingsRefused(ConfigurationError, click.ClickException):
    """Bad settings met while Celery's command line loads the configuration: click prints
    one line per problem and exits 2, instead of Celery's traceback (``celery worker``,
    ``celery beat``, Flower). Still a ConfigurationError for any other caller."""

    exit_code = 2

    def __init__(self, problems: tuple[str, ...]) -> None:
        super().__init__(*problems)  # ConfigurationError's, then ClickException's (message)

    def show(self, file: Any = None) -> None:
        for problem in self.problems:
            click.echo(f"provisioning: {problem}", err=True)


def _configuration() -> dict[str, Any]:
    """The app's configuration, read when Celery first needs it (for the celery command
    line that is while it parses the worker's or beat's options, before anything starts):
    the settings (and the mirror's, when it is on) are validated there, once."""
    try:
        tracing.exporter_names(os.environ)  # a wrong OTEL_* value stops the start, named
        return celery_config(bootstrap.current_settings())
    except ConfigurationError as exc:  # the mirror's own settings included
        raise SettingsRefused(exc.problems) from None


app = Celery("provisioning", include=["worker.tasks"])
app.add_defaults(_configuration)


_services: dict[int, Service] = {}
_mirrors: dict[int, Mirror | None] = {}
_services_lock = threading.Lock()


def process_service() -> Service:
    """The Service of this process, built once (and again in a forked child): on Redis,
    with real HTTP backends, kicking drains through this app, observed by the metrics when
    this worker serves them."""
    pid = os.getpid()
    with _services_lock:
        service = _services.get(pid)
        if service is None:
            _services.clear()  # a forked child drops its parent's (and its connections)
            settings = bootstrap.current_settings()
            service = _services[pid] = build_service(
                settings, app=app, observer=metrics.observer(settings))
        return service


def process_mirror() -> Mirror | None:
    """This process's Dataverse mirror, built once (again in a forked child); None when
    PROVISIONING_DATAVERSE_URL is not set."""
    pid = os.getpid()
    with _services_lock:
        if pid not in _mirrors:
            _mirrors.clear()
            _mirrors[pid] = build_mirror(bootstrap.current_settings())
        return _mirrors[pid]


class StoreFormat(bootsteps.StartStopStep):
    """A worker refuses, at start, a store of another format (an unmigrated v1 store: run
    ``provisioning migrate``, docs/store.md) or of another PROVISIONING_STORE_SHARDS: it
    logs ``store_refused`` and exits 2 instead of running with every drain failing. A
    store that cannot be reached is left to the sweeps and tasks (Redis may come back)."""

    def start(self, parent: Any) -> None:
        settings = bootstrap.current_settings()
        configure(settings)
        store = bootstrap.build_store(settings)
        try:
            store.ensure_format()  # stamps a new, empty store
        except ConfigurationError as exc:
            log.critical("store_refused", error=str(exc))
            raise SystemExit(2) from None
        except Exception as exc:  # noqa: BLE001 - unreachable now is not refused
            log.warning("store_format_unchecked", error=str(exc))
        finally:
            store.client.close()


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
    configure(bootstrap.current_settings())
    try:
        process_service().recover()
    except Exception as exc:  # noqa: BLE001 - a timer callback must never kill the worker
        log.warning("recovery_failed", error=str(exc))


class Metrics(bootsteps.StartStopStep):
    """Serves ``/metrics`` and ``/healthz`` from the worker's main process on
    PROVISIONING_METRICS_ADDRESS:PROVISIONING_METRICS_PORT (0: off), see worker/ops/metrics.py.

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
            metrics.prepare(settings)

    def start(self, parent: Any) -> None:
        settings = bootstrap.current_settings()
        configure(settings)
        self.endpoint = metrics.serve(settings, bootstrap.redis_client(settings, probe=True))
        if self.endpoint is not None:
            self.tref = parent.timer.call_repeatedly(
                metrics.LIVENESS_TICK, self.endpoint.tick, priority=0)

    def stop(self, parent: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
        if self.endpoint is not None:
            self.endpoint.stop()
            self.endpoint = None
        metrics.release()

    def terminate(self, parent: Any) -> None:  # a cold shutdown terminates, never stops
        self.stop(parent)


app.steps["worker"].add(StoreFormat)
app.steps["worker"].add(Recovery)
app.steps["worker"].add(Metrics)


@celeryd_after_setup.connect
def _log_settings(sender: str, **_: Any) -> None:
    """One startup line with every setting, passwords redacted (Settings.describe)."""
    settings = bootstrap.current_settings()
    configure(settings)
    log.info("worker_settings", worker=sender,
                                        settings=settings.describe())


def reset() -> None:
    """Forget the settings and the services built so far (tests, and a forked child)."""
    bootstrap.reset()
    startup.reset()
    with _services_lock:
        _services.clear()
        _mirrors.clear()


@worker_process_init.connect
def _fresh_process(**_: Any) -> None:
    """A prefork child must not reuse the parent's connections."""
    reset()
    configure(bootstrap.current_settings())


@worker_process_shutdown.connect
def _process_gone(pid: int | None = None, **_: Any) -> None:
    """prometheus-client's multiprocess bookkeeping for an exiting pool child; its step
    loop's steps still running are cancelled (their records' next drain runs them again
    with the same Idempotency-Keys) and its HTTP connections closed."""
    metrics.process_exited(pid or os.getpid())
    tracing.flush(2000)  # os._exit follows: no atexit hook exports the last spans
    with _services_lock:
        service = _services.pop(os.getpid(), None)
    if service is not None:
        try:
            service.close(timeout=2.0)
        except Exception as exc:  # noqa: BLE001 - an exiting process must not fail here
            log.warning("service_close_failed", error=str(exc))
