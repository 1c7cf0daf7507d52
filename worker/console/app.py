"""The console's ASGI application, mounted at ``/ui`` by ``provisioning serve``.

Its pages are Starlette endpoints rendering Jinja2 templates; the stylesheet, the one
small script and the font are files of the package under ``static/`` (no CDN, no build
step: the console works in an air-gapped cluster).
"""

from __future__ import annotations

from pathlib import Path

import redis
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from worker import bootstrap
from worker.console import failed, login, oidc, overview, records
from worker.console.context import Console, LoginNeeded, Refused, session_of, show, to_login
from worker.console.render import templates
from worker.console.security import SecurityHeaders
from worker.console.session import Sessions, Signer
from worker.http.context import ApiContext
from worker.keys import Keys

STATIC = Path(__file__).parent / "static"

def routes() -> list[BaseRoute]:
    return [
        Route("/", overview.overview, methods=["GET"]),
        Route("/records", records.records, methods=["GET"]),
        Route("/records/{id}", records.record, methods=["GET"]),
        Route("/failed", failed.failed_list, methods=["GET"]),
        Route("/failed/confirm", failed.confirm, methods=["POST"]),
        Route("/failed/act", failed.perform, methods=["POST"]),
        Route("/failed/{entry}", failed.failed_entry, methods=["GET"]),
        Route("/audit", failed.audit, methods=["GET"]),
        Route("/mirror", overview.mirror, methods=["GET"]),
        Route("/login", login.login_form, methods=["GET"]),
        Route("/login", login.login, methods=["POST"]),
        Route("/logout", login.logout, methods=["POST"]),
        Route("/login/once", login.once, methods=["GET"]),
        Route("/login/oidc", oidc.start, methods=["GET"]),
        Route("/auth/callback", oidc.callback, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]

async def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Refused)
    try:
        session = session_of(request)
    except Exception:  # noqa: BLE001 - the error page must render whatever failed
        session = None
    return show(request, "error.html", session, status_code=exc.status, message=exc.message)

async def _login_needed(request: Request, exc: Exception) -> Response:
    return to_login(request)

async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    text = {404: f"no such page: {request.url.path}",
            405: f"{request.method} is not allowed on {request.url.path}"}.get(
        exc.status_code, str(exc.detail))
    return show(request, "error.html", None, status_code=exc.status_code, message=text)

def create_console(con: Console) -> Starlette:
    app = Starlette(routes=routes(), middleware=[Middleware(SecurityHeaders)],
                    exception_handlers={Refused: _refused, LoginNeeded: _login_needed,
                                        HTTPException: _http_error})
    app.state.console = con
    return app

def build_console(api: ApiContext, client: redis.Redis | None = None) -> Console:
    """The real wiring over the API's context: the session key from
    PROVISIONING_CONSOLE_SESSION_SECRET (random per process when unset), a Redis client
    for the overview's counts, OIDC login when PROVISIONING_CONSOLE_OIDC_CLIENT_ID is set."""
    settings = api.settings
    return Console(
        api=api,
        sessions=Sessions(Signer(settings.console_session_secret),
                          settings.console_session_seconds),
        client=client or bootstrap.redis_client(settings), keys=Keys(settings.key_prefix),
        templates=templates(), secure_cookie=settings.console_secure_cookie == "on",
        same_site=settings.console_same_site, oidc=oidc.login_of(settings))

def console_mount(api: ApiContext, client: redis.Redis | None = None) -> Mount:
    """``/ui`` with the console, and ``/ui`` itself redirecting to ``/ui/``."""
    return Mount("/ui", app=create_console(build_console(api, client)))
