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
from worker.settings_rules import rule_of, setting

PREFIX = "PROVISIONING_"
DEFAULT_REDIS_URL = "redis://localhost:6379/0"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
HTTP = ("http", "https")
REDIS = ("redis", "rediss", "unix")
# Celery brokers this worker is run on; "memory" for tests that need no server.
STORES = (*REDIS, "redis+cluster", "rediss+cluster")  # a cluster: docs/store.md
BROKERS = (*REDIS, "sentinel", "amqp", "amqps", "pyamqp", "memory")


def redact_url(url: str | None) -> str | None:
    """``url`` with any password replaced by ``***`` (safe for logs and errors)."""
    if url is None:
        return None
    parts = urlsplit(url)
    # Split the netloc by hand: urlsplit's .port raises on a malformed port, and an error
    # line about that very URL must still come out redacted.
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


@dataclass(frozen=True)
class BackendSettings:
    """Where the backends are and how patiently to call them.

    SPEC §4 asks for at least 3 in-task tries of a step; the default allows 4.
    """

    provisioner_url: str | None = field(default=None, repr=False, metadata=setting(
        "provisioner base URL", default_text="—", schemes=HTTP))
    gatekeeper_url: str | None = field(default=None, repr=False, metadata=setting(
        "GateKeeper base URL", default_text="—", schemes=HTTP))
    calling_test_url: str | None = field(default=None, repr=False, metadata=setting(
        "calling-test service base URL", default_text="—", schemes=HTTP))
    connect_timeout: float = field(default=3.0, metadata=setting(
        "backend connect timeout, seconds", above=0))
    read_timeout: float = field(default=10.0, metadata=setting(
        "backend read timeout, seconds", above=0))
    max_tries: int = field(default=4, metadata=setting(
        "in-task tries of one backend call (at least 3: docs/contract.md#backend-calls)",
        minimum=3))
    backoff_base: float = field(default=0.2, metadata=setting(
        "first in-task backoff, seconds (exponential, full jitter)", minimum=0))
    backoff_cap: float = field(default=5.0, metadata=setting(
        "longest in-task backoff, seconds (at least the base)", minimum=0))
    retry_after_cap: float = field(default=10.0, metadata=setting(
        "longest `Retry-After` honoured in the task, seconds", minimum=0))
    # Per-backend protection (docs/configuration.md): steps calling one backend at once
    # in a process, its calls per second across every process (0: no limit), and the
    # circuit breaker (0 failures: no breaker).
    provisioner_max_in_flight: int = field(default=200, metadata=setting(
        "provisioner calls one worker process has in flight at most", above=0))
    gatekeeper_max_in_flight: int = field(default=200, metadata=setting(
        "GateKeeper calls one worker process has in flight at most", above=0))
    calling_test_max_in_flight: int = field(default=200, metadata=setting(
        "calling-test service calls one worker process has in flight at most", above=0))
    provisioner_rate: float = field(default=0.0, metadata=setting(
        "provisioner calls per second across every process (0: no limit)", minimum=0))
    gatekeeper_rate: float = field(default=0.0, metadata=setting(
        "GateKeeper calls per second across every process (0: no limit)", minimum=0))
    calling_test_rate: float = field(default=0.0, metadata=setting(
        "calling-test service calls per second across every process (0: no limit)",
        minimum=0))
    circuit_failures: int = field(default=20, metadata=setting(
        "consecutive transient failures that open a backend's circuit (0: no breaker)",
        minimum=0))
    circuit_cooldown: float = field(default=10.0, metadata=setting(
        "seconds an open circuit waits before one probe call", above=0))

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

    Field ``foo_bar`` is read from ``PROVISIONING_FOO_BAR``; docs/configuration.md lists them all.
    """

    redis_url: str = field(default=DEFAULT_REDIS_URL, repr=False, metadata=setting(
        "the record store (redis+cluster://: a Redis Cluster)", schemes=STORES))
    broker_url: str | None = field(default=None, repr=False, metadata=setting(
        "the Celery broker", default_text="the store URL", schemes=BROKERS))
    log_format: str | None = field(default=None, metadata=setting(  # None: by terminal
        "structlog renderer", default_text="json off a terminal, console on one",
        choices=("json", "console")))
    log_level: str = field(default="INFO", metadata=setting(
        "the worker's log level (the CLI logs warnings only)", choices=LOG_LEVELS))
    key_prefix: str = field(default="provisioning", metadata=setting(
        "prefix of every Redis key", nonblank=True))
    # Backend calls (SPEC §4): PROVISIONING_PROVISIONER_URL, ..._CONNECT_TIMEOUT, ... (the
    # fields of BackendSettings, read under the same prefix).
    backends: BackendSettings = field(default_factory=BackendSettings)
    # Ordering and recovery (SPEC §3, §7).
    lease_seconds: float = field(default=30.0, metadata=setting(
        "a record's drain lease, seconds; a killed worker holds it this long at most",
        minimum=1.0, wording="must be at least 1 (it is renewed every "
        "third of it: a shorter lease is lost to one slow Redis round trip)"))
    recovery_interval: float = field(default=10.0, metadata=setting(
        "how often each worker (and beat) looks for orphaned inboxes, seconds", above=0))
    drain_budget_seconds: float = field(default=20.0, metadata=setting(
        "a drain task hands the rest of a long inbox to a fresh task after this (less "
        "than the soft task time limit)", above=0))
    batch_records: int = field(default=500, metadata=setting(  # records per drain task
        "records per `drain_records` task that a submit (and the recovery sweep) sends; "
        "the worker drains them together", above=0))
    step_threads: int = field(default=8, metadata=setting(  # one per record at once
        "backend steps one worker process runs at once, each for a different record "
        "(more threads contend for the GIL: 16 ran 20 % slower than 8 in "
        "`bench/throughput.py`)", above=0))
    step_runner: str = field(default="async", metadata=setting(
        "async: backend steps on one asyncio event loop per process (hundreds in flight, "
        "limited per backend); threads: on `step_threads` threads (the runner before "
        "issue 12)", choices=("async", "threads")))
    visibility_timeout: int = field(default=600, metadata=setting(
        "Redis transport visibility timeout, seconds; the hard task time limit is the "
        "larger of 90 and 60 % of it, the soft one the larger of 60 and 50 %",
        above=90, wording="must be more than 90 (the hard task time limit, the larger of "
        "90 s and 60 % of it: a shorter one redelivers running tasks)"))
    max_deliveries: int = field(default=5, metadata=setting(
        "deliveries of one message before it goes to the failed-task store", minimum=1))
    # Retries scheduled by beat (SPEC §2.1, §4).
    retry_sweep_interval: float = field(default=5.0, metadata=setting(
        "beat's retry and calling-test sweeps, seconds", above=0))
    retry_base_seconds: float = field(default=30.0, metadata=setting(
        "first beat retry delay, seconds", above=0))
    retry_cap_seconds: float = field(default=3600.0, metadata=setting(
        "longest beat retry delay, seconds (at least the base)", above=0))
    max_retries: int = field(default=5, metadata=setting(
        "beat retries before an operator is asked", minimum=0))
    calling_test_timeout: float = field(default=900.0, metadata=setting(
        "a calling test InProgress longer than this becomes Failure (\"timed out\")",
        above=0))
    stuck_after_seconds: float = field(default=300.0, metadata=setting(
        "a record Processing or Deprovisioning this long without progress is drained "
        "again", above=0))
    # Failed-task store retention (beat's age-out).
    failed_retention_seconds: float = field(default=14 * 86400.0, metadata=setting(
        "failed-task entries older than this (14 days) are aged out", above=0))
    failed_max_entries: int = field(default=10000, metadata=setting(
        "the failed-task store's size cap (oldest go first)", minimum=1))
    # Dataverse mirror (SPEC §6): off unless the environment URL is set.
    dataverse_url: str | None = field(default=None, metadata=setting(
        "the Dataverse environment URL, e.g. `https://contoso.crm.dynamics.com`; when set, "
        "every applied change is written to the mirror's outbox",
        default_text="— (mirror off)", schemes=HTTP))
    dataverse_tenant_id: str | None = field(default=None, metadata=setting(
        "OAuth 2.0 client credentials: the tenant (scope `<environment URL>/.default`)",
        default_text="—"))
    dataverse_client_id: str | None = field(default=None, metadata=setting(
        "OAuth 2.0 client credentials: the application (client) id", default_text="—"))
    dataverse_client_secret: str | None = field(default=None, repr=False, metadata=setting(
        "OAuth 2.0 client credentials: the secret; never in logs or reprs",
        default_text="—"))
    dataverse_authority_url: str = field(
        default="https://login.microsoftonline.com", metadata=setting(
            "token authority (`<authority>/<tenant>/oauth2/v2.0/token`)", schemes=HTTP))
    # History kept per record (0: unbounded).
    history_limit: int = field(default=1000, metadata=setting(
        "history entries kept per record (0: all)", minimum=0))
    # Store v2 (docs/store.md): shards, the dedupe window, retention.
    store_shards: int = field(default=16, metadata=setting(
        "shards the store's indexes are split into (hash tags; fixed once the store is "
        "written)", minimum=1, maximum=16384))
    dedupe_window_seconds: float = field(default=7 * 86400.0, metadata=setting(
        "how long an accepted event id and an applied dedupe key are remembered, seconds",
        above=0))
    deleted_retention_seconds: float = field(default=30 * 86400.0, metadata=setting(
        "how long a deleted record's history is kept, seconds (beat purges it after)",
        above=0))
    audit_retention_seconds: float = field(default=365 * 86400.0, metadata=setting(
        "how long operator audit lines are kept, seconds", above=0))
    audit_max_entries: int = field(default=100000, metadata=setting(
        "audit lines kept at most (beat drops the oldest beyond)", above=0))
    outbox_max_entries: int = field(default=100000, metadata=setting(
        "Dataverse outbox entries kept when the mirror is off (beat drops the oldest); "
        "with it on, a fuller outbox is reported", above=0))
    # Running it (docs/deploy.md): metrics, health checks, shutdown.
    # 9839, not 9808: celery-exporter's default, which often runs in the same pod.
    metrics_port: int = field(default=9839, metadata=setting(  # 0: no endpoint
        "the worker's Prometheus `/metrics` and `/healthz` port (0: no endpoint); see "
        "docs/deploy.md", minimum=0, maximum=65535,
        wording="must be a port number (0 turns it off)"))
    metrics_address: str = field(default="127.0.0.1", metadata=setting(
        "the address it binds; the container image sets `0.0.0.0`", nonblank=True))
    metrics_dir: str | None = field(default=None, metadata=setting(  # None: a fresh one
        "prometheus-client's multiprocess directory (emptied at worker start; one per "
        "worker)", default_text="a fresh temporary directory"))
    soft_shutdown_timeout: float = field(default=25.0, metadata=setting(
        "Celery's `worker_soft_shutdown_timeout`: seconds running tasks get after SIGTERM "
        "(with `REMAP_SIGTERM=SIGQUIT`)", minimum=0))
    health_beat_max_age: float = field(default=60.0, metadata=setting(
        "`provisioning health`: beat's heartbeat older than this fails (also the "
        "heartbeat key's TTL)", above=0))
    health_failed_max: int = field(default=100, metadata=setting(
        "`provisioning health`: more failed-task entries than this fails", minimum=0))
    health_timeout: float = field(default=3.0, metadata=setting(
        "connect and read timeout of health checks and metrics scrapes, seconds", above=0))
    # The demo only: which embedded Redis `provisioning demo` starts.
    embedded_redis: str = field(default="auto", metadata=setting(
        "demo only: the embedded Redis it starts (`auto` prefers a `redis-server` on the "
        "PATH)", choices=("auto", "redis-server", "fakeredis")))
    # The HTTP API, `provisioning serve` (docs/api.md).
    api_host: str = field(default="127.0.0.1", metadata=setting(
        "where `provisioning serve` listens (`--host`); the compose file and Kubernetes "
        "use `0.0.0.0`", nonblank=True))
    api_port: int = field(default=8000, metadata=setting(
        "`provisioning serve`'s port (`--port`)", minimum=1, maximum=65535,
        wording="must be a port number (1 to 65535)"))
    api_max_body_bytes: int = field(default=1024 * 1024, metadata=setting(
        "the HTTP API's largest request body, bytes; larger is a 413", above=0))
    api_shutdown_timeout: float = field(default=20.0, metadata=setting(
        "seconds the HTTP API's requests in flight get after SIGTERM", minimum=0))
    oidc_issuer: str | None = field(default=None, metadata=setting(
        "accept JWTs from this issuer (`iss`, e.g. "
        "`https://login.microsoftonline.com/<tenant>/v2.0`); with the audience, or neither",
        default_text="— (OIDC off)", schemes=HTTP))
    oidc_audience: str | None = field(default=None, metadata=setting(
        "the audience those JWTs must name (`aud`, e.g. the app ID URI); with the "
        "issuer, or neither", default_text="—"))
    oidc_jwks_url: str | None = field(default=None, metadata=setting(
        "where the issuer's signing keys are",
        default_text="the discovery document's `jwks_uri`",
        schemes=HTTP))
    oidc_leeway_seconds: float = field(default=60.0, metadata=setting(
        "clock skew allowed on a JWT's `exp` and `nbf`, seconds", minimum=0))
    oidc_jwks_cache_seconds: float = field(default=300.0, metadata=setting(
        "how long fetched signing keys are used before fetching again, seconds", above=0))
    # The operator console at /ui/ (worker/console, docs/console.md).
    console_session_secret: str | None = field(default=None, repr=False, metadata=setting(
        "the key that signs the console's session cookies (at least 32 characters); "
        "every `serve` process behind one address needs the same one",
        default_text="random per process (sessions end when it restarts)",
        wording="must be at least 32 characters"))
    console_session_seconds: float = field(default=28800.0, metadata=setting(
        "how long a console session lasts after logging in, seconds", above=0))
    console_secure_cookie: str = field(default="on", metadata=setting(
        "`off` drops the Secure flag of the console's cookies, for plain-HTTP local runs "
        "only (browsers keep Secure cookies for HTTPS)", choices=("on", "off")))
    console_same_site: str = field(default="lax", metadata=setting(
        "the SameSite attribute of the console's session cookie", choices=("lax", "strict")))
    console_oidc_client_id: str | None = field(default=None, metadata=setting(
        "the console's OIDC client (Entra application) id: the console offers "
        "\"Sign in with Microsoft\" (authorization code with PKCE) when it and "
        "PROVISIONING_OIDC_ISSUER are set", default_text="— (token login only)"))
    console_oidc_client_secret: str | None = field(default=None, repr=False, metadata=setting(
        "the console client's secret, for an Entra \"Web\" platform registration; "
        "unset for a public client (PKCE alone)", default_text="—"))

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

    @property
    def task_time_limit(self) -> int:
        """Celery's hard task time limit, seconds: the larger of 90 and 60 % of the
        visibility timeout (which must exceed it: Redis would redeliver a running task)."""
        return max(90, int(self.visibility_timeout * 0.6))

    @property
    def task_soft_time_limit(self) -> int:
        """Celery's soft task time limit, seconds: the larger of 60 and half the
        visibility timeout."""
        return max(60, int(self.visibility_timeout * 0.5))

    def cross_problems(self) -> list[str]:
        """The rules that relate two settings, one line per broken one."""
        problems = []
        if self.drain_budget_seconds >= self.task_soft_time_limit:
            problems.append(
                f"{PREFIX}DRAIN_BUDGET_SECONDS: must be less than the soft task time limit "
                f"({self.task_soft_time_limit} s, from {PREFIX}VISIBILITY_TIMEOUT), not "
                f"{self.drain_budget_seconds:g}")
        for cap, base in (("backoff_cap", "backoff_base"),
                          ("retry_cap_seconds", "retry_base_seconds")):
            owner = self.backends if cap == "backoff_cap" else self
            if getattr(owner, cap) < getattr(owner, base):
                problems.append(
                    f"{PREFIX}{cap.upper()}: must be at least {PREFIX}{base.upper()} "
                    f"({getattr(owner, base):g}), not {getattr(owner, cap):g}")
        if "+cluster://" in self.redis_url and not self.broker_url:
            problems.append(f"{PREFIX}BROKER_URL: must be set when {PREFIX}REDIS_URL names "
                            "a Redis Cluster (Celery's broker is a plain Redis or RabbitMQ)")
        if self.console_session_secret is not None and len(self.console_session_secret) < 32:
            problems.append(f"{PREFIX}CONSOLE_SESSION_SECRET: must be at least 32 characters")
        if self.console_oidc_client_id and not self.oidc_issuer:
            problems.append(f"{PREFIX}CONSOLE_OIDC_CLIENT_ID: needs {PREFIX}OIDC_ISSUER "
                            "(the issuer the console signs in with)")
        if bool(self.oidc_issuer) != bool(self.oidc_audience):
            problems.append(f"{PREFIX}OIDC_ISSUER and {PREFIX}OIDC_AUDIENCE: set both "
                            "(OIDC on) or neither (OIDC off)")
        return problems

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every ``PROVISIONING_*`` variable and check it against its rule
        (docs/configuration.md), then the rules relating two settings; raise ConfigurationError
        with one line per problem, each naming the variable and the rule it breaks."""
        env = os.environ if environ is None else environ
        problems: list[str] = []
        values = _read(cls, env, problems, skip={"backends"})
        backend_values = _read(BackendSettings, env, problems)
        if problems:
            raise ConfigurationError(*problems)
        # BackendSettings' own checks are a subset of the rules just passed.
        settings = cls(**values, backends=BackendSettings(**backend_values))
        problems = settings.cross_problems()
        if problems:
            raise ConfigurationError(*problems)
        return settings


def _read(kind: type[Any], env: Mapping[str, str], problems: list[str], *,
          skip: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    """The values of ``kind``'s fields that ``env`` sets (``PROVISIONING_<FIELD>``),
    converted to the field's type and checked against its rule; a value that does not
    convert or breaks its rule is a problem (the value shown redacted)."""
    values: dict[str, Any] = {}
    for item in fields(kind):
        if item.name in skip:
            continue
        name = PREFIX + item.name.upper()
        raw = env.get(name)
        if raw is None or raw == "":
            continue
        shown = ("***" if item.name.endswith("_secret")
                 else redact_url(raw) if item.name.endswith("_url") else raw)
        type_name = item.type if isinstance(item.type, str) else str(item.type)
        try:
            if type_name.startswith("float"):
                value: Any = float(raw)
            elif type_name.startswith("int"):
                value = int(raw)
            else:
                value = raw
        except ValueError:
            kind_of = "a whole number" if type_name.startswith("int") else "a number"
            problems.append(f"{name}: must be {kind_of}, not {shown!r}")
            continue
        rule = rule_of(item)
        if rule.broken_by(value):
            problems.append(f"{name}: {rule.text()}, not {shown!r}")
            continue
        values[item.name] = value
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
