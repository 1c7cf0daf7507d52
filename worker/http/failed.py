"""The failed-task store over HTTP: list, show, replay, discard, and the audit log.

Replay and discard go through ``worker.ops.operate``'s ``choose`` and ``act`` (the CLI's
rule too): a snapshot taken once, each entry acted on by its ``Operator``, audited under
the caller's identity (the token's name or the JWT's user), never a name the request
declares.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from worker.http.auth import Role
from worker.http.context import authorize, call, context, json_object
from worker.http.problems import ApiProblem, FieldError, invalid
from worker.http.records import query_limit
from worker.ops.operate import ActionReport, act, choose
from worker.store.failed_filter import FailedFilter, parse_moment

FILTERS = ("event_type", "record", "exception", "task", "since", "older_than")
MAX_IDS = 1000


def failed_filter(values: Mapping[str, Any], where: str = "") -> FailedFilter:
    """The CLI's filters from query parameters or a JSON object; a 400 naming each bad one."""
    errors: list[FieldError] = []
    found: dict[str, Any] = {}
    now = datetime.now(UTC)
    for name, value in values.items():
        path = f"{where}{name}"
        if name not in FILTERS:
            errors.append(FieldError(None, path, f"is not a filter (one of {', '.join(FILTERS)})"))
            continue
        if not isinstance(value, str) or not value:
            errors.append(FieldError(None, path, "must be a non-empty string"))
            continue
        if name == "record":
            try:
                found[name] = str(uuid.UUID(value))
            except ValueError:
                errors.append(FieldError(None, path, "must be a UUID"))
        elif name in ("since", "older_than"):
            try:
                found[name] = parse_moment(value, now)
            except ValueError as exc:
                errors.append(FieldError(None, path, str(exc)))
        else:
            found[name] = value
    if errors:
        raise invalid("the filters are not valid", *errors)
    return FailedFilter(event_type=found.get("event_type"), record_id=found.get("record"),
                        exception=found.get("exception"), task=found.get("task"),
                        since=found.get("since"), older_than=found.get("older_than"))


async def list_failed(request: Request) -> JSONResponse:
    await authorize(request, Role.READER)
    flt = failed_filter(dict(request.query_params))
    entries, _ = await call(request, choose, context(request).service.failed, flt=flt)
    return JSONResponse({"value": [entry.summary_json() for entry in entries]})


async def get_failed(request: Request) -> JSONResponse:
    await authorize(request, Role.READER)
    entry_id = str(request.path_params["entry"])
    entry = await call(request, context(request).service.failed.get, entry_id)
    if entry is None:
        raise ApiProblem(404, f"failed-task entry {entry_id} not found")
    return JSONResponse(entry.to_json())


async def _act_on_one(request: Request, verb: str, reason: str = "") -> ActionReport:
    identity = await authorize(request, Role.OPERATOR)
    api = context(request)
    entry_id = str(request.path_params["entry"])
    chosen, missing = await call(request, choose, api.service.failed, ids=[entry_id])
    if missing:
        raise ApiProblem(404, f"failed-task entry {entry_id} not found")
    return await call(request, act, api.service, verb, chosen, operator=identity.name,
                      send_event=api.send_replay, reason=reason)


async def replay_one(request: Request) -> JSONResponse:
    report = await _act_on_one(request, "replay")
    if report.refused:
        [(entry_id, why)] = report.refused
        raise ApiProblem(409, f"failed-task entry {entry_id} was not replayed: {why}")
    return JSONResponse({"replayed": report.done}, status_code=202)


async def discard_one(request: Request) -> JSONResponse:
    await authorize(request, Role.OPERATOR)
    body = await json_object(request)
    reason = body.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise invalid("a discard needs a reason (it is audited)",
                      FieldError(None, "reason", "is required: a non-empty string"))
    extra = sorted(set(body) - {"reason"})
    if extra:
        raise invalid("unknown fields", *(FieldError(None, name, "is not a field of a discard")
                                          for name in extra))
    report = await _act_on_one(request, "discard", reason)
    return JSONResponse({"discarded": report.done})


def _replay_request(body: Mapping[str, Any]) -> tuple[list[str] | None, FailedFilter | None,
                                                      bool]:
    """(ids, filters, dry run) of a bulk replay body; a 400 naming each problem."""
    errors = [FieldError(None, name, "is not a field of a replay (ids, all, filters, dry_run)")
              for name in sorted(set(body) - {"ids", "all", "filters", "dry_run"})]
    ids, everything = body.get("ids"), body.get("all", False)
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        errors.append(FieldError(None, "dry_run", "must be true or false"))
    if not isinstance(everything, bool):
        errors.append(FieldError(None, "all", "must be true or false"))
    if ids is not None and (not isinstance(ids, list) or len(ids) > MAX_IDS
                            or not all(isinstance(i, str) and i for i in ids)):
        errors.append(FieldError(None, "ids", f"must be an array of at most {MAX_IDS} "
                                              "entry ids"))
    if (ids is None) == (everything is not True):
        errors.append(FieldError(None, "ids", 'give "ids", or "all": true with "filters"'))
    filters = body.get("filters", {})
    if not isinstance(filters, dict):
        errors.append(FieldError(None, "filters", "must be an object"))
    elif filters and everything is not True:
        errors.append(FieldError(None, "filters", 'only with "all": true'))
    if errors:
        raise invalid("the replay request is not valid", *errors)
    if everything is True:
        return None, failed_filter(filters, "filters."), dry_run
    assert isinstance(ids, list)
    return [str(i) for i in ids], None, dry_run


async def replay_many(request: Request) -> JSONResponse:
    """Replay a snapshot: named ids, or every entry the filters match; a dry run says which."""
    identity = await authorize(request, Role.OPERATOR)
    api = context(request)
    ids, flt, dry_run = _replay_request(await json_object(request))
    chosen, missing = await call(request, choose, api.service.failed, ids=ids, flt=flt)
    report = await call(request, act, api.service, "replay", chosen, operator=identity.name,
                        send_event=api.send_replay, dry_run=dry_run)
    return JSONResponse({
        "snapshot": report.snapshot, "replayed": report.done, "missing": missing,
        "refused": [{"id": entry_id, "reason": why} for entry_id, why in report.refused],
        "dry_run": dry_run,
    }, status_code=200 if dry_run else 202)


async def get_audit(request: Request) -> JSONResponse:
    """The operators' audit log, newest first."""
    await authorize(request, Role.READER)
    limit = query_limit(request)
    lines = await call(request, context(request).service.failed.audit, limit)
    return JSONResponse({"value": [audit_json(line) for line in reversed(lines)]})


def audit_json(line: Mapping[str, Any]) -> dict[str, Any]:
    """An audit line in the API's shape: ``entries`` lists what it acted on."""
    shown = {key: value for key, value in line.items() if key != "entry"}
    shown.setdefault("reason", "")
    shown["entries"] = [line["entry"]] if line.get("entry") else []
    return shown
