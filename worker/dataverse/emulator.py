"""An emulator of the Dataverse Web API for ``msdyn_ocprovisioningstates``, and of the
Microsoft identity platform's token endpoint: enough of both for the mirror and the import
to be tested over real HTTP (and for a demo without an organization).

It is part of the backend emulator: ``worker.emulator.Emulator`` hands it every request
whose path starts with ``/api/data/`` or ``/_dataverse/`` or contains ``/oauth2/``, so one
server (``python -m worker.emulator``) or one in-process httpx transport serves the three
backends and Dataverse. Point both PROVISIONING_DATAVERSE_URL and
PROVISIONING_DATAVERSE_AUTHORITY_URL at it.

    POST   /<tenant>/oauth2/v2.0/token                   client credentials -> bearer token
                                                         (secret or certificate assertion)
    GET    /metadata/identity/oauth2/token               managed identity (IMDS)
    GET    /api/data/v9.2/msdyn_ocprovisioningstates     $select, $top, Prefer:
                                                         odata.maxpagesize, @odata.nextLink
    POST   /api/data/v9.2/msdyn_ocprovisioningstates     create (201 with Prefer:
                                                         return=representation, else 204)
    GET    /api/data/v9.2/msdyn_ocprovisioningstates(<id>)   $select
    PATCH  /api/data/v9.2/msdyn_ocprovisioningstates(<id>)   If-Match (etag or *),
                                                             If-None-Match: *, else upsert
    DELETE /api/data/v9.2/msdyn_ocprovisioningstates(<id>)   If-Match optional

What it holds to, as Dataverse does: weak etags ``W/"<versionnumber>"`` from one counter
for the whole organization; 412 on a stale If-Match (and on a create of an id that exists);
statecode refused on create and statecode/statuscode pairs checked; lookups only through
``<navigation property>@odata.bind`` with the exact (case-sensitive) name and the parent's
entity set, cleared with null; empty text stored as null; choice values and text lengths
checked; FormattedValue annotations only when ``Prefer: odata.include-annotations`` asks.
Errors are ``{"error": {"code", "message"}}`` with Dataverse's codes. Every API request
needs a live bearer token (401 otherwise). Past ``request_budget`` requests in a window of
``window_seconds`` (per client), a 429 with ``Retry-After``; more than ``max_concurrent``
at once, a 429 too. The token endpoint checks tenant, client id, secret and that the scope
ends with ``/.default``, and answers tokens living ``token_seconds``.

Metadata and ``WhoAmI`` for ``dataverse check``: ``worker.dataverse.emulator_metadata``.

Admin API (not counted, no token): ``POST /_dataverse/metadata`` (plant a difference),
``GET /_dataverse/rows``, ``POST /_dataverse/rows``
(seed a list of read-form rows), ``POST /_dataverse/edit`` ``{"id", "changes"}`` (another
user's change), ``POST|DELETE /_dataverse/outage`` (``{"status": 503}``),
``POST /_dataverse/budget`` (``{"requests", "window_seconds"}``),
``POST /_dataverse/revoke-tokens``, ``GET /_dataverse/requests``, ``POST /_dataverse/reset``.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from statemachine import (
    ENTITY,
    ENTITY_SET,
    ERROR_MESSAGE_MAX,
    EXCEPTION_DETAILS_MAX,
    LOOKUPS,
    NAME_MAX,
    PRIMARY_KEY,
    PROVISIONING_RESPONSE_MAX,
    AutomatedCallingStatus,
    GateKeeperReason,
    GateKeeperStatus,
    StateCode,
    StatusReason,
    format_time,
    utf16_length,
)
from statemachine.table import FORMATTED
from worker.dataverse.emulator_identity import (
    IMDS_PATH,
    FederatedCredential,
    ImdsRefused,
    check_client_assertion,
    imds_request,
)
from worker.dataverse.emulator_metadata import EmulatedSchema

__all__ = ["DataverseEmulator", "DataverseReply", "Fault", "RecordedCall"]

API_PREFIX = "/api/data/v9.2/"
FIRST_ROWVERSION = 1_000_001
MAX_PAGE_SIZE = 5000  # Dataverse's largest page

TEXT_LIMITS = {"msdyn_name": NAME_MAX, "msdyn_exceptiondetails": EXCEPTION_DETAILS_MAX,
               "msdyn_errormessage": ERROR_MESSAGE_MAX,
               "msdyn_provisioningresponse": PROVISIONING_RESPONSE_MAX}
CHOICES: dict[str, type[Any]] = {
    "statuscode": StatusReason, "statecode": StateCode,
    "msdyn_gatekeeperstatus": GateKeeperStatus,
    "msdyn_gatekeeperstatusreason": GateKeeperReason,
    "msdyn_automatedcallingstatus": AutomatedCallingStatus,
}
NULLABLE_CHOICES = frozenset({"msdyn_gatekeeperstatus", "msdyn_gatekeeperstatusreason"})
BIND_BY_NAME = {lookup.bind_property: lookup for lookup in LOOKUPS}
READ_ONLY = frozenset({"createdon", "modifiedon", "versionnumber",
                       *(lookup.value_property for lookup in LOOKUPS)})
PROPERTIES: tuple[str, ...] = (
    PRIMARY_KEY, "msdyn_name", "statecode", "statuscode", "msdyn_gatekeeperstatus",
    "msdyn_gatekeeperstatusreason", "msdyn_automatedcallingstatus", "msdyn_exceptiondetails",
    "msdyn_errormessage", "msdyn_provisioningresponse",
    *(lookup.value_property for lookup in LOOKUPS), "createdon", "modifiedon",
    "versionnumber",
)
_ROW_PATH = re.compile(rf"^{re.escape(ENTITY_SET)}\((?P<id>[^)]*)\)$")
_BIND_VALUE = re.compile(r"^/?(?P<set>[A-Za-z0-9_]+)\((?P<id>[0-9a-fA-F-]{36})\)$")

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


@dataclass(frozen=True)
class DataverseReply:
    status: int
    content: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, status: int, body: object = None,
           headers: Iterable[tuple[str, str]] = ()) -> DataverseReply:
        extra = tuple(headers)
        if body is None:
            return cls(status, b"", extra)
        return cls(status, json.dumps(body).encode(),
                   (("Content-Type", "application/json; odata.metadata=minimal"), *extra))


@dataclass(frozen=True)
class Fault:
    """A scripted answer: ``status`` with the error shape, and optional headers."""

    status: int
    code: str = "0x80040216"
    message: str = "scripted fault"
    headers: tuple[tuple[str, str], ...] = ()
    method: str | None = None  # only a request with this method takes it (None: any)


@dataclass(frozen=True)
class RecordedCall:
    """One API request the emulator answered (token requests included)."""

    method: str
    path: str
    query: str
    status: int
    body: object
    if_match: str | None
    record_id: str | None
    at: float

    def as_json(self) -> dict[str, object]:
        return {"method": self.method, "path": self.path, "query": self.query,
                "status": self.status, "body": self.body, "if_match": self.if_match,
                "record_id": self.record_id, "at": self.at}


class _Failure(Exception):
    def __init__(self, reply: DataverseReply) -> None:
        super().__init__(reply.status)
        self.reply = reply


def _error(status: int, code: str, message: str,
           headers: Iterable[tuple[str, str]] = ()) -> _Failure:
    return _Failure(DataverseReply.of(status, {"error": {"code": code, "message": message}},
                                      headers))


@dataclass
class _Token:
    client_id: str
    scope: str
    expires_at: float


@dataclass
class _Window:
    started: float = 0.0
    count: int = 0


@dataclass
class _State:
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    rowversion: int = FIRST_ROWVERSION - 1
    tokens: dict[str, _Token] = field(default_factory=dict)
    windows: dict[str, _Window] = field(default_factory=dict)
    calls: list[RecordedCall] = field(default_factory=list)
    faults: deque[Fault] = field(default_factory=deque)
    outage: int | None = None
    tokens_issued: int = 0


class DataverseEmulator:
    """See the module docstring. Thread-safe (the HTTP server calls from many threads)."""

    def __init__(
        self,
        *,
        tenant_id: str | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
        token_seconds: float = 3599.0,
        request_budget: int | None = None,
        window_seconds: float = 300.0,
        max_concurrent: int = 52,
        latency_ms: float = 0.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        client_certificates: Sequence[bytes] = (),
        federated_credentials: Sequence[FederatedCredential] = (),
    ) -> None:
        self.client_certificates = tuple(client_certificates)  # PEM, for client assertions
        self.federated_credentials = tuple(federated_credentials)  # workload identity
        self.schema = EmulatedSchema()  # metadata and WhoAmI (emulator_metadata)
        self.tenant_id = tenant_id
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_seconds = token_seconds
        self.request_budget = request_budget
        self.window_seconds = window_seconds
        self.max_concurrent = max_concurrent
        self.latency_ms = latency_ms
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._inflight = 0
        self._state = _State()

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> DataverseEmulator:
        """Configured by EMULATOR_DATAVERSE_BUDGET, _WINDOW_SECONDS, _TOKEN_SECONDS,
        _LATENCY_MS, _TENANT_ID, _CLIENT_ID, _CLIENT_SECRET (all optional); ValueError names
        a variable whose value is wrong."""
        values: dict[str, Any] = {}
        for name, option, parse in (
            ("EMULATOR_DATAVERSE_BUDGET", "request_budget", int),
            ("EMULATOR_DATAVERSE_WINDOW_SECONDS", "window_seconds", float),
            ("EMULATOR_DATAVERSE_TOKEN_SECONDS", "token_seconds", float),
            ("EMULATOR_DATAVERSE_LATENCY_MS", "latency_ms", float),
            ("EMULATOR_DATAVERSE_TENANT_ID", "tenant_id", str),
            ("EMULATOR_DATAVERSE_CLIENT_ID", "client_id", str),
            ("EMULATOR_DATAVERSE_CLIENT_SECRET", "client_secret", str),
        ):
            raw = environ.get(name, "").strip()
            if raw:
                try:
                    values[option] = parse(raw)
                except ValueError as exc:
                    raise ValueError(f"{name}={raw!r} is not a number") from exc
        certificate = environ.get("EMULATOR_DATAVERSE_CLIENT_CERTIFICATE", "").strip()
        if certificate:
            with open(certificate, "rb") as file:
                values["client_certificates"] = (file.read(),)
        return cls(**values)

    @staticmethod
    def owns(path: str) -> bool:
        """True for the paths this emulator answers (the backend emulator delegates them)."""
        return (path.startswith(("/api/data/", "/_dataverse/")) or "/oauth2/" in path)

    # -- what tests and the admin API use ------------------------------------------------

    def rows(self) -> dict[str, dict[str, Any]]:
        """Every row in read form (with FormattedValue annotations), by id."""
        with self._lock:
            return {rid: self._read_form(row, annotations=True)
                    for rid, row in self._state.rows.items()}

    def row(self, record_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._state.rows.get(record_id.lower())
            return None if row is None else self._read_form(row, annotations=True)

    def seed(self, rows: Iterable[Mapping[str, Any]]) -> list[str]:
        """Add rows an organization already has (read form: ``_<lookup>_value`` for
        lookups); each gets a fresh versionnumber. Returns their etags."""
        etags = []
        with self._lock:
            for given in rows:
                record_id = str(uuid.UUID(str(given[PRIMARY_KEY])))
                now = format_time(datetime.fromtimestamp(self._clock(), UTC))
                row: dict[str, Any] = {PRIMARY_KEY: record_id, "createdon": now,
                                       "modifiedon": now, **self._defaults()}
                for name in PROPERTIES:
                    if name in given and name not in (PRIMARY_KEY, "versionnumber"):
                        row[name] = given[name] if given[name] != "" else None
                row["versionnumber"] = self._next_version()
                self._state.rows[record_id] = row
                etags.append(_etag(row))
        return etags

    def edit(self, record_id: str, changes: Mapping[str, Any]) -> str:
        """Another user's change (read-form names), bumping the row's version; its etag."""
        with self._lock:
            row = self._state.rows[record_id.lower()]
            for name, value in changes.items():
                if name not in PROPERTIES or name in (PRIMARY_KEY, "versionnumber"):
                    raise KeyError(name)
                row[name] = value if value != "" else None
            self._touch(row)
            return _etag(row)

    def remove(self, record_id: str) -> None:
        """Another user's delete."""
        with self._lock:
            self._state.rows.pop(record_id.lower(), None)

    def start_outage(self, status: int = 503) -> None:
        """Every API request answers ``status`` (the token endpoint keeps working)."""
        with self._lock:
            self._state.outage = status

    def end_outage(self) -> None:
        with self._lock:
            self._state.outage = None

    def set_budget(self, requests: int | None, window_seconds: float | None = None) -> None:
        """Requests per client per window before 429s (None: unlimited); a new window."""
        with self._lock:
            self.request_budget = requests
            if window_seconds is not None:
                self.window_seconds = window_seconds
            self._state.windows.clear()

    def fail_next(self, *faults: Fault) -> None:
        """The next API requests (after the token check) get these answers, in order."""
        with self._lock:
            self._state.faults.extend(faults)

    def revoke_tokens(self) -> None:
        """Every token issued so far becomes invalid (401), as after a key rollover."""
        with self._lock:
            self._state.tokens.clear()

    @property
    def tokens_issued(self) -> int:
        with self._lock:
            return self._state.tokens_issued

    @property
    def calls(self) -> tuple[RecordedCall, ...]:
        with self._lock:
            return tuple(self._state.calls)

    def reset(self) -> None:
        with self._lock:
            self._state = _State()
            self.schema.reset()

    # -- serving -----------------------------------------------------------------------

    def handle(self, method: str, raw_path: str, body: bytes,
               headers: Mapping[str, str]) -> DataverseReply:
        """Answer one HTTP request (``raw_path``: path and query)."""
        url = urlsplit(raw_path)
        lowered = {k.lower(): v for k, v in headers.items()}
        if url.path.startswith("/_dataverse/"):
            return self._admin(method, url.path[len("/_dataverse/"):], body)
        if url.path == IMDS_PATH:
            reply = self._managed_identity(method, url.query, lowered)
            self._record(method, url.path, url.query, reply.status, None, None, None)
            return reply
        if "/oauth2/" in url.path:
            reply = self._token_endpoint(method, url.path, body)
            self._record(method, url.path, "", reply.status, None, None, None)
            return reply
        with self._lock:
            self._inflight += 1
            inflight = self._inflight
        try:
            if self.latency_ms:
                self._sleep(self.latency_ms / 1000)
            try:
                reply = self._api(method, url.path, url.query, body, lowered, inflight)
            except _Failure as failure:
                reply = failure.reply
        finally:
            with self._lock:
                self._inflight -= 1
        match = _ROW_PATH.match(url.path[len(API_PREFIX):]) if \
            url.path.startswith(API_PREFIX) else None
        self._record(method, url.path, url.query, reply.status, _loads(body),
                     lowered.get("if-match"), match.group("id").lower() if match else None)
        return reply

    def _record(self, method: str, path: str, query: str, status: int, body: object,
                if_match: str | None, record_id: str | None) -> None:
        with self._lock:
            self._state.calls.append(RecordedCall(method, path, unquote(query), status, body,
                                                  if_match, record_id, self._clock()))

    # -- the token endpoint ------------------------------------------------------------

    def _token_endpoint(self, method: str, path: str, body: bytes) -> DataverseReply:
        parts = path.strip("/").split("/")
        if method != "POST" or len(parts) != 4 or parts[1:] != ["oauth2", "v2.0", "token"]:
            return _aad(404, "invalid_request", "AADSTS900561: The endpoint only accepts "
                                                "POST requests to /<tenant>/oauth2/v2.0/token.")
        tenant = parts[0]
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        if self.tenant_id is not None and tenant != self.tenant_id:
            return _aad(400, "invalid_request", f"AADSTS90002: Tenant '{tenant}' not found.")
        if form.get("grant_type") != "client_credentials":
            return _aad(400, "unsupported_grant_type",
                        "AADSTS70003: The app requested an unsupported grant type.")
        client_id = form.get("client_id", "")
        if not client_id or (self.client_id is not None and client_id != self.client_id):
            return _aad(400, "unauthorized_client", f"AADSTS700016: Application with "
                        f"identifier '{client_id}' was not found in the directory.")
        secret = form.get("client_secret", "")
        if "client_assertion" in form:
            refused = check_client_assertion(
                form, client_id=client_id, token_path=path, certificates=self.client_certificates,
                strict=self.client_secret is not None, now=self._clock(),
                federated=self.federated_credentials)
            if refused is not None:
                return _aad(401, "invalid_client", refused)
        elif not secret or (self.client_secret is not None and secret != self.client_secret):
            return _aad(401, "invalid_client", "AADSTS7000215: Invalid client secret "
                                               "provided.")
        scope = form.get("scope", "")
        if not scope.endswith("/.default"):
            return _aad(400, "invalid_scope", f"AADSTS1002012: The provided value for scope "
                        f"{scope} is not valid. Client credential flows must have a scope "
                        f"value with /.default suffixed to the resource identifier.")
        value = self._issue(client_id, scope)
        lifetime = int(self.token_seconds)
        return DataverseReply.of(200, {"token_type": "Bearer", "expires_in": lifetime,
                                       "ext_expires_in": lifetime, "access_token": value})

    def _issue(self, client_id: str, scope: str) -> str:
        value = "emu." + uuid.uuid4().hex
        with self._lock:
            self._state.tokens[value] = _Token(client_id, scope,
                                               self._clock() + self.token_seconds)
            self._state.tokens_issued += 1
        return value

    def _managed_identity(self, method: str, query: str,
                          headers: Mapping[str, str]) -> DataverseReply:
        """IMDS: a token for the VM's (or pod's) managed identity (emulator_identity)."""
        try:
            client_id, scope = imds_request(method, query, headers)
        except ImdsRefused as refused:
            return DataverseReply.of(refused.status, refused.body)
        value = self._issue(client_id, scope)
        lifetime = int(self.token_seconds)
        return DataverseReply.of(200, {
            "access_token": value, "client_id": client_id, "expires_in": str(lifetime),
            "expires_on": str(int(self._clock()) + lifetime), "ext_expires_in": str(lifetime),
            "not_before": str(int(self._clock())), "resource": scope[:-len("/.default")],
            "token_type": "Bearer"})

    # -- the Web API -------------------------------------------------------------------

    def _api(self, method: str, path: str, query: str, body: bytes,
             headers: Mapping[str, str], inflight: int) -> DataverseReply:
        client = self._authorize(headers)
        with self._lock:
            self._throttle(client, inflight)
            if self._state.outage is not None:
                raise _error(self._state.outage, "0x80040216",
                             "The service is temporarily unavailable (emulated outage).")
            if self._state.faults and self._state.faults[0].method in (None, method):
                fault = self._state.faults.popleft()
                raise _error(fault.status, fault.code, fault.message, fault.headers)
            if not path.startswith(API_PREFIX):
                raise _error(404, SEGMENT_NOT_FOUND, f"Resource not found for the segment "
                                                     f"'{path}'.")
            segment = unquote(path[len(API_PREFIX):])
            params = {k: v[0] for k, v in parse_qs(query).items()}
            answered = self.schema.answer(method, segment, client, params)
            if answered is not None:
                return DataverseReply.of(*answered)
            if segment == ENTITY_SET:
                if method == "GET":
                    return self._list(path, params, headers)
                if method == "POST":
                    return self._create(None, _json(body), params, headers)
                raise _error(405, ODATA, f"{method} is not allowed on the entity set.")
            match = _ROW_PATH.match(segment)
            if match is None:
                raise _error(404, SEGMENT_NOT_FOUND,
                             f"Resource not found for the segment '{segment}'.")
            record_id = _uuid(match.group("id"))
            if method == "GET":
                row = self._existing(record_id)
                return DataverseReply.of(200, self._select(row, params, headers))
            if method == "PATCH":
                return self._patch(record_id, _json(body), params, headers)
            if method == "DELETE":
                row = self._existing(record_id)
                self._check_if_match(row, headers)
                del self._state.rows[record_id]
                return DataverseReply.of(204)
            raise _error(405, ODATA, f"{method} is not allowed on a row.")

    def _authorize(self, headers: Mapping[str, str]) -> str:
        value = headers.get("authorization", "")
        token = value[len("Bearer "):] if value.startswith("Bearer ") else ""
        with self._lock:
            found = self._state.tokens.get(token)
            if found is not None and found.expires_at <= self._clock():
                del self._state.tokens[token]
                found = None
        if found is None:
            why = "expired or unknown" if token else "missing"
            raise _Failure(DataverseReply.of(401, None, (
                ("WWW-Authenticate", f'Bearer error="invalid_token", '
                                     f'error_description="the access token is {why}"'),)))
        return found.client_id

    def _throttle(self, client: str, inflight: int) -> None:
        """Service protection, per client: requests per window, and concurrency."""
        if inflight > self.max_concurrent:
            raise _error(429, CONCURRENCY_LIMIT, f"Number of concurrent requests exceeded "
                         f"the limit of {self.max_concurrent}.", (("Retry-After", "1"),))
        if self.request_budget is None:
            return
        now = self._clock()
        window = self._state.windows.setdefault(client, _Window(now, 0))
        if now - window.started >= self.window_seconds:
            window.started, window.count = now, 0
        window.count += 1
        if window.count > self.request_budget:
            wait = max(1, math.ceil(window.started + self.window_seconds - now))
            raise _error(429, REQUESTS_LIMIT, f"Number of requests exceeded the limit of "
                         f"{self.request_budget} over time window of "
                         f"{self.window_seconds:g} seconds.", (("Retry-After", str(wait)),))

    def _list(self, path: str, params: Mapping[str, str],
              headers: Mapping[str, str]) -> DataverseReply:
        unsupported = sorted(set(params) - {"$select", "$top", "$skiptoken"})
        if unsupported:
            raise _error(400, ODATA, f"The emulator does not support {', '.join(unsupported)}.")
        size = MAX_PAGE_SIZE
        match = re.search(r"odata\.maxpagesize=(\d+)", headers.get("prefer", ""))
        if match:
            size = max(1, min(MAX_PAGE_SIZE, int(match.group(1))))
        rows = sorted(self._state.rows.values(), key=lambda r: (r["createdon"],
                                                                r[PRIMARY_KEY]))
        if "$top" in params:
            rows = rows[:_int(params["$top"], "$top")]
        start = _int(params.get("$skiptoken", "0"), "$skiptoken")
        page = rows[start:start + size]
        body: dict[str, Any] = {
            "@odata.context": f"$metadata#{ENTITY_SET}",
            "value": [self._select(row, params, headers) for row in page],
        }
        extra: list[tuple[str, str]] = []
        if match:
            extra.append(("Preference-Applied", f"odata.maxpagesize={size}"))
        if start + size < len(rows):
            query = {k: v for k, v in params.items() if k != "$skiptoken"}
            query["$skiptoken"] = str(start + size)
            host = headers.get("host", "localhost")
            body["@odata.nextLink"] = f"http://{host}{path}?{urlencode(query)}"
        return DataverseReply.of(200, body, extra)

    def _create(self, record_id: str | None, payload: dict[str, Any],
                params: Mapping[str, str], headers: Mapping[str, str]) -> DataverseReply:
        if "statecode" in payload:
            raise _error(400, INVALID_ARGUMENT, "statecode cannot be set on create: create "
                         "the row, then PATCH statecode and statuscode together.")
        given = payload.get(PRIMARY_KEY)
        if given is not None:
            given = _uuid(str(given))
            if record_id is not None and given != record_id:
                raise _error(400, INVALID_ARGUMENT, "the id in the body is not the id in the "
                                                    "URL")
        record_id = record_id or given or str(uuid.uuid4())
        if record_id in self._state.rows:
            raise _error(412, DUPLICATE_KEY, "Cannot insert duplicate key.")
        now = format_time(datetime.fromtimestamp(self._clock(), UTC))
        row: dict[str, Any] = {PRIMARY_KEY: record_id, "createdon": now, "modifiedon": now,
                               **self._defaults()}
        self._apply(row, {k: v for k, v in payload.items() if k != PRIMARY_KEY})
        status = StatusReason(row["statuscode"])
        if status.statecode is not StateCode.ACTIVE:
            raise _error(400, INVALID_ARGUMENT, f"statuscode {int(status)} is not valid for "
                         "statecode 0 (Active), the state of a new row.")
        row["versionnumber"] = self._next_version()
        self._state.rows[record_id] = row
        return self._written(row, 201, params, headers)

    def _patch(self, record_id: str, payload: dict[str, Any], params: Mapping[str, str],
               headers: Mapping[str, str]) -> DataverseReply:
        row = self._state.rows.get(record_id)
        if row is None:
            if headers.get("if-match"):
                raise _not_found(record_id)
            return self._create(record_id, payload, params, headers)  # upsert
        if headers.get("if-none-match") == "*":
            raise _error(412, DUPLICATE_KEY, "A record with matching key values already "
                                             "exists.")
        self._check_if_match(row, headers)
        if PRIMARY_KEY in payload and _uuid(str(payload[PRIMARY_KEY])) != record_id:
            raise _error(400, INVALID_ARGUMENT, "the id in the body is not the id in the URL")
        changed = dict(row)
        self._apply(changed, {k: v for k, v in payload.items() if k != PRIMARY_KEY})
        if ("statecode" in payload) != ("statuscode" in payload) and \
                StatusReason(changed["statuscode"]).statecode != StateCode(changed["statecode"]):
            raise _error(400, INVALID_ARGUMENT, "statecode and statuscode must be written "
                                                "together.")
        if StatusReason(changed["statuscode"]).statecode != StateCode(changed["statecode"]):
            raise _error(400, INVALID_ARGUMENT, f"statuscode {changed['statuscode']} is not "
                         f"valid for statecode {changed['statecode']}.")
        row.clear()
        row.update(changed)
        self._touch(row)
        return self._written(row, 200, params, headers)

    def _written(self, row: dict[str, Any], status: int, params: Mapping[str, str],
                 headers: Mapping[str, str]) -> DataverseReply:
        location = (("OData-EntityId", f"{API_PREFIX}{ENTITY_SET}({row[PRIMARY_KEY]})"),
                    ("ETag", _etag(row)))
        if "return=representation" in headers.get("prefer", ""):
            return DataverseReply.of(status, self._select(row, params, headers), location)
        return DataverseReply.of(204, None, location)

    def _apply(self, row: dict[str, Any], payload: Mapping[str, Any]) -> None:
        """Check and apply a write-form body to ``row`` (400 on anything Dataverse refuses)."""
        for name, value in payload.items():
            if name.startswith("@odata."):
                continue
            if name.endswith("@odata.bind"):
                lookup = BIND_BY_NAME.get(name)
                if lookup is None:
                    raise _error(400, ODATA, f"An undeclared property "
                                 f"'{name.split('@')[0]}' which only has property annotations "
                                 "in the payload but no property value was found in the "
                                 "payload. In OData, only declared navigation properties and "
                                 "declared named streams can be represented as properties "
                                 "without values.")
                if value is None:
                    row[lookup.value_property] = None
                    continue
                match = _BIND_VALUE.match(str(value))
                if match is None or match.group("set") != lookup.parent_entity_set:
                    raise _error(400, ODATA, f"The value of {name} must be "
                                 f"/{lookup.parent_entity_set}(<id>), not {value!r}.")
                row[lookup.value_property] = match.group("id").lower()
                continue
            if name in READ_ONLY or name not in PROPERTIES or name == PRIMARY_KEY:
                raise _error(400, ODATA, f"The property '{name}' does not exist on type "
                             f"'Microsoft.Dynamics.CRM.{ENTITY}'. Make sure to only use "
                             "property names that are defined by the type.")
            if name in CHOICES:
                row[name] = _choice(name, value)
            elif name in TEXT_LIMITS:
                if value is not None and not isinstance(value, str):
                    raise _error(400, ODATA, f"Cannot convert the literal '{value}' to the "
                                             f"expected type 'Edm.String' ({name}).")
                if value is not None and utf16_length(value) > TEXT_LIMITS[name]:
                    raise _error(400, TOO_LONG, f"A validation error occurred. The length of "
                                 f"the '{name}' attribute of the '{ENTITY}' entity exceeded "
                                 f"the maximum allowed length of '{TEXT_LIMITS[name]}'.")
                row[name] = value or None  # Dataverse stores an empty string as null

    def _check_if_match(self, row: dict[str, Any], headers: Mapping[str, str]) -> None:
        expected = headers.get("if-match")
        if expected and expected != "*" and expected != _etag(row):
            raise _error(412, VERSION_MISMATCH, "The version of the existing record doesn't "
                                                "match the RowVersion property provided.")

    def _existing(self, record_id: str) -> dict[str, Any]:
        row = self._state.rows.get(record_id)
        if row is None:
            raise _not_found(record_id)
        return row

    def _select(self, row: dict[str, Any], params: Mapping[str, str],
                headers: Mapping[str, str]) -> dict[str, Any]:
        prefer = headers.get("prefer", "")
        annotations = "odata.include-annotations" in prefer and (
            "FormattedValue" in prefer or '"*"' in prefer)
        full = self._read_form(row, annotations=annotations)
        if "$select" not in params:
            return full
        wanted = [name.strip() for name in params["$select"].split(",") if name.strip()]
        for name in wanted:
            if name not in PROPERTIES:
                raise _error(400, ODATA, f"Could not find a property named '{name}' on type "
                             f"'Microsoft.Dynamics.CRM.{ENTITY}'.")
        keep = {"@odata.etag", PRIMARY_KEY, *wanted}
        return {k: v for k, v in full.items() if k.split("@")[0] in keep or k in keep}

    def _read_form(self, row: dict[str, Any], *, annotations: bool) -> dict[str, Any]:
        form: dict[str, Any] = {"@odata.etag": _etag(row)}
        for name in PROPERTIES:
            form[name] = row.get(name)
            if annotations and name in CHOICES and row.get(name) is not None:
                form[f"{name}{FORMATTED}"] = CHOICES[name](row[name]).label
        return form

    def _defaults(self) -> dict[str, Any]:
        # New rows: Active, Draft (this emulator's default status), calling test NotTested.
        return {"statecode": 0, "statuscode": int(StatusReason.DRAFT),
                "msdyn_gatekeeperstatus": None, "msdyn_gatekeeperstatusreason": None,
                "msdyn_automatedcallingstatus": 0, "msdyn_exceptiondetails": None,
                "msdyn_errormessage": None, "msdyn_provisioningresponse": None,
                **{lookup.value_property: None for lookup in LOOKUPS}}

    def _next_version(self) -> int:
        self._state.rowversion += 1
        return self._state.rowversion

    def _touch(self, row: dict[str, Any]) -> None:
        row["versionnumber"] = self._next_version()
        row["modifiedon"] = format_time(datetime.fromtimestamp(self._clock(), UTC))

    # -- admin API -----------------------------------------------------------------------

    def _admin(self, method: str, action: str, body: bytes) -> DataverseReply:
        try:
            payload = _loads(body)
            match (method, action):
                case ("GET", "rows"):
                    return DataverseReply.of(200, list(self.rows().values()))
                case ("POST", "rows"):
                    if not isinstance(payload, list):
                        raise ValueError("body must be a list of rows")
                    return DataverseReply.of(200, {"etags": self.seed(payload)})
                case ("POST", "edit"):
                    if not isinstance(payload, dict) or not isinstance(payload.get("changes"),
                                                                       dict):
                        raise ValueError('body must be {"id", "changes"}')
                    return DataverseReply.of(200, {"etag": self.edit(str(payload.get("id")),
                                                                     payload["changes"])})
                case ("POST", "outage"):
                    status = payload.get("status", 503) if isinstance(payload, dict) else 503
                    self.start_outage(int(status))
                    return DataverseReply.of(200, {"ok": True})
                case ("DELETE", "outage"):
                    self.end_outage()
                    return DataverseReply.of(200, {"ok": True})
                case ("POST", "budget"):
                    if not isinstance(payload, dict):
                        raise ValueError('body must be {"requests", "window_seconds"}')
                    requests = payload.get("requests")
                    self.set_budget(None if requests is None else int(requests),
                                    payload.get("window_seconds"))
                    return DataverseReply.of(200, {"ok": True})
                case ("POST", "metadata"):
                    if not isinstance(payload, dict):
                        raise ValueError('body must be {"column", <change>}')
                    with self._lock:
                        self.schema.plant(payload)
                    return DataverseReply.of(200, {"ok": True})
                case ("POST", "revoke-tokens"):
                    self.revoke_tokens()
                    return DataverseReply.of(200, {"ok": True})
                case ("GET", "requests"):
                    return DataverseReply.of(200, [c.as_json() for c in self.calls])
                case ("POST", "reset"):
                    self.reset()
                    return DataverseReply.of(200, {"ok": True})
        except (ValueError, KeyError, TypeError) as exc:
            return DataverseReply.of(400, {"error": {"code": "admin", "message": str(exc)}})
        return DataverseReply.of(404, {"error": {"code": "admin", "message":
                                                 f"no admin endpoint {method} {action}"}})


