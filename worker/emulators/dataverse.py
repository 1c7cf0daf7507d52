"""An emulator of the Dataverse Web API for ``msdyn_ocprovisioningstates``, and of the
Microsoft identity platform's token endpoint: enough of both for the mirror and the import
to be tested over real HTTP (and for a demo without an organization).

It is part of the backend emulator: ``worker.emulators.Emulator`` hands it every request
whose path starts with ``/api/data/`` or ``/_dataverse/`` or contains ``/oauth2/``, so one
server (``python -m worker.emulators``) or one in-process httpx transport serves the three
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

Metadata and ``WhoAmI`` for ``dataverse check``: ``dataverse_metadata``; certificate
assertions, workload identity and IMDS: ``dataverse_identity``.

The rules live in sibling modules: ``dataverse_rows`` (a row: its columns, the checks of a
write, its read form), ``dataverse_wire`` (error codes and replies, request parsing, the
token request), ``dataverse_state`` (what the organization holds) and ``dataverse_admin``
(the admin API under ``/_dataverse/``: seed rows, another user's edit, outages, budgets,
token revocation, recorded requests, reset).
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

from statemachine import ENTITY_SET, PRIMARY_KEY, format_time
from worker.emulators.dataverse_admin import admin
from worker.emulators.dataverse_config import options_from_env
from worker.emulators.dataverse_identity import (
    IMDS_PATH,
    FederatedCredential,
    ImdsRefused,
    check_client_assertion,
    imds_request,
    imds_token,
)
from worker.emulators.dataverse_metadata import EmulatedSchema
from worker.emulators.dataverse_rows import (
    PROPERTIES,
    apply_write,
    check_if_match,
    check_state,
    defaults,
    etag,
    read_form,
    select,
)
from worker.emulators.dataverse_state import (
    Fault,
    OrganizationState,
    RecordedCall,
    Token,
    Window,
)
from worker.emulators.dataverse_wire import (
    API_PREFIX,
    CONCURRENCY_LIMIT,
    DUPLICATE_KEY,
    INVALID_ARGUMENT,
    MAX_PAGE_SIZE,
    ODATA,
    REQUESTS_LIMIT,
    ROW_PATH,
    SEGMENT_NOT_FOUND,
    UNAVAILABLE,
    Failure,
    error,
    json_body,
    loads,
    not_found,
    page_size,
    parse_int,
    parse_uuid,
    reply,
    token_request,
)
from worker.emulators.serving import Reply

__all__ = ["DataverseEmulator", "Fault", "RecordedCall"]


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
        self.schema = EmulatedSchema()  # metadata and WhoAmI (dataverse_metadata)
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
        self._state = OrganizationState()

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> DataverseEmulator:
        """Configured by EMULATOR_DATAVERSE_* (``dataverse_config``)."""
        return cls(**options_from_env(environ))

    @staticmethod
    def owns(path: str) -> bool:
        """True for the paths this emulator answers (the backend emulator delegates them)."""
        return (path.startswith(("/api/data/", "/_dataverse/")) or "/oauth2/" in path)

    # -- what tests and the admin API use ------------------------------------------------

    def rows(self) -> dict[str, dict[str, Any]]:
        """Every row in read form (with FormattedValue annotations), by id."""
        with self._lock:
            return {rid: read_form(row, annotations=True)
                    for rid, row in self._state.rows.items()}

    def row(self, record_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._state.rows.get(record_id.lower())
            return None if row is None else read_form(row, annotations=True)

    def seed(self, rows: Iterable[Mapping[str, Any]]) -> list[str]:
        """Add rows an organization already has (read form: ``_<lookup>_value`` for
        lookups); each gets a fresh versionnumber. Returns their etags."""
        etags = []
        with self._lock:
            for given in rows:
                record_id = str(uuid.UUID(str(given[PRIMARY_KEY])))
                now = format_time(datetime.fromtimestamp(self._clock(), UTC))
                row: dict[str, Any] = {PRIMARY_KEY: record_id, "createdon": now,
                                       "modifiedon": now, **defaults()}
                for name in PROPERTIES:
                    if name in given and name not in (PRIMARY_KEY, "versionnumber"):
                        row[name] = given[name] if given[name] != "" else None
                row["versionnumber"] = self._next_version()
                self._state.rows[record_id] = row
                etags.append(etag(row))
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
            return etag(row)

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
            self._state = OrganizationState()
            self.schema.reset()

    def plant(self, change: Mapping[str, Any]) -> None:
        """Make the metadata differ from the table in code (``dataverse_metadata``)."""
        with self._lock:
            self.schema.plant(change)

    # -- serving -----------------------------------------------------------------------

    def handle(self, method: str, raw_path: str, body: bytes,
               headers: Mapping[str, str]) -> Reply:
        """Answer one HTTP request (``raw_path``: path and query)."""
        url = urlsplit(raw_path)
        lowered = {k.lower(): v for k, v in headers.items()}
        if url.path.startswith("/_dataverse/"):
            return admin(self, method, url.path[len("/_dataverse/"):], body)
        if url.path == IMDS_PATH:
            answer = self._managed_identity(method, url.query, lowered)
            self._record(method, url.path, url.query, answer.status, None, None, None)
            return answer
        if "/oauth2/" in url.path:
            answer = self._token_endpoint(method, url.path, body)
            self._record(method, url.path, "", answer.status, None, None, None)
            return answer
        with self._lock:
            self._inflight += 1
            inflight = self._inflight
        try:
            if self.latency_ms:
                self._sleep(self.latency_ms / 1000)
            try:
                answer = self._api(method, url.path, url.query, body, lowered, inflight)
            except Failure as failure:
                answer = failure.reply
        finally:
            with self._lock:
                self._inflight -= 1
        match = ROW_PATH.match(url.path[len(API_PREFIX):]) if \
            url.path.startswith(API_PREFIX) else None
        self._record(method, url.path, url.query, answer.status, loads(body),
                     lowered.get("if-match"), match.group("id").lower() if match else None)
        return answer

    def _record(self, method: str, path: str, query: str, status: int, body: object,
                if_match: str | None, record_id: str | None) -> None:
        with self._lock:
            self._state.calls.append(RecordedCall(method, path, unquote(query), status, body,
                                                  if_match, record_id, self._clock()))

    # -- the token endpoint ------------------------------------------------------------

    def _token_endpoint(self, method: str, path: str, body: bytes) -> Reply:
        try:
            request = token_request(
                method, path, body, tenant_id=self.tenant_id, client_id=self.client_id,
                client_secret=self.client_secret,
                assertion=lambda form, client_id: check_client_assertion(
                    form, client_id=client_id, token_path=path,
                    certificates=self.client_certificates,
                    strict=self.client_secret is not None, now=self._clock(),
                    federated=self.federated_credentials))
        except Failure as failure:
            return failure.reply
        value = self._issue(request.client_id, request.scope)
        lifetime = int(self.token_seconds)
        return reply(200, {"token_type": "Bearer", "expires_in": lifetime,
                           "ext_expires_in": lifetime, "access_token": value})

    def _issue(self, client_id: str, scope: str) -> str:
        value = "emu." + uuid.uuid4().hex
        with self._lock:
            self._state.tokens[value] = Token(client_id, scope,
                                              self._clock() + self.token_seconds)
            self._state.tokens_issued += 1
        return value

    def _managed_identity(self, method: str, query: str,
                          headers: Mapping[str, str]) -> Reply:
        """IMDS: a token for the VM's (or pod's) managed identity (dataverse_identity)."""
        try:
            client_id, scope = imds_request(method, query, headers)
        except ImdsRefused as refused:
            return reply(refused.status, refused.body)
        token = self._issue(client_id, scope)
        return reply(200, imds_token(token, client_id, scope, int(self.token_seconds),
                                     int(self._clock())))

    # -- the Web API -------------------------------------------------------------------

    def _api(self, method: str, path: str, query: str, body: bytes,
             headers: Mapping[str, str], inflight: int) -> Reply:
        client = self._authorize(headers)
        with self._lock:
            self._throttle(client, inflight)
            if self._state.outage is not None:
                raise error(self._state.outage, UNAVAILABLE,
                            "The service is temporarily unavailable (emulated outage).")
            if self._state.faults and self._state.faults[0].method in (None, method):
                fault = self._state.faults.popleft()
                raise error(fault.status, fault.code, fault.message, fault.headers)
            if not path.startswith(API_PREFIX):
                raise error(404, SEGMENT_NOT_FOUND, f"Resource not found for the segment "
                                                    f"'{path}'.")
            segment = unquote(path[len(API_PREFIX):])
            params = {k: v[0] for k, v in parse_qs(query).items()}
            answered = self.schema.answer(method, segment, client, params)
            if answered is not None:
                return reply(*answered)
            if segment == ENTITY_SET:
                if method == "GET":
                    return self._list(path, params, headers)
                if method == "POST":
                    return self._create(None, json_body(body), params, headers)
                raise error(405, ODATA, f"{method} is not allowed on the entity set.")
            match = ROW_PATH.match(segment)
            if match is None:
                raise error(404, SEGMENT_NOT_FOUND,
                            f"Resource not found for the segment '{segment}'.")
            record_id = parse_uuid(match.group("id"))
            if method == "GET":
                row = self._existing(record_id)
                return reply(200, select(row, params, headers))
            if method == "PATCH":
                return self._patch(record_id, json_body(body), params, headers)
            if method == "DELETE":
                row = self._existing(record_id)
                check_if_match(row, headers)
                del self._state.rows[record_id]
                return reply(204)
            raise error(405, ODATA, f"{method} is not allowed on a row.")

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
            raise Failure(reply(401, None, (
                ("WWW-Authenticate", f'Bearer error="invalid_token", '
                                     f'error_description="the access token is {why}"'),)))
        return found.client_id

    def _throttle(self, client: str, inflight: int) -> None:
        """Service protection, per client: requests per window, and concurrency."""
        if inflight > self.max_concurrent:
            raise error(429, CONCURRENCY_LIMIT, f"Number of concurrent requests exceeded "
                        f"the limit of {self.max_concurrent}.", (("Retry-After", "1"),))
        if self.request_budget is None:
            return
        now = self._clock()
        window = self._state.windows.setdefault(client, Window(now, 0))
        if now - window.started >= self.window_seconds:
            window.started, window.count = now, 0
        window.count += 1
        if window.count > self.request_budget:
            wait = max(1, math.ceil(window.started + self.window_seconds - now))
            raise error(429, REQUESTS_LIMIT, f"Number of requests exceeded the limit of "
                        f"{self.request_budget} over time window of "
                        f"{self.window_seconds:g} seconds.", (("Retry-After", str(wait)),))

    def _list(self, path: str, params: Mapping[str, str],
              headers: Mapping[str, str]) -> Reply:
        unsupported = sorted(set(params) - {"$select", "$top", "$skiptoken"})
        if unsupported:
            raise error(400, ODATA, f"The emulator does not support {', '.join(unsupported)}.")
        asked = page_size(headers.get("prefer", ""))
        size = MAX_PAGE_SIZE if asked is None else asked
        rows = sorted(self._state.rows.values(), key=lambda r: (r["createdon"],
                                                                r[PRIMARY_KEY]))
        if "$top" in params:
            rows = rows[:parse_int(params["$top"], "$top")]
        start = parse_int(params.get("$skiptoken", "0"), "$skiptoken")
        page = rows[start:start + size]
        body: dict[str, Any] = {
            "@odata.context": f"$metadata#{ENTITY_SET}",
            "value": [select(row, params, headers) for row in page],
        }
        extra: list[tuple[str, str]] = []
        if asked is not None:
            extra.append(("Preference-Applied", f"odata.maxpagesize={size}"))
        if start + size < len(rows):
            query = {k: v for k, v in params.items() if k != "$skiptoken"}
            query["$skiptoken"] = str(start + size)
            host = headers.get("host", "localhost")
            body["@odata.nextLink"] = f"http://{host}{path}?{urlencode(query)}"
        return reply(200, body, extra)

    def _create(self, record_id: str | None, payload: dict[str, Any],
                params: Mapping[str, str], headers: Mapping[str, str]) -> Reply:
        if "statecode" in payload:
            raise error(400, INVALID_ARGUMENT, "statecode cannot be set on create: create "
                        "the row, then PATCH statecode and statuscode together.")
        given = payload.get(PRIMARY_KEY)
        if given is not None:
            given = parse_uuid(str(given))
            if record_id is not None and given != record_id:
                raise error(400, INVALID_ARGUMENT, "the id in the body is not the id in the "
                                                   "URL")
        record_id = record_id or given or str(uuid.uuid4())
        if record_id in self._state.rows:
            raise error(412, DUPLICATE_KEY, "Cannot insert duplicate key.")
        now = format_time(datetime.fromtimestamp(self._clock(), UTC))
        row: dict[str, Any] = {PRIMARY_KEY: record_id, "createdon": now, "modifiedon": now,
                               **defaults()}
        apply_write(row, {k: v for k, v in payload.items() if k != PRIMARY_KEY})
        check_state(row)
        row["versionnumber"] = self._next_version()
        self._state.rows[record_id] = row
        return self._written(row, 201, params, headers)

    def _patch(self, record_id: str, payload: dict[str, Any], params: Mapping[str, str],
               headers: Mapping[str, str]) -> Reply:
        row = self._state.rows.get(record_id)
        if row is None:
            if headers.get("if-match"):
                raise not_found(record_id)
            return self._create(record_id, payload, params, headers)  # upsert
        if headers.get("if-none-match") == "*":
            raise error(412, DUPLICATE_KEY, "A record with matching key values already "
                                            "exists.")
        check_if_match(row, headers)
        if PRIMARY_KEY in payload and parse_uuid(str(payload[PRIMARY_KEY])) != record_id:
            raise error(400, INVALID_ARGUMENT, "the id in the body is not the id in the URL")
        changed = dict(row)
        apply_write(changed, {k: v for k, v in payload.items() if k != PRIMARY_KEY})
        check_state(changed, payload)
        row.clear()
        row.update(changed)
        self._touch(row)
        return self._written(row, 200, params, headers)

    def _written(self, row: dict[str, Any], status: int, params: Mapping[str, str],
                 headers: Mapping[str, str]) -> Reply:
        location = (("OData-EntityId", f"{API_PREFIX}{ENTITY_SET}({row[PRIMARY_KEY]})"),
                    ("ETag", etag(row)))
        if "return=representation" in headers.get("prefer", ""):
            return reply(status, select(row, params, headers), location)
        return reply(204, None, location)

    def _existing(self, record_id: str) -> dict[str, Any]:
        row = self._state.rows.get(record_id)
        if row is None:
            raise not_found(record_id)
        return row

    def _next_version(self) -> int:
        self._state.rowversion += 1
        return self._state.rowversion

    def _touch(self, row: dict[str, Any]) -> None:
        row["versionnumber"] = self._next_version()
        row["modifiedon"] = format_time(datetime.fromtimestamp(self._clock(), UTC))
