"""OAuth 2.0 client credentials for Dataverse, with plain httpx (no msal).

One ``TokenCache`` per process: ``token()`` returns a cached access token and fetches a new
one when there is none, when it expires within ``refresh_margin`` seconds, or after
``invalidate()`` (the client calls it on a 401). The request is the Microsoft identity
platform's client credentials grant:

    POST <authority>/<tenant>/oauth2/v2.0/token
    grant_type=client_credentials&client_id=…&client_secret=…&scope=<environment URL>/.default

and the answer ``{"token_type": "Bearer", "expires_in": 3599, "access_token": "…"}``; a
refusal is ``{"error": "invalid_client", "error_description": "AADSTS7000215: …"}``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import structlog

from worker.dataverse.errors import DataverseAuthError, DataverseUnavailable
from worker.dataverse.settings import MirrorSettings

log = structlog.get_logger("worker.dataverse")


@dataclass(frozen=True)
class AccessToken:
    value: str = field(repr=False)
    expires_at: float  # clock() time
    lifetime: float


class TokenCache:
    """Client credentials tokens for one app registration, cached and refreshed early."""

    def __init__(self, settings: MirrorSettings, http: httpx.Client, *,
                 clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._http = http
        self._clock = clock
        self._lock = threading.Lock()
        self._token: AccessToken | None = None
        self.fetched = 0  # tokens fetched so far (for status and tests)

    def token(self) -> str:
        """A token valid for at least the refresh margin; fetches one when needed."""
        with self._lock:
            token = self._token
            if token is None or self._clock() >= self._refresh_at(token):
                token = self._fetch()
                self._token = token
            return token.value

    def invalidate(self, value: str | None = None) -> None:
        """Forget the cached token (``value``: only if it is still that one)."""
        with self._lock:
            if self._token is not None and (value is None or self._token.value == value):
                self._token = None

    def _refresh_at(self, token: AccessToken) -> float:
        # Refresh early, by the margin, but never later than 90 % into a short token's life.
        margin = min(self._settings.token_refresh_margin, token.lifetime * 0.1)
        return token.expires_at - margin

    def _client_credential(self) -> dict[str, str]:
        """The form fields that prove the client's identity (a certificate's subclass sends
        a signed assertion instead: ``worker.dataverse.credentials``)."""
        return {"client_secret": self._settings.client_secret}

    def _fetch(self) -> AccessToken:
        s = self._settings
        started = self._clock()
        try:
            response = self._http.post(s.token_url, data={
                "grant_type": "client_credentials",
                "client_id": s.client_id,
                **self._client_credential(),
                "scope": s.scope,
            }, headers={"Accept": "application/json"})
        except httpx.TransportError as exc:
            raise DataverseUnavailable(type(exc).__name__,
                                       f"token endpoint unreachable: {exc}") from exc
        body = _json(response)
        if response.status_code >= 500:
            raise DataverseUnavailable(str(body.get("error") or f"HTTP {response.status_code}"),
                                       _description(body), status=response.status_code)
        if response.status_code != 200:
            raise DataverseAuthError(str(body.get("error") or f"HTTP {response.status_code}"),
                                     _description(body), status=response.status_code)
        value, expires_in = body.get("access_token"), body.get("expires_in")
        try:
            lifetime = float(expires_in)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            lifetime = -1.0
        if not isinstance(value, str) or not value or lifetime <= 0:
            raise DataverseAuthError("invalid_token_response",
                                     "the token endpoint answered without access_token and "
                                     "expires_in", status=response.status_code)
        self.fetched += 1
        log.info("dataverse.token_fetched", expires_in=lifetime)
        return AccessToken(value, started + lifetime, lifetime)


def _json(response: httpx.Response) -> dict[str, object]:
    try:
        body = json.loads(response.content or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {"error_description": response.text[:300]}
    return body if isinstance(body, dict) else {}


def _description(body: dict[str, object]) -> str:
    """The first line of ``error_description`` (AAD appends trace and correlation ids)."""
    text = str(body.get("error_description") or "")
    return text.splitlines()[0] if text else ""
