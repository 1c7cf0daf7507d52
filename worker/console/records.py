"""Records: the list (filter by status and kind, search by id or name, paged by record id
like the API's cursor), and one record with every column, its three machines drawn, its
history as a timeline, its exception details and its failed-task entries."""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from statemachine import ChannelKind, ProvisioningState, StatusReason
from statemachine.steps import pending_step
from statemachine.table import FORMATTED
from worker.console.context import Console, Refused, blocking, console, require, show
from worker.console.diagram import machines_svg
from worker.store.failed_filter import FailedFilter, select

PAGE = 50
NAME_SCAN_SHOWN = 200  # a name search lists this many matches at most
FAILED_SCAN = 1000  # a record page matches the failed entries only while there are this few


def _status(text: str) -> StatusReason | None:
    if not text:
        return None
    for status in StatusReason:
        if status.label.lower() == text.lower():
            return status
    raise Refused(400, f"status: must be one of {', '.join(s.label for s in StatusReason)}")


def _kind(text: str) -> ChannelKind | None:
    if not text:
        return None
    try:
        return ChannelKind(text.lower())
    except ValueError:
        raise Refused(400, f"kind: must be one of {', '.join(k.value for k in ChannelKind)}"
                      ) from None


def _after(text: str) -> str | None:
    if not text:
        return None
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise Refused(400, "after: must be a record id (the page link gives it)") from None


def find(con: Console, status: StatusReason | None, kind: ChannelKind | None, query: str,
         after: str | None) -> tuple[list[ProvisioningState], str | None, bool]:
    """(records, the id the next page starts after, whether it was a name search)."""
    store = con.api.service.store
    if query:
        try:
            wanted = str(uuid.UUID(query))
        except ValueError:
            wanted = None
        if wanted is not None:
            record = store.load(wanted)
            return ([record] if record is not None else []), None, False
        # A name search reads the filtered records (a scan: narrow it with status or kind).
        needle = query.lower()
        found = [r for r in store.list_records(status=status,
                                               kind=kind.value if kind else None)
                 if needle in r.name.lower()]
        return found[:NAME_SCAN_SHOWN], None, True
    page = store.page_records(status=status, kind=kind.value if kind else None,
                              after=after, limit=PAGE)
    return page.records, page.next_after, False


async def records(request: Request) -> Response:
    session = await require(request)
    params = request.query_params
    status = _status(params.get("status", "").strip())
    kind = _kind(params.get("kind", "").strip())
    query = params.get("q", "").strip()
    after = _after(params.get("after", "").strip())
    found, next_after, scanned = await blocking(request, find, console(request), status,
                                                kind, query, after)
    return show(request, "records.html", session, records=found, next_after=next_after,
                scanned=scanned, shown=NAME_SCAN_SHOWN,
                status=status.label if status else "", kind=kind.value if kind else "",
                query=query, after=after, statuses=[s.label for s in StatusReason],
                kinds=[k.value for k in ChannelKind])


def columns(record: ProvisioningState) -> list[tuple[str, Any, str | None]]:
    """(column, value, formatted value) of every column of the record's read form."""
    row = record.to_dataverse()
    return [(name, value, row.get(f"{name}{FORMATTED}"))
            for name, value in row.items()
            if not name.endswith(FORMATTED) and name != "@odata.etag"]


def load(con: Console, record_id: str) -> dict[str, Any] | None:
    store = con.api.service.store
    record = store.load(record_id)
    if record is None:
        return None
    history = store.history(record_id)
    failed_store = con.api.service.failed
    # The store has no index by record: its entries are matched only while they are few.
    failed = (select(failed_store.all(), FailedFilter(record_id=record_id))
              if failed_store.count() <= FAILED_SCAN else None)
    return {"record": record, "columns": columns(record), "history": list(reversed(history)),
            "machines": machines_svg(record), "failed": failed, "failed_scan": FAILED_SCAN,
            "step": pending_step(record), "tracking": record.tracking.to_json()}


async def record(request: Request) -> Response:
    session = await require(request)
    text = str(request.path_params["id"])
    try:
        record_id = str(uuid.UUID(text))
    except ValueError:
        raise Refused(400, "id: must be a record id (a UUID)") from None
    found = await blocking(request, load, console(request), record_id)
    if found is None:
        raise Refused(404, f"record {record_id} not found")
    return show(request, "record.html", session, **found)
