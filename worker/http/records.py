"""Records and their history, in the shapes of SPEC §5.1 and §5.2.

``GET /api/v1/records`` pages with an opaque cursor (``@odata.nextLink``): the records in
record-id order after the last id of the previous page (``StateStore.page_records``). So
paging is stable: a record that matches the filters for the whole walk is on exactly one
page, whatever is created, changed or deleted meanwhile; one that starts or stops matching
during the walk may or may not be listed.
"""

from __future__ import annotations

import base64
import binascii
import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse

from statemachine import ChannelKind, HistoryEntry, ProvisioningState, StatusReason
from worker.http.auth import Identity, Role
from worker.http.context import authorized, context
from worker.http.problems import ApiProblem, FieldError, invalid

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
_CURSOR = "r1:"  # a version tag, so the cursor's form can change without misreading old ones


def encode_cursor(after: str) -> str:
    return base64.urlsafe_b64encode((_CURSOR + after).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The record id a cursor continues after; a 400 for anything this API did not give."""
    problem = invalid("the cursor is not one this API gave",
                      FieldError(None, "cursor", "is not a cursor of @odata.nextLink"))
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise problem from None
    if not text.startswith(_CURSOR):
        raise problem
    after = text[len(_CURSOR):]
    try:
        if str(uuid.UUID(after)) != after:
            raise ValueError(after)
    except ValueError:
        raise problem from None
    return after


def query_limit(request: Request, default: int = DEFAULT_LIMIT) -> int:
    text = request.query_params.get("limit")
    if text is None:
        return default
    if not text.strip().isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise invalid("limit is out of range",
                      FieldError(None, "limit", f"must be a whole number from 1 to {MAX_LIMIT}"))
    return int(text)


def query_status(text: str | None) -> StatusReason | None:
    if text is None:
        return None
    for status in StatusReason:
        if status.label.lower() == text.lower():
            return status
    labels = ", ".join(s.label for s in StatusReason)
    raise invalid("status is not a status reason",
                  FieldError(None, "status", f"must be one of {labels}"))


def query_kind(text: str | None) -> ChannelKind | None:
    if text is None:
        return None
    try:
        return ChannelKind(text.lower())
    except ValueError:
        kinds = ", ".join(k.value for k in ChannelKind)
        raise invalid("kind is not a channel kind",
                      FieldError(None, "kind", f"must be one of {kinds}")) from None


def record_id(request: Request) -> str:
    text = str(request.path_params["id"])
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise invalid("the record id is not a UUID",
                      FieldError(None, "id", "must be a UUID")) from None


async def list_records(request: Request) -> JSONResponse:
    store = context(request).service.store

    def page(_: Identity) -> dict[str, object]:
        params = request.query_params
        status, kind = query_status(params.get("status")), query_kind(params.get("kind"))
        limit = query_limit(request)
        cursor = params.get("cursor")
        after = decode_cursor(cursor) if cursor is not None else None
        found = store.page_records(status=status, kind=kind.value if kind else None,
                                   after=after, limit=limit)
        body: dict[str, object] = {"value": [record.to_dataverse()
                                             for record in found.records]}
        if found.next_after is not None:
            body["@odata.nextLink"] = str(request.url.include_query_params(
                cursor=encode_cursor(found.next_after)))
        return body

    return JSONResponse(await authorized(request, Role.READER, page))


async def get_record(request: Request) -> JSONResponse:
    store = context(request).service.store

    def load(_: Identity) -> tuple[str, ProvisioningState | None]:
        wanted = record_id(request)
        return wanted, store.load(wanted)

    wanted, record = await authorized(request, Role.READER, load)
    if record is None:
        raise ApiProblem(404, f"record {wanted} not found")
    return JSONResponse(record.to_dataverse(), headers={"ETag": record.etag})


async def get_history(request: Request) -> JSONResponse:
    store = context(request).service.store

    def history(_: Identity) -> tuple[str, list[HistoryEntry]]:
        wanted = record_id(request)
        return wanted, store.history(wanted)

    wanted, entries = await authorized(request, Role.READER, history)
    if not entries:
        raise ApiProblem(404, f"record {wanted} has no history (unknown id)")
    return JSONResponse({"value": [entry.to_json() for entry in entries]})
