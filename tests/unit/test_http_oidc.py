"""OIDC bearer JWTs against a local issuer (keys made in the test, JWKS on loopback):
valid, expired, not yet valid, wrong audience, wrong issuer, wrong key, rotated key,
missing role, unsupported algorithms, an issuer that is down, and the API's answers."""

from __future__ import annotations

import time
from collections.abc import Iterator

import jwt
import pytest

from tests.unit.http_support import make_api
from tests.unit.oidc_issuer import AUDIENCE, Issuer, SigningKey, running_issuer
from worker.http.auth import (
    Forbidden,
    IssuerUnavailable,
    OidcVerifier,
    Role,
    Unauthenticated,
    identity_of,
)
from worker.service import Service


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    with running_issuer() as running:
        yield running


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def verifier(issuer: Issuer, clock: Clock) -> Iterator[OidcVerifier]:
    made = OidcVerifier(issuer.url, AUDIENCE, leeway=30, cache_seconds=300, clock=clock)
    yield made
    made.close()


def test_a_valid_token_gives_the_user_and_the_highest_role(
    issuer: Issuer, verifier: OidcVerifier
) -> None:
    identity = verifier.verify(issuer.token(
        roles=["Provisioning.Reader", "Provisioning.Submitter", "Other.Role"]))
    assert (identity.name, identity.role, identity.via) == (
        "ana@contoso.example", Role.SUBMITTER, "oidc")
    assert issuer.fetches == 1  # discovery document, then the JWKS once
    verifier.verify(issuer.token())
    assert issuer.fetches == 1  # cached


def test_an_es256_token_is_accepted(issuer: Issuer, verifier: OidcVerifier) -> None:
    ec_key = SigningKey("ec-1", "ES256")
    issuer.keys.append(ec_key)
    assert verifier.verify(issuer.token(key=ec_key)).role is Role.OPERATOR


@pytest.mark.parametrize(("claims", "reason"), [
    ({"lifetime": -120}, "expired"),
    ({"not_before": 600}, "not valid yet"),  # seconds from now, when the test runs
    ({"audience": "api://someone-else"}, "another audience"),
    ({"issuer": "https://login.microsoftonline.com/other/v2.0"}, "another issuer"),
])
def test_a_token_with_a_wrong_claim_is_refused(
    issuer: Issuer, verifier: OidcVerifier, claims: dict[str, object], reason: str,
) -> None:
    if "not_before" in claims:
        claims = {"not_before": time.time() + float(claims["not_before"])}  # type: ignore[arg-type]
    with pytest.raises(Unauthenticated, match=reason):
        verifier.verify(issuer.token(**claims))  # type: ignore[arg-type]


def test_small_clock_skew_is_allowed(issuer: Issuer, verifier: OidcVerifier) -> None:
    verifier.verify(issuer.token(lifetime=-10))  # expired 10 s ago, within 30 s of leeway
    verifier.verify(issuer.token(not_before=time.time() + 10))


def test_a_token_signed_by_another_key_with_a_known_kid_is_refused(
    issuer: Issuer, verifier: OidcVerifier
) -> None:
    forger = SigningKey("key-1")  # same kid, different key
    with pytest.raises(Unauthenticated, match="signature does not verify"):
        verifier.verify(issuer.token(key=forger))


def test_a_token_signed_by_an_unknown_key_is_refused(
    issuer: Issuer, verifier: OidcVerifier
) -> None:
    with pytest.raises(Unauthenticated, match="not signed by a key of the issuer"):
        verifier.verify(issuer.token(key=SigningKey("stranger")))


def test_a_rotated_key_is_fetched_at_once_and_unknown_kids_do_not_flood_the_issuer(
    issuer: Issuer, verifier: OidcVerifier, clock: Clock
) -> None:
    verifier.verify(issuer.token())
    fetches = issuer.fetches
    clock.now += 11  # past the refetch interval, well within the cache time
    rotated = SigningKey("key-2")
    issuer.keys = [rotated]  # the issuer rotated its signing key
    identity = verifier.verify(issuer.token(key=rotated))
    assert identity.role is Role.OPERATOR
    assert issuer.fetches == fetches + 1
    for _ in range(5):  # forged kids within the refetch interval: no fetch each time
        with pytest.raises(Unauthenticated):
            verifier.verify(issuer.token(key=SigningKey("forged")))
    assert issuer.fetches == fetches + 1
    with pytest.raises(Unauthenticated):  # the old key is gone from the JWKS
        verifier.verify(issuer.token(key=SigningKey("key-1")))


