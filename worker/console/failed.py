"""Failed tasks: the CLI's filters, select many, a confirmation listing exactly the
snapshot acted on, then replay or discard (a reason required) and the result.

Every action goes through ``worker.ops.operate``'s ``choose`` and ``act``, as the CLI and
the HTTP API do, audited under the logged-in identity (the token's name or the OIDC
user), never a name the form declares. The confirmation carries the snapshot's ids; the
action takes exactly those (entries gone meanwhile are listed as missing).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from worker.console.context import Refused, blocking, console, posted, require, show
from worker.http.auth import Role
from worker.http.failed import FILTERS, audit_json, failed_filter
from worker.http.problems import ApiProblem
from worker.ops.operate import act, choose
from worker.store.failed_filter import FailedFilter

SHOWN = 200  # entries listed on the page at most (the newest failures)
AUDIT_SHOWN = 500
MAX_IDS = 1000


def _filters(request: Request) -> tuple[dict[str, str], FailedFilter, list[str]]:
    """The form's filters (blank ones dropped), the FailedFilter, and the errors."""
    given = {name: request.query_params[name].strip() for name in FILTERS
             if request.query_params.get(name, "").strip()}
    try:
        return given, failed_filter(given), []
    except ApiProblem as exc:
        errors = [f"{e.path}: {e.reason}" for e in exc.errors] or [exc.detail]
        return given, FailedFilter(), errors


async def failed_list(request: Request) -> Response:
    session = await require(request)
    given, flt, errors = _filters(request)
    failed = console(request).api.service.failed
    newest: list[Any] = []
    total = 0
    if errors:
        pass
    elif given:  # the CLI's filters: every entry is read and matched (as `failed list`)
        entries, _ = await blocking(request, choose, failed, flt=flt)
        newest, total = list(reversed(entries))[:SHOWN], len(entries)
    else:  # no filter: one page from the store's time index, no scan
        newest, total = await blocking(request, lambda: (failed.newest(SHOWN), failed.count()))
    return show(request, "failed.html", session, filters=given, errors=errors,
                entries=newest, total=total, shown=SHOWN,
                status_code=400 if errors else 200)


async def failed_entry(request: Request) -> Response:
    session = await require(request)
    entry_id = str(request.path_params["entry"])
    entry = await blocking(request, console(request).api.service.failed.get, entry_id)
    if entry is None:
        raise Refused(404, f"failed-task entry {entry_id} not found (replayed, discarded or "
                           "expired: see the audit log)")
    return show(request, "failed_entry.html", session, entry=entry)


def _ids(values: list[Any]) -> list[str]:
    ids = [str(v) for v in values if isinstance(v, str) and v.strip()]
    if not ids:
        raise Refused(400, "select at least one entry (ids: none given)")
    if len(ids) > MAX_IDS:
        raise Refused(400, f"ids: at most {MAX_IDS} entries at once, not {len(ids)}")
    return ids


def _verb(value: Any) -> str:
    if value not in ("replay", "discard"):
        raise Refused(400, "action: must be replay or discard")
    return str(value)


async def confirm(request: Request) -> Response:
    """The snapshot the action will take: exactly these entries, listed."""
    session, form = await posted(request, Role.OPERATOR)
    verb = _verb(form.get("action"))
    chosen, missing = await blocking(request, choose, console(request).api.service.failed,
                                     ids=_ids(form.getlist("id")))
    return show(request, "confirm.html", session, verb=verb, entries=chosen, missing=missing)


async def perform(request: Request) -> Response:
    """Replay or discard the confirmed snapshot; the page lists what happened to each."""
    session, form = await posted(request, Role.OPERATOR)
    verb = _verb(form.get("action"))
    reason = str(form.get("reason") or "").strip()
    ids = _ids(form.getlist("id"))
    con = console(request)
    if verb == "discard" and not reason:
        chosen, missing = await blocking(request, choose, con.api.service.failed, ids=ids)
        return show(request, "confirm.html", session, verb=verb, entries=chosen,
                    missing=missing, status_code=400,
                    error="reason: a discard needs a reason (it is audited)")
    chosen, missing = await blocking(request, choose, con.api.service.failed, ids=ids)
    report = await blocking(request, act, con.api.service, verb,
                            chosen, operator=session.name, send_event=con.api.send_replay,
                            reason=reason)
    return show(request, "result.html", session, verb=verb, report=report, missing=missing,
                reason=reason)


async def audit(request: Request) -> Response:
    session = await require(request)
    lines = await blocking(request, console(request).api.service.failed.audit, AUDIT_SHOWN)
    return show(request, "audit.html", session,
                lines=[audit_json(line) for line in reversed(lines)], shown=AUDIT_SHOWN)