def _aad(status: int, error: str, description: str) -> DataverseReply:
    number = description[len("AADSTS"):].partition(":")[0]
    return DataverseReply.of(status, {"error": error, "error_description": description,
                                      "error_codes": [int(number)] if number.isdigit() else []})


def _etag(row: Mapping[str, Any]) -> str:
    return f'W/"{row["versionnumber"]}"'


def _not_found(record_id: str) -> _Failure:
    return _error(404, NOT_FOUND, f"{ENTITY} With Id = {record_id} Does Not Exist")


def _uuid(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise _error(400, ODATA, f"Bad Request - Error in query syntax: {text!r} is not a "
                                 "GUID.") from None


def _int(text: str, name: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise _error(400, ODATA, f"{name} must be a whole number") from None
    if value < 0:
        raise _error(400, ODATA, f"{name} must not be negative")
    return value


def _choice(name: str, value: object) -> int | None:
    if value is None and name in NULLABLE_CHOICES:
        return None
    try:
        return int(CHOICES[name](value))
    except (ValueError, TypeError):
        raise _error(400, BAD_OPTION, f"{value!r} is not a valid value for the {name} "
                                      "option set.") from None


def _json(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _error(400, ODATA, "The request body is not valid JSON.") from None
    if not isinstance(payload, dict):
        raise _error(400, ODATA, "The request body must be a JSON object.")
    return payload


def _loads(body: bytes) -> object:
    try:
        return json.loads(body) if body else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
