"""``POST /api/v1/events``: CloudEvents over HTTP, in the three content modes of the
CloudEvents HTTP protocol binding 1.0, into ``worker.api.submit_events`` (as ``provisioning
submit`` does).

* structured: ``application/cloudevents+json``, one event as a JSON object;
* batch: ``application/cloudevents-batch+json``, a JSON array of events;
* binary: the attributes in ``ce-*`` headers (values percent-encoded, as the binding says),
  the data as an ``application/json`` body (or none).

Positions (``index``) are 0-based array indexes; a single event is index 0. In binary
mode a problem with an attribute names its header (``ce-id``), one with the data its path
(``data.name``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import JSONResponse

from worker.http.auth import Identity, Role
from worker.http.context import authorize, authorized, context, parse_json, read_body
from worker.http.problems import ApiProblem, FieldError, invalid
from worker.service import Refusal, SubmitReport, submit_events

STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
BINARY = "application/json"


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def events_of(headers: Mapping[str, str], body: bytes) -> tuple[list[tuple[int, Any]], bool]:
    """The (index, raw event) pairs of a request, and whether it was binary mode. A 400
    when the body cannot hold events at all; 415 for a content type of no mode."""
    kind = media_type(headers.get("content-type"))
    if "ce-specversion" in headers or kind == BINARY:
        if kind not in (BINARY, "") or (kind == "" and body.strip()):
            raise ApiProblem(415, f"binary mode carries the data as {BINARY}, not "
                                  f"{kind or 'a body without a content type'}")
        return [(0, binary_event(headers, body))], True
    if kind == STRUCTURED:
        if not body.strip():
            raise invalid("the body is empty", FieldError(0, "", "an event is required"))
        return [(0, parse_json(body, index=0))], False
    if kind == BATCH:
        if not body.strip():
            raise invalid("the body is empty", FieldError(None, "", "a batch is required"))
        batch = parse_json(body)
        if not isinstance(batch, list):
            raise invalid("a batch is a JSON array of events",
                          FieldError(None, "", "must be a JSON array"))
        if not batch:
            raise invalid("the batch holds no event", FieldError(None, "", "is empty"))
        return list(enumerate(batch)), False
    raise ApiProblem(415, f"events are {STRUCTURED}, {BATCH}, or binary mode (ce-* headers "
                          f"and an {BINARY} body), not {kind or 'a body without a type'}")


def binary_event(headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    """The structured form of a binary-mode event: each ``ce-<name>`` header is attribute
    ``<name>`` (percent-decoded); a body is its ``data``."""
    event: dict[str, Any] = {}
    for name, value in headers.items():
        if name.lower().startswith("ce-") and len(name) > 3:
            event.setdefault(name.lower()[3:], unquote(value))
    if body.strip():
        event["data"] = parse_json(body, index=0, path="data")
    return event


def _header_path(path: str) -> str:
    """A problem's path in binary mode: attributes are headers, the data stays data."""
    head = path.split(".", 1)[0].split("[", 1)[0]
    return path if not path or head == "data" else f"ce-{path}"


def refused_json(refusal: Refusal, binary: bool) -> dict[str, Any]:
    return {"index": refusal.line, "problems": [
        {"path": _header_path(p.path) if binary else p.path, "reason": p.reason}
        for p in refusal.problems]}


async def post_events(request: Request) -> JSONResponse:
    """Accept the valid events (202); 400 when none is; the event id is the key.

    The body is read first and the credentials checked with the accepting, in one trip to
    a worker thread; a body over the limit is answered 413 only after the credentials
    passed (401 and 403 come first, whatever the body)."""
    try:
        body = await read_body(request)
    except ApiProblem as problem:
        if problem.status == 413:
            await authorize(request, Role.SUBMITTER)
        raise
    service = context(request).service

    def accept(_: Identity) -> tuple[SubmitReport, bool]:
        items, binary = events_of(request.headers, body)
        return submit_events(service, items), binary

    report, binary = await authorized(request, Role.SUBMITTER, accept)
    refused = [refused_json(refusal, binary) for refusal in report.refused]
    if refused and not report.accepted and not report.duplicates:
        raise invalid(
            "no event is valid" if len(refused) > 1 else "the event is not valid",
            *(FieldError(item["index"], p["path"], p["reason"])
              for item in refused for p in item["problems"]))
    return JSONResponse({"accepted": report.accepted, "duplicates": report.duplicates,
                         "refused": refused}, status_code=202)
