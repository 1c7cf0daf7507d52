"""Signing in with Microsoft Entra ID: the OIDC authorization-code flow with PKCE.

``/ui/login/oidc`` sends the browser to the issuer's authorization endpoint with a fresh
``state``, ``nonce`` and PKCE challenge (S256); the verifier and the rest wait in a
signed, short-lived cookie (SameSite=Lax: it must come back on the issuer's redirect).
``/ui/auth/callback`` checks the state, redeems the code at the token endpoint with the
verifier (and the client secret when one is set), verifies the ID token with the API's
``OidcVerifier`` (signature by the issuer's keys, issuer, audience = the client id,
expiry) and its nonce, and takes the user and role from its claims as the API does
(``preferred_username``; the ``roles`` app roles; none of ours is a 403).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from worker.console.context import Refused, base, blocking, console, show
from worker.console.login import LOGIN_SECONDS, safe_next, set_cookie, start_session
from worker.console.session import LOGIN_COOKIE
from worker.http.auth import Forbidden, IssuerUnavailable, OidcVerifier, Unauthenticated
from worker.settings import Settings

SCOPE = "openid profile"


@dataclass
class OidcLogin:
    """One issuer and one client: its endpoints (discovered once) and the ID token check."""

    issuer: str
    client_id: str
    client_secret: str | None
    verifier: OidcVerifier
    http: httpx.Client
    endpoints: dict[str, str] | None = None

    def discover(self) -> dict[str, str]:
        if self.endpoints is None:
            try:
                reply = self.http.get(self.issuer.rstrip("/")
                                      + "/.well-known/openid-configuration")
                reply.raise_for_status()
                document = reply.json()
            except (httpx.HTTPError, ValueError) as exc:
                raise IssuerUnavailable(f"the OIDC issuer's discovery document could not be "
                                        f"read ({type(exc).__name__})") from None
            found = {name: document.get(name) for name in ("authorization_endpoint",
                                                           "token_endpoint")}
            if not all(isinstance(url, str) for url in found.values()):
                raise IssuerUnavailable("the OIDC discovery document names no authorization "
                                        "or token endpoint")
            self.endpoints = {name: str(url) for name, url in found.items()}
        return self.endpoints

    def redeem(self, code: str, redirect_uri: str, code_verifier: str) -> str:
        """The ID token the token endpoint gives for ``code``."""
        form = {"grant_type": "authorization_code", "code": code,
                "redirect_uri": redirect_uri, "client_id": self.client_id,
                "code_verifier": code_verifier, "scope": SCOPE}
        if self.client_secret:
            form["client_secret"] = self.client_secret
        try:
            reply = self.http.post(self.discover()["token_endpoint"], data=form)
            body = reply.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise IssuerUnavailable(f"the OIDC token endpoint did not answer "
                                    f"({type(exc).__name__})") from None
        if reply.status_code != 200 or not isinstance(body.get("id_token"), str):
            why = body.get("error_description") or body.get("error") or reply.status_code
            raise Unauthenticated(f"the issuer refused the sign-in code: {why}")
        token: str = body["id_token"]
        return token


def login_of(settings: Settings) -> OidcLogin | None:
    if not (settings.oidc_issuer and settings.console_oidc_client_id):
        return None
    return OidcLogin(
        issuer=settings.oidc_issuer, client_id=settings.console_oidc_client_id,
        client_secret=settings.console_oidc_client_secret,
        verifier=OidcVerifier(settings.oidc_issuer, settings.console_oidc_client_id,
                              jwks_url=settings.oidc_jwks_url,
                              leeway=settings.oidc_leeway_seconds,
                              cache_seconds=settings.oidc_jwks_cache_seconds),
        http=httpx.Client(timeout=httpx.Timeout(10.0)))


def challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def redirect_uri(request: Request) -> str:
    return str(request.url.replace(path=base(request) + "/auth/callback", query=""))


def _login(request: Request) -> OidcLogin:
    found: OidcLogin | None = console(request).oidc
    if found is None:
        raise Refused(404, "OIDC sign-in is off (PROVISIONING_CONSOLE_OIDC_CLIENT_ID and "
                           "PROVISIONING_OIDC_ISSUER are not both set): log in with a token")
    return found


async def start(request: Request) -> Response:
    oidc = _login(request)
    try:
        endpoints = await blocking(request, oidc.discover)
    except IssuerUnavailable as exc:
        raise Refused(503, str(exc)) from None
    state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    code_verifier = secrets.token_urlsafe(64)
    query = urlencode({
        "response_type": "code", "client_id": oidc.client_id,
        "redirect_uri": redirect_uri(request), "scope": SCOPE, "state": state,
        "nonce": nonce, "code_challenge": challenge(code_verifier),
        "code_challenge_method": "S256", "response_mode": "query"})
    response = RedirectResponse(f"{endpoints['authorization_endpoint']}?{query}", 303)
    con = console(request)
    held = con.sessions.signer.sign({
        "state": state, "nonce": nonce, "verifier": code_verifier, "at": time.time(),
        "next": safe_next(request, request.query_params.get("next"))})
    set_cookie(con, response, LOGIN_COOKIE, held, LOGIN_SECONDS, base(request) + "/",
               same_site="lax")
    return response


def _finish(oidc: OidcLogin, code: str, uri: str, held: dict[str, Any]) -> Any:
    id_token = oidc.redeem(code, uri, str(held["verifier"]))
    identity = oidc.verifier.verify(id_token)
    # The signature was just verified: reading the claims again only fetches the nonce.
    claims = jwt.decode(id_token, options={"verify_signature": False})
    if not secrets.compare_digest(str(claims.get("nonce", "")), str(held["nonce"])):
        raise Unauthenticated("the ID token's nonce is not this sign-in's")
    return identity


async def callback(request: Request) -> Response:
    oidc = _login(request)
    params = request.query_params
    if params.get("error"):
        raise Refused(401, f"the issuer refused the sign-in: "
                           f"{params.get('error_description') or params['error']}")
    held = console(request).sessions.signer.read(request.cookies.get(LOGIN_COOKIE, ""))
    if (held is None or not params.get("state")
            or not secrets.compare_digest(str(held.get("state", "")), params["state"])
            or time.time() - float(held.get("at", 0)) > LOGIN_SECONDS):  # type: ignore[arg-type]
        raise Refused(400, "state: this sign-in was not started here, or took longer than "
                           f"{LOGIN_SECONDS // 60} minutes; sign in again")
    code = params.get("code")
    if not code:
        raise Refused(400, "code: the issuer's redirect carries no code")
    try:
        identity = await blocking(request, _finish, oidc, code, redirect_uri(request), held)
    except Forbidden as exc:
        raise Refused(403, str(exc)) from None
    except Unauthenticated as exc:
        raise Refused(401, str(exc)) from None
    except IssuerUnavailable as exc:
        raise Refused(503, str(exc)) from None
    target = safe_next(request, str(held.get("next") or ""))
    redirect, _ = start_session(request, identity, target)
    # A page, not a redirect: a SameSite=Strict cookie set on a navigation that began at
    # the issuer would not be sent on the redirect's request; this page's own link is.
    page = show(request, "signed_in.html", None, target=target, name=identity.name)
    for name, value in redirect.raw_headers:
        if name == b"set-cookie":
            page.raw_headers.append((name, value))
    return page
