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

from worker.backends import BackendSettings
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
class Settings:
    """Every setting of the worker. Build it with ``Settings.from_env()``.

    Field ``foo_bar`` is read from ``PROVISIONING_FOO_BAR``; the README lists them all.
    """

    redis_url: str = field(default=DEFAULT_REDIS_URL, repr=False)
    broker_url: str | None = field(default=None, repr=False)
    provisioner_url: str | None = field(default=None, repr=False)
    gatekeeper_url: str | None = field(default=None, repr=False)
    calling_test_url: str | None = field(default=None, repr=False)
    log_format: str | None = None  # "json" or "console"; None: console on a terminal
    log_level: str = "INFO"
    key_prefix: str = "provisioning"
    # Backend calls (SPEC §4).
    connect_timeout: float = 3.0
    read_timeout: float = 10.0
    max_tries: int = 4
    backoff_base: float = 0.2
    backoff_cap: float = 5.0
    retry_after_cap: float = 10.0
    # Ordering and recovery (SPEC §3, §7).
    lease_seconds: float = 30.0
    recovery_interval: float = 10.0
    drain_budget_seconds: float = 20.0
    batch_records: int = 50  # records per drain task that submit and recovery send
    step_threads: int = 8  # backend steps one worker process runs at once (one per record)
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
    # The HTTP API, `provisioning serve` (SPEC §8, README "HTTP API").
    api_host: str = "127.0.0.1"
    api_port: int = 8000  # 0: any free port
    api_max_body_bytes: int = 1024 * 1024
    api_shutdown_timeout: float = 20.0  # in-flight requests get this long after SIGTERM
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    oidc_jwks_url: str | None = None  # None: the issuer's discovery document names it
    oidc_leeway_seconds: float = 60.0  # clock skew allowed on exp and nbf
    oidc_jwks_cache_seconds: float = 300.0  # signing keys are fetched again after this

    @property
    def broker(self) -> str:
        """The Celery broker URL: PROVISIONING_BROKER_URL, else the store's URL."""
        return self.broker_url or self.redis_url

    @property
    def backends(self) -> BackendSettings:
        return BackendSettings(
            provisioner_url=self.provisioner_url,
            gatekeeper_url=self.gatekeeper_url,
            calling_test_url=self.calling_test_url,
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            max_tries=self.max_tries,
            backoff_base=self.backoff_base,
            backoff_cap=self.backoff_cap,
            retry_after_cap=self.retry_after_cap,
        )

    @property
    def json_logs(self) -> bool:
        if self.log_format is None:
            return not sys.stderr.isatty()
        return self.log_format == "json"

    def describe(self) -> dict[str, Any]:
        """Every setting, secrets redacted: for logs and ``provisioning config``."""
        shown: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name.endswith("_url"):
                value = redact_url(value)
            elif item.name.endswith("_secret"):
                value = None if value is None else "***"
            shown[item.name] = value
        return shown

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every ``PROVISIONING_*`` variable; raise ConfigurationError naming bad ones."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        problems: list[str] = []
        for item in fields(cls):
            name = PREFIX + item.name.upper()
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            kind = item.type if isinstance(item.type, str) else str(item.type)
            try:
                if kind.startswith("float"):
                    values[item.name] = float(raw)
                elif kind.startswith("int"):
                    values[item.name] = int(raw)
                else:
                    values[item.name] = raw
            except ValueError:
                problems.append(f"{name}: must be a number, not {raw!r}")
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
        if not 0 <= values.get("api_port", 0) <= 65535:
            problems.append(f"{PREFIX}API_PORT: must be a port number (0: any free port)")
        for name in ("api_max_body_bytes", "oidc_jwks_cache_seconds"):
            if values.get(name, 1) <= 0:
                problems.append(f"{PREFIX}{name.upper()}: must be positive")
        for name in ("api_shutdown_timeout", "oidc_leeway_seconds"):
            if values.get(name, 0) < 0:
                problems.append(f"{PREFIX}{name.upper()}: must not be negative")
        if bool(values.get("oidc_issuer")) != bool(values.get("oidc_audience")):
            problems.append(f"{PREFIX}OIDC_ISSUER and {PREFIX}OIDC_AUDIENCE: set both "
                            "(OIDC on) or neither (OIDC off)")
        log_format = values.get("log_format")
        if log_format not in (None, "json", "console"):
            problems.append(f"{PREFIX}LOG_FORMAT: must be json or console, not {log_format!r}")
        if problems:
            raise ConfigurationError("; ".join(problems))
        return cls(**values)
