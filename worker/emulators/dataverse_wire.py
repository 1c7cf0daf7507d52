"""Dataverse's wire, as the Dataverse emulator speaks it: the error codes and the shapes of
its error replies, and the parsing of ids, numbers, bodies and token requests.

Pure functions: a request that Dataverse (or the identity platform) would refuse raises
:class:`Failure` carrying the exact reply it gets.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from statemachine import ENTITY, ENTITY_SET
from worker.emulators.serving import Reply

__all__ = [
    "API_PREFIX",
    "BAD_OPTION",
    "CONCURRENCY_LIMIT",
    "DUPLICATE_KEY",
    "INVALID_ARGUMENT",
    "MAX_PAGE_SIZE",
    "NOT_FOUND",
    "ODATA",
    "ODATA_JSON",
    "REQUESTS_LIMIT",
    "ROW_PATH",
    "SEGMENT_NOT_FOUND",
    "TOO_LONG",
    "UNAVAILABLE",
    "VERSION_MISMATCH",
    "Failure",
    "TokenRequest",
    "error",
    "json_body",
    "loads",
    "not_found",
    "page_size",
    "parse_int",
    "parse_uuid",
    "reply",
    "token_request",
]

API_PREFIX = "/api/data/v9.2/"
MAX_PAGE_SIZE = 5000  # Dataverse's largest page
ODATA_JSON = "application/json; odata.metadata=minimal"
ROW_PATH = re.compile(rf"^{re.escape(ENTITY_SET)}\((?P<id>[^)]*)\)$")

# Dataverse error codes (learn.microsoft.com: Web API errors, service protection limits).
NOT_FOUND = "0x80040217"  # "<table> With Id = <id> Does Not Exist"
DUPLICATE_KEY = "0x80040237"  # "Cannot insert duplicate key."
VERSION_MISMATCH = "0x80060882"  # a stale If-Match
REQUESTS_LIMIT = "0x80072322"  # "Number of requests exceeded the limit of 6000 …"
CONCURRENCY_LIMIT = "0x80072326"
INVALID_ARGUMENT = "0x80040203"
BAD_OPTION = "0x8004431a"
TOO_LONG = "0x80044331"
ODATA = "0x0"  # OData parser errors carry code 0x0
SEGMENT_NOT_FOUND = "0x8006088a"
UNAVAILABLE = "0x80040216"  # the generic code, used for outages and scripted faults


class Failure(Exception):
    """Ends the handling of a request with the reply it gets."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


def reply(status: int, body: object = None, headers: Iterable[tuple[str, str]] = ()) -> Reply:
    """A Web API reply: ``body`` (None: no content) as OData JSON, then ``headers``."""
    return Reply.of(status, body, headers, content_type=ODATA_JSON)


def error(status: int, code: str, message: str,
          headers: Iterable[tuple[str, str]] = ()) -> Failure:
    """Dataverse's error shape, ``{"error": {"code", "message"}}``, to raise."""
    return Failure(reply(status, {"error": {"code": code, "message": message}}, headers))


def not_found(record_id: str) -> Failure:
    return error(404, NOT_FOUND, f"{ENTITY} With Id = {record_id} Does Not Exist")


def parse_uuid(text: str) -> str:
    """``text`` as a canonical (lower-case) GUID; 400 when it is none."""
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise error(400, ODATA, f"Bad Request - Error in query syntax: {text!r} is not a "
                                "GUID.") from None


def parse_int(text: str, name: str) -> int:
    """A query option's whole, non-negative number; 400 otherwise."""
    try:
        value = int(text)
    except ValueError:
        raise error(400, ODATA, f"{name} must be a whole number") from None
    if value < 0:
        raise error(400, ODATA, f"{name} must not be negative")
    return value


def page_size(prefer: str) -> int | None:
    """The page size a ``Prefer: odata.maxpagesize=N`` asks for, within Dataverse's
    limits, or None when it asks for none."""
    match = re.search(r"odata\.maxpagesize=(\d+)", prefer)
    return max(1, min(MAX_PAGE_SIZE, int(match.group(1)))) if match else None


def json_body(body: bytes) -> dict[str, Any]:
    """A write's body, which must be a JSON object; 400 otherwise."""
    try:
        payload = json.loads(body or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise error(400, ODATA, "The request body is not valid JSON.") from None
    if not isinstance(payload, dict):
        raise error(400, ODATA, "The request body must be a JSON object.")
    return payload


def loads(body: bytes) -> object:
    """The JSON value of ``body``, or None when it is empty or not JSON."""
    try:
        return json.loads(body) if body else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


# -- the identity platform's token endpoint ------------------------------------------------


@dataclass(frozen=True)
class TokenRequest:
    """A client credentials request the token endpoint accepts."""

    client_id: str
    scope: str


def _aad(status: int, code: str, description: str) -> Failure:
    # The identity platform's error shape: the AADSTS number is repeated in error_codes.
    number = description[len("AADSTS"):].partition(":")[0]
    return Failure(reply(status, {"error": code, "error_description": description,
                                  "error_codes": [int(number)] if number.isdigit() else []}))


def token_request(
    method: str, path: str, body: bytes, *, tenant_id: str | None, client_id: str | None,
    client_secret: str | None,
    assertion: Callable[[Mapping[str, str], str], str | None] | None = None,
) -> TokenRequest:
    """Check ``POST /<tenant>/oauth2/v2.0/token`` (client credentials) as the identity
    platform does: tenant, client id and secret (each only when configured) or a client
    assertion (``assertion(form, client id)`` says why it is refused, None when it holds),
    grant type, and a scope ending in ``/.default``. Raises Failure with the AADSTS error
    otherwise."""
    parts = path.strip("/").split("/")
    if method != "POST" or len(parts) != 4 or parts[1:] != ["oauth2", "v2.0", "token"]:
        raise _aad(404, "invalid_request", "AADSTS900561: The endpoint only accepts "
                                           "POST requests to /<tenant>/oauth2/v2.0/token.")
    tenant = parts[0]
    form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
    if tenant_id is not None and tenant != tenant_id:
        raise _aad(400, "invalid_request", f"AADSTS90002: Tenant '{tenant}' not found.")
    if form.get("grant_type") != "client_credentials":
        raise _aad(400, "unsupported_grant_type",
                   "AADSTS70003: The app requested an unsupported grant type.")
    given_id = form.get("client_id", "")
    if not given_id or (client_id is not None and given_id != client_id):
        raise _aad(400, "unauthorized_client", f"AADSTS700016: Application with "
                   f"identifier '{given_id}' was not found in the directory.")
    secret = form.get("client_secret", "")
    if "client_assertion" in form and assertion is not None:
        refused = assertion(form, given_id)
        if refused is not None:
            raise _aad(401, "invalid_client", refused)
    elif not secret or (client_secret is not None and secret != client_secret):
        raise _aad(401, "invalid_client", "AADSTS7000215: Invalid client secret provided.")
    scope = form.get("scope", "")
    if not scope.endswith("/.default"):
        raise _aad(400, "invalid_scope", f"AADSTS1002012: The provided value for scope "
                   f"{scope} is not valid. Client credential flows must have a scope "
                   f"value with /.default suffixed to the resource identifier.")
    return TokenRequest(given_id, scope)
