"""What every route shares: the wired objects (``ApiContext``), authorization, calling
the service off the event loop, and reading a bounded body."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from worker.errors import StoreError
from worker.http.auth import (
    Authenticator,
    Forbidden,
    Identity,
    IssuerUnavailable,
    Role,
    Unauthenticated,
)
from worker.http.problems import ApiProblem, FieldError, invalid
from worker.ops.health import scrub
from worker.ops.operate import SendEvent
from worker.service import Service
from worker.settings import Settings

T = TypeVar("T")
IDENTITY = "provisioning.identity"  # scope key: who the request is, for the request log
CHALLENGE = 'Bearer realm="provisioning"'


@dataclass(frozen=True)
class ApiContext:
    """The objects the routes call: the same Service the CLI uses, and how to reach the
    rest (health checks, replays sent as Celery messages)."""

    settings: Settings
    service: Service
    auth: Authenticator
    send_replay: SendEvent
    health: Callable[[], dict[str, Any]]
    on_close: tuple[Callable[[], None], ...] = ()  # run at shutdown, requests finished


def context(request: Request) -> ApiContext:
    api: ApiContext = request.app.state.api
    return api


def _identify(request: Request, needed: Role) -> Identity:
    """The request's identity when its role may do what ``needed`` may; else the
    problem: 401 (with WWW-Authenticate: Bearer), 403, or 503 when the issuer's keys or
    the store cannot be had. Blocking (Redis, the issuer): call it off the event loop."""
    api = context(request)
    header = request.headers.get("authorization")
    try:
        identity = api.auth.identify(header)
    except Unauthenticated as exc:
        challenge = CHALLENGE + (', error="invalid_token"' if header else "")
        raise ApiProblem(401, str(exc), headers={"WWW-Authenticate": challenge}) from None
    except Forbidden as exc:  # an OIDC user with none of the app roles
        raise ApiProblem(403, str(exc)) from None
    except IssuerUnavailable as exc:
        raise ApiProblem(503, str(exc)) from None
    except StoreError as exc:
        raise store_problem(api.settings, exc) from None
    request.scope[IDENTITY] = identity.name
    structlog.contextvars.bind_contextvars(identity=identity.name)
    if not identity.may(needed):
        raise ApiProblem(403, f"{identity.name} is a {identity.role.label}; this needs the "
                              f"{needed.label} role")
    return identity


async def authorize(request: Request, needed: Role) -> Identity:
    """``_identify`` on a worker thread; the identity is bound to the request's logs."""
    identity = await run_in_threadpool(_identify, request, needed)
    structlog.contextvars.bind_contextvars(identity=identity.name)
    return identity


async def authorized(request: Request, needed: Role, fn: Callable[[Identity], T]) -> T:
    """``authorize``, then ``fn(identity)``, in one trip to a worker thread (the hot
    path: each trip costs a thread wake-up and a loop wake-up). Problems as ``authorize``
    and ``call`` raise them, credentials first."""
    def both() -> tuple[Identity, T]:
        identity = _identify(request, needed)
        try:
            return identity, fn(identity)
        except StoreError as exc:
            raise store_problem(context(request).settings, exc) from None

    identity, result = await run_in_threadpool(both)
    structlog.contextvars.bind_contextvars(identity=identity.name)
    return result


def store_problem(settings: Settings, error: StoreError) -> ApiProblem:
    return ApiProblem(503, f"the record store failed: {scrub(str(error), settings)}")


async def call(request: Request, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn`` (blocking: Redis, the broker) on a worker thread; a store failure is a 503."""
    try:
        return await run_in_threadpool(fn, *args, **kwargs)
    except StoreError as exc:
        raise store_problem(context(request).settings, exc) from None


async def read_body(request: Request) -> bytes:
    """The body, refused with 413 past PROVISIONING_API_MAX_BODY_BYTES (by its declared
    length before reading, or while reading one without)."""
    limit = context(request).settings.api_max_body_bytes
    too_big = ApiProblem(413, f"the body is larger than the limit of {limit} bytes "
                              "(PROVISIONING_API_MAX_BODY_BYTES)")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(body: bytes, *, index: int | None = None, path: str = "") -> Any:
    """The JSON value of ``body``; a 400 naming why it is not JSON."""
    try:
        return json.loads(body, parse_constant=_no_constant)
    except UnicodeDecodeError as exc:
        reason = f"not UTF-8 (byte {exc.start + 1})"
    except json.JSONDecodeError as exc:
        reason = f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
    except RecursionError:
        reason = "not valid JSON (nested too deep)"
    except ValueError as exc:
        reason = f"not valid JSON ({exc})"
    raise invalid("the body is not valid JSON", FieldError(index, path, reason))


async def json_object(request: Request) -> dict[str, Any]:
    """A JSON object body (a 400 for anything else, 413 past the limit)."""
    body = await read_body(request)
    if not body.strip():
        raise invalid("a JSON object body is required", FieldError(None, "", "is empty"))
    value = parse_json(body)
    if not isinstance(value, dict):
        raise invalid("the body must be a JSON object",
                      FieldError(None, "", f"must be a JSON object, not {_json_type(value)}"))
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"
