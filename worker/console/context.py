"""What every console page shares: the wired objects (``Console``), the session of a
request (a login redirect without one), the CSRF check of a POST, and the role an
action needs (403 when a reader forges an operator's POST)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote

import redis
from jinja2 import Environment
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from worker.console.render import page
from worker.console.session import COOKIE, Session, Sessions
from worker.errors import StoreError
from worker.http.auth import Role
from worker.http.context import IDENTITY, ApiContext
from worker.keys import Keys
from worker.ops.health import scrub

T = TypeVar("T")
MAX_FORM_FIELDS = 2000  # a bulk action names at most 1000 entries (worker/http/failed.py)


@dataclass(frozen=True)
class Console:
    """The console's wiring: the API's context (the same Service, tokens and replay
    sending), the session maker, a Redis client for the overview's cheap counts, the
    templates, and the cookie settings."""

    api: ApiContext
    sessions: Sessions
    client: redis.Redis
    keys: Keys
    templates: Environment
    secure_cookie: bool = True
    same_site: str = "lax"
    # Entra ID sign-in when configured: a worker.console.oidc.OidcLogin (which imports
    # this module, so it is not named here: no import cycle, not even for the checker).
    oidc: Any = None


class Refused(Exception):
    """A request the console answers with an error page (status and what to say)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class LoginNeeded(Exception):
    """No valid session: GET pages redirect to the login form."""


def console(request: Request) -> Console:
    value: Console = request.app.state.console
    return value


def base(request: Request) -> str:
    """The console's root path, ``/ui`` where it is mounted."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def session_of(request: Request) -> Session | None:
    """The request's session, or None. Blocking (a token session checks that the token
    still exists): call it off the event loop."""
    found = console(request).sessions.read(request.cookies.get(COOKIE))
    if (found is not None and found.token_id is not None
            and not console(request).api.auth.tokens.exists(found.token_id)):
        return None  # revoked: the session ends with it
    return found


async def require(request: Request, needed: Role = Role.READER) -> Session:
    """The session, for a role that may do what ``needed`` may; LoginNeeded or Refused."""
    try:
        found = await run_in_threadpool(session_of, request)
    except StoreError as exc:
        raise Refused(503, store_text(request, exc)) from None
    if found is None:
        raise LoginNeeded
    request.scope[IDENTITY] = found.name  # for the request log, as the API's routes do
    if not found.identity.may(needed):
        raise Refused(403, f"{found.name} is a {found.role.label}; this needs the "
                           f"{needed.label} role")
    return found


async def read_form(request: Request, max_fields: int = MAX_FORM_FIELDS) -> FormData:
    """A URL-encoded form body (what the console's forms send), at most the API's body
    limit and ``max_fields`` fields; a 400 or 413 page otherwise. (No multipart: the
    console uploads nothing, so no multipart parser is needed.)"""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise Refused(400, "the form must be sent as application/x-www-form-urlencoded")
    limit = console(request).api.settings.api_max_body_bytes
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise Refused(413, f"the form is larger than {limit} bytes")
    try:
        pairs: list[tuple[str, str | UploadFile]] = []
        pairs += parse_qsl(body.decode("utf-8"), keep_blank_values=True,
                          max_num_fields=max_fields, strict_parsing=False)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Refused(400, f"the form could not be read: {exc}") from None
    return FormData(pairs)


async def posted(request: Request, needed: Role) -> tuple[Session, FormData]:
    """A POST's session and form, refused with 403 unless its CSRF token is the session's
    and the session's role may do what ``needed`` may."""
    form = await read_form(request)
    try:
        found = await run_in_threadpool(session_of, request)
    except StoreError as exc:
        raise Refused(503, store_text(request, exc)) from None
    if found is None:
        raise Refused(403, "no session: log in again (the form was not sent)")
    request.scope[IDENTITY] = found.name
    csrf = form.get("csrf")
    if not console(request).sessions.csrf_ok(found, csrf if isinstance(csrf, str) else None):
        raise Refused(403, "the form's CSRF token is missing or not this session's; reload "
                           "the page and try again")
    if not found.identity.may(needed):
        raise Refused(403, f"{found.name} is a {found.role.label}; this needs the "
                           f"{needed.label} role")
    return found, form


def store_text(request: Request, error: StoreError) -> str:
    return f"the record store failed: {scrub(str(error), console(request).api.settings)}"


async def blocking(request: Request, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn`` on a worker thread; a store failure is a 503 page."""
    try:
        return await run_in_threadpool(fn, *args, **kwargs)
    except StoreError as exc:
        raise Refused(503, store_text(request, exc)) from None


def show(request: Request, template: str, session: Session | None, status_code: int = 200,
         **values: Any) -> HTMLResponse:
    """A page: the template with the session, the console's root and the nav entry."""
    return page(console(request).templates, template, {
        "session": session, "root": base(request), "operator": bool(
            session and session.identity.may(Role.OPERATOR)),
        "request": request, **values}, status_code)


def to_login(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"{base(request)}/login?next={quote(target, safe='')}", 303)
