"""Logging in and out: an API token pasted into the form, or Microsoft Entra ID (OIDC
authorization code with PKCE, worker/console/oidc.py).

The login form has a CSRF token of its own before any session exists: a random value set
in a short-lived signed cookie and echoed by the form (a page of another site can make
the browser post a form, never read the value). A token login keeps the token's id in the
session (never the token): revoking the token ends the session at its next request, and
the session ends when the token expires if that is sooner.
"""

from __future__ import annotations

import secrets
import time
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from worker.console.context import (
    Console,
    Refused,
    base,
    blocking,
    console,
    posted,
    read_form,
    show,
)
from worker.console.once import OneTimeLogins
from worker.console.session import COOKIE, LOGIN_COOKIE
from worker.http.auth import Identity, Role

LOGIN_SECONDS = 600  # the login form and the OIDC round trip must finish within this


def safe_next(request: Request, target: str | None) -> str:
    """Where to go after logging in: a path of the console, else its overview."""
    root = base(request) + "/"
    if target:
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc and parts.path.startswith(root) \
                and "\\" not in target:
            return target
    return root


def set_cookie(con: Console, response: Response, name: str, value: str, max_age: int,
               path: str, *, same_site: str | None = None) -> None:
    response.set_cookie(name, value, max_age=max_age, path=path, secure=con.secure_cookie,
                        httponly=True, samesite=same_site or con.same_site)  # type: ignore[arg-type]


def start_session(request: Request, identity: Identity, target: str,
                  token_id: str | None = None, until: float | None = None,
                  ) -> tuple[Response, str]:
    con = console(request)
    _, cookie = con.sessions.start(identity, token_id, until)
    response = RedirectResponse(target, status_code=303)
    path = base(request) + "/"
    set_cookie(con, response, COOKIE, cookie, int(con.sessions.lifetime), path)
    response.delete_cookie(LOGIN_COOKIE, path=path)
    return response, cookie


def _login_page(request: Request, status_code: int = 200, error: str | None = None,
                ) -> Response:
    con = console(request)
    nonce = secrets.token_urlsafe(24)
    value = con.sessions.signer.sign({"csrf": nonce, "at": time.time()})
    response = show(request, "login.html", None, status_code=status_code, error=error,
                    login_csrf=nonce, next=safe_next(request, request.query_params.get("next")),
                    oidc=con.oidc is not None)
    set_cookie(con, response, LOGIN_COOKIE, value, LOGIN_SECONDS, base(request) + "/",
               same_site="lax")
    return response


async def login_form(request: Request) -> Response:
    return _login_page(request)


async def login(request: Request) -> Response:
    """A pasted API token: any role may log in (a submitter reads, as a reader does)."""
    con = console(request)
    form = await read_form(request, max_fields=10)
    held = con.sessions.signer.read(request.cookies.get(LOGIN_COOKIE, ""))
    presented = form.get("csrf")
    if (held is None or not isinstance(presented, str)
            or not secrets.compare_digest(str(held.get("csrf", "")), presented)
            or time.time() - float(held.get("at", 0)) > LOGIN_SECONDS):  # type: ignore[arg-type]
        raise Refused(403, "the login form expired or its CSRF token is missing; reload it")
    token = form.get("token")
    target = safe_next(request, str(form.get("next") or ""))
    if not isinstance(token, str) or not token.strip():
        return _login_page(request, 400, "token: paste an API token (pst_…)")
    entry = await blocking(request, con.api.auth.tokens.verify, token.strip())
    if entry is None:
        return _login_page(request, 401, "token: not a valid API token (unknown, revoked "
                                         "or expired)")
    identity = Identity(name=entry.name, role=entry.role, via="token")
    response, _ = start_session(request, identity, target, entry.token_id, entry.expires_at)
    return response


async def once(request: Request) -> Response:
    """A one-time login link (``provisioning demo --console``): its first use logs in."""
    con = console(request)
    code = request.query_params.get("code", "")
    identity = await blocking(request, OneTimeLogins(con.client, con.keys).redeem, code)
    if identity is None:
        return _login_page(request, 401, "code: this one-time login link was used already "
                                         "or has expired; log in with a token")
    response, _ = start_session(request, identity, base(request) + "/")
    return response


async def logout(request: Request) -> Response:
    await posted(request, Role.READER)
    response = RedirectResponse(base(request) + "/login", status_code=303)
    response.delete_cookie(COOKIE, path=base(request) + "/")
    return response
