"""The console's sign-in with OIDC (authorization code + PKCE) against the local issuer of
tests/unit/oidc_issuer.py, which signs users in as Entra ID would (no login page)."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.unit.console_support import BASE, Client, ConsoleHarness
from tests.unit.oidc_issuer import AUDIENCE, Issuer, running_issuer
from worker.console.oidc import challenge
from worker.settings import BackendSettings, Settings

CLIENT_ID = "11111111-2222-3333-4444-555555555555"


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    with running_issuer() as running:
        yield running


@pytest.fixture
def console(issuer: Issuer) -> ConsoleHarness:
    return ConsoleHarness(settings=Settings(
        key_prefix="test", oidc_issuer=issuer.url, oidc_audience=AUDIENCE,
        console_oidc_client_id=CLIENT_ID, console_oidc_client_secret="s3cret",
        backends=BackendSettings(provisioner_url="http://backends.test",
                                 gatekeeper_url="http://backends.test",
                                 calling_test_url="http://backends.test")))


def sign_in(client: Client, target: str = "/ui/failed") -> httpx.Response:
    """Start at the console, let the issuer sign in, come back to the callback."""
    started = client.get(f"/ui/login/oidc?next={target}")
    assert started.status_code == 303, started.text
    at_issuer = httpx.get(started.headers["location"], follow_redirects=False)
    assert at_issuer.status_code == 302
    back = urlsplit(at_issuer.headers["location"])
    assert f"{back.scheme}://{back.netloc}" == BASE
    return client.get(f"{back.path}?{back.query}")


def test_signing_in_with_pkce_starts_a_session_with_the_app_role(
    console: ConsoleHarness, issuer: Issuer,
) -> None:
    client = console.client()
    assert "Sign in with Microsoft" in client.get("/ui/login").text
    started = client.get("/ui/login/oidc?next=/ui/failed")
    query = parse_qs(urlsplit(started.headers["location"]).query)
    assert started.headers["location"].startswith(f"{issuer.url}/authorize?")
    assert query["client_id"] == [CLIENT_ID]
    assert query["redirect_uri"] == [f"{BASE}/ui/auth/callback"]
    assert query["code_challenge_method"] == ["S256"]
    assert query["response_type"] == ["code"] and "openid" in query["scope"][0]
    cookie = next(v for k, v in started.headers.multi_items() if k == "set-cookie")
    assert "SameSite=lax" in cookie and "HttpOnly" in cookie  # must come back from the issuer
    client = console.client()
    answer = sign_in(client)
    assert answer.status_code == 200
    assert 'http-equiv="refresh" content="0;url=/ui/failed"' in answer.text
    [redeemed] = issuer.redeemed
    assert redeemed["client_secret"] == "s3cret"
    assert challenge(redeemed["code_verifier"]) != redeemed["code_verifier"]
    page = client.get("/ui/failed")
    assert page.status_code == 200
    assert "olga@contoso.example" in page.text and "operator" in page.text


def test_a_user_without_an_app_role_is_refused(console: ConsoleHarness,
                                               issuer: Issuer) -> None:
    issuer.user = {"preferred_username": "eve@contoso.example", "roles": ["Other.Role"]}
    answer = sign_in(console.client())
    assert answer.status_code == 403
    assert "none of the app roles" in answer.text


def test_a_wrong_nonce_is_refused(console: ConsoleHarness, issuer: Issuer) -> None:
    issuer.user = {**issuer.user, "nonce": "replayed-from-elsewhere"}
    answer = sign_in(console.client())
    assert answer.status_code == 401
    assert "nonce" in answer.text


def test_a_callback_this_browser_did_not_start_is_refused(console: ConsoleHarness) -> None:
    started = console.client().get("/ui/login/oidc")
    at_issuer = httpx.get(started.headers["location"], follow_redirects=False)
    back = urlsplit(at_issuer.headers["location"])
    stranger = console.client()  # no login cookie: a code injected into another browser
    answer = stranger.get(f"{back.path}?{back.query}")
    assert answer.status_code == 400
    assert "state:" in answer.text


def test_a_used_code_and_an_issuer_error_are_refused(console: ConsoleHarness) -> None:
    client = console.client()
    started = client.get("/ui/login/oidc")
    at_issuer = httpx.get(started.headers["location"], follow_redirects=False)
    back = urlsplit(at_issuer.headers["location"])
    again = console.client()
    again.cookies = httpx.Cookies(client.cookies)  # the same sign-in, replayed
    assert client.get(f"{back.path}?{back.query}").status_code == 200
    state = parse_qs(back.query)["state"][0]
    reused = again.get(f"{back.path}?{back.query}")
    assert reused.status_code == 401
    assert "the issuer refused the sign-in code: unknown or used code" in reused.text
    denied = client.get(f"/ui/auth/callback?error=access_denied&state={state}"
                        "&error_description=the+user+said+no")
    assert denied.status_code == 401 and "the user said no" in denied.text
    no_code = client.get("/ui/login/oidc")
    state = parse_qs(urlsplit(no_code.headers["location"]).query)["state"][0]
    assert client.get(f"/ui/auth/callback?state={state}").status_code == 400


def test_an_issuer_that_is_down_is_a_503(console: ConsoleHarness, issuer: Issuer) -> None:
    issuer.down = True
    answer = console.client().get("/ui/login/oidc")
    assert answer.status_code == 503
    assert "discovery document" in answer.text


def test_without_a_client_id_there_is_no_oidc_sign_in() -> None:
    console = ConsoleHarness()
    assert console.client().get("/ui/login/oidc").status_code == 404
    assert console.client().get("/ui/auth/callback?code=x&state=y").status_code == 404
