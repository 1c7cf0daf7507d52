"""The Dataverse Web API calls the mirror and the import make, with errors translated.

Every request carries a bearer token (a ``TokenSource``), the OData headers, and waits for the
``Pacer`` first. A 401 drops the cached token and the request is sent once more with a fresh
one. An answer that is not a success becomes a ``DataverseError`` carrying the Web API's
``{"error": {"code", "message"}}`` (see ``worker.dataverse.errors`` for which class).
Nothing is retried here except that one 401: the caller decides (the mirror pauses, the
import waits).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import structlog

from statemachine import ENTITY_SET, LOOKUPS, PRIMARY_KEY
from worker.dataverse.credentials import TokenSource
from worker.dataverse.errors import (
    DataverseAuthError,
    DataverseConflict,
    DataverseError,
    DataverseNotFound,
    DataverseRejected,
    DataverseThrottled,
    DataverseUnavailable,
)
from worker.dataverse.pacing import Pacer
from worker.dataverse.settings import MirrorSettings

log = structlog.get_logger("worker.dataverse")

# The read-form columns the mirror and the import ask for ($select): every column of
# SPEC §1 that ProvisioningState.from_dataverse reads.
SELECT: tuple[str, ...] = (
    PRIMARY_KEY, "msdyn_name", "statecode", "statuscode", "msdyn_gatekeeperstatus",
    "msdyn_gatekeeperstatusreason", "msdyn_automatedcallingstatus", "msdyn_exceptiondetails",
    "msdyn_errormessage", "msdyn_provisioningresponse",
    *(lookup.value_property for lookup in LOOKUPS),
    "createdon", "modifiedon", "versionnumber",
)
# Without a Retry-After on a 429, wait this long (Dataverse always sends one).
DEFAULT_RETRY_AFTER = 5.0
ODATA_HEADERS = {
    "Accept": "application/json",
    "OData-MaxVersion": "4.0",
    "OData-Version": "4.0",
}


class DataverseClient:
    """The ``msdyn_ocprovisioningstates`` entity set over the Web API."""

    def __init__(self, settings: MirrorSettings, http: httpx.Client, tokens: TokenSource,
                 pacer: Pacer) -> None:
        self.settings = settings
        self.http = http
        self.tokens = tokens
        self.pacer = pacer
        self.requests = 0  # sent so far, for reports

    # -- the entity set ----------------------------------------------------------------

    def row_url(self, record_id: str) -> str:
        return f"{self.settings.api_url}/{ENTITY_SET}({quote(record_id, safe='')})"

    @property
    def set_url(self) -> str:
        return f"{self.settings.api_url}/{ENTITY_SET}"

    def create(self, body: Mapping[str, Any]) -> str:
        """POST a row (its id in the body); returns its etag. Dataverse: "create with data
        returned" (Prefer: return=representation with $select) answers 201 with the row."""
        response = self._send("POST", self.set_url, json=dict(body),
                              params={"$select": "versionnumber"},
                              headers={"Prefer": "return=representation"})
        return _etag(response)

    def update(self, record_id: str, body: Mapping[str, Any], *, etag: str | None) -> str:
        """PATCH the given columns. With ``etag``, ``If-Match: <etag>`` (a stale one is a 412,
        a missing row a 404); without, ``If-Match: *`` (never creates: no upsert). Returns
        the row's new etag ("update with data returned")."""
        response = self._send("PATCH", self.row_url(record_id), json=dict(body),
                              params={"$select": "versionnumber"},
                              headers={"If-Match": etag or "*",
                                       "Prefer": "return=representation"})
        return _etag(response)

    def delete(self, record_id: str) -> None:
        self._send("DELETE", self.row_url(record_id))

    def get(self, record_id: str) -> dict[str, Any] | None:
        """The row in read form (with ``@odata.etag``), or None when it does not exist."""
        try:
            response = self._send("GET", self.row_url(record_id),
                                  params={"$select": ",".join(SELECT)})
        except DataverseNotFound:
            return None
        return _object(response)

    def pages(self, page_size: int) -> Iterator[list[dict[str, Any]]]:
        """Every row, a page at a time (``Prefer: odata.maxpagesize``, ``@odata.nextLink``).

        Throttling and outages raise; the caller may call again from the start or resume
        with ``page(next_link)``."""
        url: str | None = None
        while True:
            rows, url = self.page(page_size, url)
            yield rows
            if url is None:
                return

    def page(self, page_size: int, next_link: str | None = None,
             ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of rows and the link to the next (None after the last)."""
        headers = {"Prefer": f"odata.maxpagesize={page_size}"}
        if next_link is None:
            response = self._send("GET", self.set_url, headers=headers,
                                  params={"$select": ",".join(SELECT)})
        else:
            if urlsplit(next_link).netloc.lower() != self.settings.host:
                # The token must never go to another host.
                raise DataverseRejected("foreign_next_link",
                                        f"@odata.nextLink points away from {self.settings.host}")
            response = self._send("GET", next_link, headers=headers)
        body = _object(response)
        rows = body.get("value")
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise DataverseRejected("invalid_response", "the collection has no value array",
                                    status=response.status_code)
        link = body.get("@odata.nextLink")
        return rows, link if isinstance(link, str) and link else None

    def get_json(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        """GET ``<Web API root>/<path>`` (``WhoAmI``, metadata): the JSON object answered."""
        return _object(self._send("GET", f"{self.settings.api_url}/{path}", params=params))

    # -- sending -----------------------------------------------------------------------

    def _send(self, method: str, url: str, *, json: dict[str, Any] | None = None,
              params: Mapping[str, str] | None = None,
              headers: Mapping[str, str] | None = None) -> httpx.Response:
        for attempt in (1, 2):
            token = self.tokens.token()
            self.pacer.wait()
            self.requests += 1
            try:
                response = self.http.request(
                    method, url, json=json, params=params,
                    headers={**ODATA_HEADERS, **(headers or {}),
                             "Authorization": f"Bearer {token}"},
                    timeout=httpx.Timeout(self.settings.timeout),
                )
            except httpx.TransportError as exc:
                raise DataverseUnavailable(type(exc).__name__, str(exc) or "no answer") from exc
            log.debug("dataverse.request", method=method, url=_path(url),
                      status=response.status_code)
            if response.status_code == 401 and attempt == 1:
                # Expired or revoked early: a fresh token, once.
                self.tokens.invalidate(token)
                continue
            if response.is_success:
                return response
            raise translate(response)
        raise AssertionError("unreachable")  # pragma: no cover


def translate(response: httpx.Response) -> DataverseError:
    """The DataverseError for a failed answer, with the Web API's error code and message."""
    status = response.status_code
    code, message = _error(response)
    if status == 401:
        return DataverseAuthError(code, message or "token refused", status=status)
    if status == 429:
        return DataverseThrottled(code, message, status=status,
                                  retry_after=retry_after(response.headers))
    if status >= 500 or status in (408,):
        return DataverseUnavailable(code, message, status=status)
    if status == 412:
        return DataverseConflict(code, message, status=status)
    if status == 404:
        return DataverseNotFound(code, message, status=status)
    return DataverseRejected(code, message, status=status)


def retry_after(headers: httpx.Headers) -> float:
    """Seconds a 429 asks us to wait (delay-seconds or an HTTP date, RFC 9110 §10.2.3)."""
    value = (headers.get("Retry-After") or "").strip()
    if not value:
        return DEFAULT_RETRY_AFTER
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return DEFAULT_RETRY_AFTER
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _error(response: httpx.Response) -> tuple[str, str]:
    """``(error.code, error.message)`` of a Web API error body; ``HTTP <status>`` when the
    body is not that shape."""
    try:
        body = json.loads(response.content) if response.content else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = error.get("code")
        message = error.get("message")
        return (str(code) if code not in (None, "") else f"HTTP {response.status_code}",
                str(message or "").strip())
    return f"HTTP {response.status_code}", response.text[:300].strip()


def _object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataverseRejected("invalid_response", f"the body is not JSON: {exc}",
                                status=response.status_code) from exc
    if not isinstance(body, dict):
        raise DataverseRejected("invalid_response", "the body is not a JSON object",
                                status=response.status_code)
    return body


def _etag(response: httpx.Response) -> str:
    """The row's etag after a write: ``@odata.etag`` of the returned row, else the ETag
    header."""
    if response.content:
        etag = _object(response).get("@odata.etag")
        if isinstance(etag, str) and etag:
            return etag
    header = response.headers.get("ETag")
    if header:
        return str(header)
    raise DataverseRejected("invalid_response", "the answer carries no etag",
                            status=response.status_code)


def _path(url: str) -> str:
    return urlsplit(url).path