def test_the_keys_are_fetched_again_after_the_cache_time(
    issuer: Issuer, verifier: OidcVerifier, clock: Clock
) -> None:
    verifier.verify(issuer.token())
    before = issuer.fetches
    clock.now += 301
    verifier.verify(issuer.token())
    assert issuer.fetches == before + 1


def test_a_token_without_one_of_the_app_roles_is_forbidden(
    issuer: Issuer, verifier: OidcVerifier
) -> None:
    with pytest.raises(Forbidden, match=r"Provisioning\.Reader"):
        verifier.verify(issuer.token(roles=["Some.Other.Role"]))
    with pytest.raises(Forbidden):
        verifier.verify(issuer.token(roles=[]))


@pytest.mark.parametrize("algorithm", ["HS256", "none"])
def test_symmetric_and_unsigned_tokens_are_refused(
    issuer: Issuer, verifier: OidcVerifier, algorithm: str
) -> None:
    payload = {"iss": issuer.url, "aud": AUDIENCE, "exp": int(time.time()) + 60,
               "sub": "x", "roles": ["Provisioning.Operator"]}
    key = "shared-secret-that-is-long-enough-for-hs256!" if algorithm == "HS256" else None
    forged = jwt.encode(payload, key, algorithm=algorithm, headers={"kid": "key-1"})
    with pytest.raises(Unauthenticated, match="RS256 or ES256"):
        verifier.verify(forged)


def test_garbage_is_not_a_jwt(verifier: OidcVerifier) -> None:
    with pytest.raises(Unauthenticated, match="not a valid JWT"):
        verifier.verify("not.a.jwt")


def test_an_issuer_that_is_down_gives_503_until_keys_are_had_then_cached_keys_serve(
    issuer: Issuer, clock: Clock
) -> None:
    verifier = OidcVerifier(issuer.url, AUDIENCE, jwks_url=f"{issuer.url}/keys", clock=clock)
    issuer.down = True
    with pytest.raises(IssuerUnavailable):
        verifier.verify(issuer.token())
    issuer.down = False
    clock.now += 11
    verifier.verify(issuer.token())
    issuer.down = True
    clock.now += 400  # past the cache time: the refresh fails, the held keys still serve
    assert verifier.verify(issuer.token()).role is Role.OPERATOR
    verifier.close()


def test_the_name_is_preferred_username_else_upn_else_sub() -> None:
    roles = {"roles": ["Provisioning.Reader"]}
    assert identity_of({**roles, "preferred_username": "a", "upn": "b", "sub": "c"}).name == "a"
    assert identity_of({**roles, "upn": "b", "sub": "c"}).name == "b"
    assert identity_of({**roles, "sub": "c"}).name == "c"
    with pytest.raises(Unauthenticated):
        identity_of(roles)


# -- through the API -------------------------------------------------------------------


def test_the_api_maps_jwts_to_401_403_and_audits_the_jwt_user(
    issuer: Issuer, verifier: OidcVerifier, memory_service: Service,
    capsys: pytest.CaptureFixture[str],
) -> None:
    api = make_api(memory_service, oidc=verifier)
    reader = issuer.token(roles=["Provisioning.Reader"])
    assert api.get("/api/v1/records", token=reader).status_code == 200
    denied = api.post("/api/v1/events", token=reader, json={})
    assert denied.status_code == 403
    assert denied.headers["content-type"] == "application/problem+json"
    no_role = api.get("/api/v1/records", token=issuer.token(roles=[]))
    assert no_role.status_code == 403
    expired = issuer.token(lifetime=-3600)
    answer = api.get("/api/v1/records", token=expired)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert "expired" in answer.json()["detail"]
    wrong_audience = api.get("/api/v1/records", token=issuer.token(audience="api://x"))
    assert wrong_audience.status_code == 401
    # No JWT in a log line or an answer.
    out, err = capsys.readouterr()
    for token in (reader, expired):
        assert token not in out + err + answer.text + denied.text
        assert token.split(".")[2] not in out + err


def test_without_oidc_a_jwt_is_unauthenticated(
    issuer: Issuer, memory_service: Service
) -> None:
    api = make_api(memory_service)
    answer = api.get("/api/v1/records", token=issuer.token())
    assert answer.status_code == 401
    assert "OIDC is not configured" in answer.json()["detail"]
