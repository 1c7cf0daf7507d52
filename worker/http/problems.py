"""RFC 9457 problem documents: every error of the HTTP API is one.

``{"type": "about:blank", "title": <the status phrase>, "status", "detail"}``; a
validation error adds ``errors``, a list of ``{"index", "path", "reason"}`` (``index``:
the event's position in a batch, null for anything else).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from starlette.responses import Response

PROBLEM_JSON = "application/problem+json"


@dataclass(frozen=True, slots=True)
class FieldError:
    """One validation problem: which event (None: not an event), which field, why."""

    index: int | None
    path: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "path": self.path, "reason": self.reason}


class ApiProblem(Exception):
    """Raised by a route; the app answers with its problem document."""

    def __init__(self, status: int, detail: str, *, errors: Iterable[FieldError] = (),
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = list(errors)
        self.headers = dict(headers or {})


def invalid(detail: str, *errors: FieldError) -> ApiProblem:
    """A 400 with its field errors."""
    return ApiProblem(400, detail, errors=errors)


def problem_response(status: int, detail: str, *, errors: Iterable[FieldError] = (),
                     headers: Mapping[str, str] | None = None) -> Response:
    body: dict[str, Any] = {"type": "about:blank", "title": HTTPStatus(status).phrase,
                            "status": status, "detail": detail}
    listed = [error.to_json() for error in errors]
    if listed:
        body["errors"] = listed
    return Response(json.dumps(body, ensure_ascii=False), status_code=status,
                    headers=dict(headers or {}), media_type=PROBLEM_JSON)


def response_of(problem: ApiProblem) -> Response:
    return problem_response(problem.status, problem.detail, errors=problem.errors,
                            headers=problem.headers)
