"""The mirror's settings: the connection from ``Settings`` (SPEC §6) plus its own tunables.

``MirrorSettings.from_env(settings)`` is the only place the mirror reads the environment
(``PROVISIONING_DATAVERSE_*`` beyond the five that ``Settings`` holds); docs/dataverse.md
("The mirror's settings") lists them all. The client secret never appears in a repr.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import urlsplit

from worker.errors import ConfigurationError
from worker.settings import PREFIX, Settings

API_PATH = "/api/data/v9.2"
# Dataverse service protection: 6,000 requests and 52 concurrent requests per user within
# a sliding 5-minute window (learn.microsoft.com, "Service protection API limits").
SERVICE_WINDOW_SECONDS = 300.0
SERVICE_REQUEST_LIMIT = 6000

# Tunables read by from_env: field name -> (type, lowest allowed value).
_TUNABLES: dict[str, tuple[type, float]] = {
    "interval": (float, 0.1),
    "run_budget": (float, 0.5),
    "lock_seconds": (float, 1.0),
    "requests_per_window": (int, 1),
    "burst": (int, 1),
    "timeout": (float, 0.1),
    "backoff_cap": (float, 0.0),
    "page_size": (int, 1),
    "token_refresh_margin": (float, 0.0),
}
# How the mirror signs in (PROVISIONING_DATAVERSE_CREDENTIAL; worker.dataverse.credentials).
CREDENTIALS = ("secret", "certificate", "workload", "managed", "default")
AZURE_EXTRA = "pip install 'provisioning-state-worker[azure]'"


@dataclass(frozen=True)
class MirrorSettings:
    """Where the organization is, how to sign in, and how hard to push it."""

    url: str  # the environment URL, e.g. https://contoso.crm.dynamics.com (no trailing /)
    tenant_id: str
    client_id: str
    client_secret: str = field(repr=False)
    authority_url: str = "https://login.microsoftonline.com"
    interval: float = 2.0  # beat schedules provisioning.mirror_outbox this often
    run_budget: float = 10.0  # one run sends for at most this long, then ends
    lock_seconds: float = 30.0  # the single consumer's lock; renewed while it runs
    requests_per_window: int = 4800  # paced below the 6,000 per 5 minutes of the service
    burst: int = 20  # requests that may go back to back before pacing starts
    timeout: float = 30.0  # connect and read timeout of one request
    backoff_cap: float = 60.0  # longest pause after failures (outage, rejection)
    page_size: int = 500  # import: Prefer: odata.maxpagesize
    token_refresh_margin: float = 300.0  # refresh a token this long before it expires
    queue: str = "celery"  # the Celery queue beat sends the mirror task to
    credential: str = "secret"  # one of CREDENTIALS
    certificate_path: str | None = None  # PEM: private key and certificate
    certificate_password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", self.url.rstrip("/"))
        object.__setattr__(self, "authority_url", self.authority_url.rstrip("/"))

    @property
    def api_url(self) -> str:
        """The Web API root, ``<environment URL>/api/data/v9.2``."""
        return self.url + API_PATH

    @property
    def scope(self) -> str:
        """OAuth 2.0 client credentials scope: ``<environment URL>/.default``."""
        return self.url + "/.default"

    @property
    def token_url(self) -> str:
        """``<authority>/<tenant>/oauth2/v2.0/token`` (Microsoft identity platform v2)."""
        return f"{self.authority_url}/{self.tenant_id}/oauth2/v2.0/token"

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc.lower()

    def describe(self) -> dict[str, Any]:
        """Every setting, the secret redacted."""
        hidden = ("client_secret", "certificate_password")
        return {item.name: ("***" if item.name in hidden and getattr(self, item.name)
                            else getattr(self, item.name))
                for item in fields(self)}

    @classmethod
    def from_env(cls, settings: Settings,
                 environ: Mapping[str, str] | None = None) -> MirrorSettings:
        """The mirror's settings; ConfigurationError names every missing or bad variable.

        Raises too when PROVISIONING_DATAVERSE_URL is not set: callers check
        ``settings.dataverse_url`` first (no URL: the mirror is off)."""
        env = os.environ if environ is None else environ
        problems: list[str] = []
        if not settings.dataverse_url:
            raise ConfigurationError(f"{PREFIX}DATAVERSE_URL is not set: the Dataverse "
                                     "mirror is off")
        parts = urlsplit(settings.dataverse_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            problems.append(f"{PREFIX}DATAVERSE_URL: must be an http(s) URL, e.g. "
                            "https://contoso.crm.dynamics.com")
        credential = _credential_settings(settings, env, problems)
        values: dict[str, Any] = {}
        for name, (kind, lowest) in _TUNABLES.items():
            variable = f"{PREFIX}DATAVERSE_{name.upper()}"
            raw = env.get(variable, "").strip()
            if not raw:
                continue
            try:
                value = kind(raw)
            except ValueError:
                problems.append(f"{variable}: must be a number, not {raw!r}")
                continue
            if value < lowest:
                problems.append(f"{variable}: must be at least {lowest:g}")
                continue
            values[name] = value
        queue = env.get(f"{PREFIX}DATAVERSE_QUEUE", "").strip()
        if queue:
            values["queue"] = queue
        if problems:
            raise ConfigurationError(*problems)
        return cls(
            url=settings.dataverse_url,
            tenant_id=settings.dataverse_tenant_id or "",
            client_id=settings.dataverse_client_id or "",
            client_secret=settings.dataverse_client_secret or "",
            authority_url=settings.dataverse_authority_url,
            **credential,
            **values,
        )


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a parent package is missing
        return False


def _credential_settings(settings: Settings, env: Mapping[str, str],
                         problems: list[str]) -> dict[str, Any]:
    """The credential fields of MirrorSettings; appends a problem for each missing or bad
    variable. The default credential is ``secret``, or ``certificate`` when only a
    certificate path is given."""
    path = env.get(f"{PREFIX}DATAVERSE_CERTIFICATE_PATH", "").strip() or None
    password = env.get(f"{PREFIX}DATAVERSE_CERTIFICATE_PASSWORD") or None
    variable = f"{PREFIX}DATAVERSE_CREDENTIAL"
    kind = env.get(variable, "").strip().lower() or (
        "certificate" if path and not settings.dataverse_client_secret else "secret")
    if kind not in CREDENTIALS:
        problems.append(f"{variable}: must be one of {', '.join(CREDENTIALS)}, not {kind!r}")
        return {}
    required = {"secret": ("tenant_id", "client_id", "client_secret"),
                "certificate": ("tenant_id", "client_id")}.get(kind, ())
    for name in required:
        if not getattr(settings, f"dataverse_{name}"):
            problems.append(f"{PREFIX}DATAVERSE_{name.upper()}: is required when "
                            f"{PREFIX}DATAVERSE_URL is set"
                            + ("" if kind == "secret" else f" ({variable}={kind})"))
    if kind == "certificate":
        if path is None:
            problems.append(f"{PREFIX}DATAVERSE_CERTIFICATE_PATH: is required with "
                            f"{variable}=certificate (a PEM file with the private key and "
                            "the certificate)")
        elif not os.path.isfile(path):
            problems.append(f"{PREFIX}DATAVERSE_CERTIFICATE_PATH: no such file: {path}")
        if not _installed("cryptography"):
            problems.append(f"{variable}=certificate needs the cryptography package: "
                            f"{AZURE_EXTRA}")
    elif kind != "secret":
        if not _installed("azure.identity"):
            problems.append(f"{variable}={kind} needs azure-identity: {AZURE_EXTRA}")
        if kind != "managed" and urlsplit(settings.dataverse_authority_url).scheme != "https":
            problems.append(f"{PREFIX}DATAVERSE_AUTHORITY_URL: must be https with "
                            f"{variable}={kind} (azure-identity refuses any other authority)")
    return {"credential": kind, "certificate_path": path, "certificate_password": password}


TUNABLE_VARIABLES: tuple[str, ...] = tuple(
    f"{PREFIX}DATAVERSE_{name.upper()}" for name in (
        *_TUNABLES, "queue", "credential", "certificate_path", "certificate_password"))
