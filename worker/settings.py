"""Settings: one frozen object built once from the environment (SPEC §6).

Nothing else in the project reads ``os.environ``. Secrets (passwords in URLs, the
Dataverse client secret) are kept out of ``repr`` and logs: ``redact_url`` strips them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from worker.errors import ConfigurationError

PREFIX = "PROVISIONING_"
DEFAULT_REDIS_URL = "redis://localhost:6379/0"


def redact_url(url: str | None) -> str | None:
    """``url`` with any password replaced by ``***`` (safe for logs and errors)."""
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


@dataclass(frozen=True)
class BackendSettings:
    """Where the backends are and how patiently to call them.

    SPEC §4 asks for at least 3 in-task tries of a step; the default allows 4.
    """

    provisioner_url: str | None = field(default=None, repr=False)
    gatekeeper_url: str | None = field(default=None, repr=False)
    calling_test_url: str | None = field(default=None, repr=False)
    connect_timeout: float = 3.0
    read_timeout: float = 10.0
    max_tries: int = 4
    backoff_base: float = 0.2
    backoff_cap: float = 5.0
    retry_after_cap: float = 10.0
    # Per-backend protection (README "Configuration"): steps calling one backend at once
    # in a process, its calls per second across every process (0: no limit), and the
    # circuit breaker (0 failures: no breaker).
    provisioner_max_in_flight: int = 200
    gatekeeper_max_in_flight: int = 200
    calling_test_max_in_flight: int = 200
    provisioner_rate: float = 0.0
    gatekeeper_rate: float = 0.0
    calling_test_rate: float = 0.0
    circuit_failures: int = 20
    circuit_cooldown: float = 10.0

    def __post_init__(self) -> None:
        for name in ("provisioner_max_in_flight", "gatekeeper_max_in_flight",
                     "calling_test_max_in_flight"):
            if getattr(self, name) < 1:
                raise ValueError(f"{PREFIX}{name.upper()} must be at least 1, not "
                                 f"{getattr(self, name)}")
        for name in ("provisioner_rate", "gatekeeper_rate", "calling_test_rate",
                     "circuit_failures"):
            if getattr(self, name) < 0:
                raise ValueError(f"{PREFIX}{name.upper()} must not be negative")
        if self.circuit_cooldown <= 0:
            raise ValueError(f"{PREFIX}CIRCUIT_COOLDOWN must be positive")
        if self.max_tries < 1:
            raise ValueError(f"max_tries must be at least 1, not {self.max_tries}")
        for name in ("connect_timeout", "read_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name in ("backoff_base", "backoff_cap", "retry_after_cap"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")



@dataclass(frozen=True)
class Settings:
    """Every setting of the worker. Build it with ``Settings.from_env()``.

    Field ``foo_bar`` is read from ``PROVISIONING_FOO_BAR``; the README lists them all.
    """

    redis_url: str = field(default=DEFAULT_REDIS_URL, repr=False)
    broker_url: str | None = field(default=None, repr=False)
    log_format: str | None = None  # "json" or "console"; None: console on a terminal
    log_level: str = "INFO"
    key_prefix: str = "provisioning"
    # Backend calls (SPEC §4): PROVISIONING_PROVISIONER_URL, ..._CONNECT_TIMEOUT, ... (the
    # fields of BackendSettings, read under the same prefix).
    backends: BackendSettings = field(default_factory=BackendSettings)
    # Ordering and recovery (SPEC §3, §7).
    lease_seconds: float = 30.0
    recovery_interval: float = 10.0
    drain_budget_seconds: float = 20.0
    batch_records: int = 500  # records per drain task that submit and recovery send
    step_threads: int = 8  # backend steps one worker process runs at once (one per record)
    # "async": steps on one asyncio event loop per process (hundreds in flight, limited per
    # backend); "threads": on step_threads threads (the runner before issue 12).
    step_runner: str = "async"
    visibility_timeout: int = 600
    max_deliveries: int = 5
    # Retries scheduled by beat (SPEC §2.1, §4).
    retry_sweep_interval: float = 5.0
    retry_base_seconds: float = 30.0
    retry_cap_seconds: float = 3600.0
    max_retries: int = 5
    calling_test_timeout: float = 900.0
    stuck_after_seconds: float = 300.0
    # Failed-task store retention (beat's age-out).
    failed_retention_seconds: float = 14 * 86400.0
    failed_max_entries: int = 10000
    # Dataverse mirror (SPEC §6): off unless the environment URL is set.
    dataverse_url: str | None = None
    dataverse_tenant_id: str | None = None
    dataverse_client_id: str | None = None
    dataverse_client_secret: str | None = field(default=None, repr=False)
    dataverse_authority_url: str = "https://login.microsoftonline.com"
    # History kept per record (0: unbounded).
    history_limit: int = 1000
    # Running it (README "Deploy"): metrics, health checks, shutdown.
    metrics_port: int = 9808  # the worker's /metrics and /healthz; 0: no endpoint
    metrics_address: str = "127.0.0.1"  # the container image sets 0.0.0.0
    metrics_dir: str | None = None  # multiprocess files; None: a fresh temporary directory
    soft_shutdown_timeout: float = 25.0
    health_beat_max_age: float = 60.0
    health_failed_max: int = 100
    health_timeout: float = 3.0

    @property
    def broker(self) -> str:
        """The Celery broker URL: PROVISIONING_BROKER_URL, else the store's URL."""
        return self.broker_url or self.redis_url

    @property
    def json_logs(self) -> bool:
        if self.log_format is None:
            return not sys.stderr.isatty()
        return self.log_format == "json"

    def describe(self) -> dict[str, Any]:
        """Every setting, secrets redacted: for logs and ``provisioning config``."""
        shown: dict[str, Any] = {}
        for item, value in _flat(self):
            if item.name.endswith("_url"):
                shown[item.name] = redact_url(value)
            elif item.name.endswith("_secret"):
                shown[item.name] = None if value is None else "***"
            else:
                shown[item.name] = value
        return shown

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every ``PROVISIONING_*`` variable; raise ConfigurationError naming bad ones."""
        env = os.environ if environ is None else environ
        problems: list[str] = []
        values = _read(cls, env, problems, skip={"backends"})
        backend_values = _read(BackendSettings, env, problems)
        values.update(backend_values)  # checked below with the rest
        if values.get("max_tries", 3) < 3:
            problems.append(f"{PREFIX}MAX_TRIES: must be at least 3 (SPEC §4)")
        if not 0 <= values.get("metrics_port", 0) <= 65535:
            problems.append(f"{PREFIX}METRICS_PORT: must be a port number (0 turns it off)")
        for name in ("soft_shutdown_timeout", "health_failed_max"):
            if values.get(name, 0) < 0:
                problems.append(f"{PREFIX}{name.upper()}: must not be negative")
        for name in ("health_beat_max_age", "health_timeout", "batch_records", "step_threads"):
            if values.get(name, 1) <= 0:
                problems.append(f"{PREFIX}{name.upper()}: must be positive")
        if values.get("step_runner", "async") not in ("async", "threads"):
            problems.append(f"{PREFIX}STEP_RUNNER: must be async or threads, not "
                            f"{values['step_runner']!r}")
        log_format = values.get("log_format")
        if log_format not in (None, "json", "console"):
            problems.append(f"{PREFIX}LOG_FORMAT: must be json or console, not {log_format!r}")
        if problems:
            raise ConfigurationError("; ".join(problems))
        for name in backend_values:
            del values[name]
        try:
            backends = BackendSettings(**backend_values)
        except ValueError as exc:
            raise ConfigurationError(f"{PREFIX}BACKENDS: {exc}") from exc
        return cls(**values, backends=backends)


def _read(kind: type[Any], env: Mapping[str, str], problems: list[str], *,
          skip: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    """The values of ``kind``'s fields that ``env`` sets (``PROVISIONING_<FIELD>``),
    converted to the field's type; a value that does not convert is a problem."""
    values: dict[str, Any] = {}
    for item in fields(kind):
        if item.name in skip:
            continue
        name = PREFIX + item.name.upper()
        raw = env.get(name)
        if raw is None or raw == "":
            continue
        type_name = item.type if isinstance(item.type, str) else str(item.type)
        try:
            if type_name.startswith("float"):
                values[item.name] = float(raw)
            elif type_name.startswith("int"):
                values[item.name] = int(raw)
            else:
                values[item.name] = raw
        except ValueError:
            problems.append(f"{name}: must be a number, not {raw!r}")
    return values


def setting_names() -> list[str]:
    """Every setting's name, as ``Settings.describe`` and the environment spell them
    (``provisioner_url`` for ``PROVISIONING_PROVISIONER_URL``): the backends' fields in
    place of ``backends``."""
    return [item.name for item, _ in _flat(Settings())]


def _flat(settings: Settings) -> list[tuple[Any, Any]]:
    """Every (field, value) of ``settings``, the backends' fields in place of ``backends``."""
    flat: list[tuple[Any, Any]] = []
    for item in fields(settings):
        if item.name == "backends":
            flat.extend((sub, getattr(settings.backends, sub.name))
                        for sub in fields(settings.backends))
        else:
            flat.append((item, getattr(settings, item.name)))
    return flat
