"""OIDC bearer JWTs (SPEC §8): Microsoft Entra ID access tokens, or any issuer's.

A JWT is accepted when PyJWT verifies it (no crypto of ours): an RS256 or ES256 signature
by a key of the issuer's JWKS (the header's ``alg`` must be the key's), ``iss`` equal to
PROVISIONING_OIDC_ISSUER, ``aud`` containing PROVISIONING_OIDC_AUDIENCE, ``exp`` in the
future and ``nbf`` (when present) in the past, both with PROVISIONING_OIDC_LEEWAY_SECONDS
of clock skew allowed. Its ``roles`` claim (Entra app roles) gives the role; its
``preferred_username``, else ``upn``, else ``sub``, the name actions are audited under.

Keys: the JWKS (PROVISIONING_OIDC_JWKS_URL, else ``jwks_uri`` of the issuer's
``/.well-known/openid-configuration``) is fetched once and kept for
PROVISIONING_OIDC_JWKS_CACHE_SECONDS. A token signed by a key id not in the cache (the
issuer rotated its keys) fetches it again at once, at most once per ``REFETCH_SECONDS``,
so forged key ids cannot make every request call the issuer. When a fetch fails, the keys
already held go on being used; with none held, the request gets a 503.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import jwt

from worker.http.auth.errors import Forbidden, IssuerUnavailable, Unauthenticated
from worker.http.auth.roles import APP_ROLES, Identity, role_from_app_roles

ALGORITHMS = ("RS256", "ES256")
REFETCH_SECONDS = 10.0


class OidcVerifier:
    """Verifies bearer JWTs of one issuer for one audience; thread-safe."""

    def __init__(self, issuer: str, audience: str, *, jwks_url: str | None = None,
                 http: httpx.Client | None = None, leeway: float = 60.0,
                 cache_seconds: float = 300.0, clock: Callable[[], float] = time.monotonic,
                 refetch_seconds: float = REFETCH_SECONDS) -> None:
        self.issuer = issuer
        self.audience = audience
        self.jwks_url = jwks_url
        self.http = http or httpx.Client(timeout=httpx.Timeout(5.0))
        self.leeway = leeway
        self.cache_seconds = cache_seconds
        self.refetch_seconds = refetch_seconds
        self.clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._lock = threading.Lock()

    def verify(self, token: str) -> Identity:
        """The identity of a valid token. Unauthenticated (401) for any token that is not
        valid, Forbidden (403) for a valid one with none of the app roles,
        IssuerUnavailable (503) when no signing key can be had."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("the bearer token is not a valid JWT") from None
        kid, alg = header.get("kid"), header.get("alg")
        if alg not in ALGORITHMS:
            raise Unauthenticated(f"JWTs must be signed with {' or '.join(ALGORITHMS)}")
        if not isinstance(kid, str):
            raise Unauthenticated("the JWT names no signing key (kid)")
        key = self._key(kid)
        if key is None or key.algorithm_name != alg:
            raise Unauthenticated("the JWT is not signed by a key of the issuer")
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key=key.key, algorithms=[alg], audience=self.audience,
                issuer=self.issuer, leeway=self.leeway,
                options={"require": ["exp", "iss", "aud"]})
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the JWT has expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated("the JWT is not valid yet (nbf)") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated("the JWT is for another audience") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated("the JWT is from another issuer") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated("the JWT's signature does not verify") from None
        except jwt.PyJWTError as exc:
            # PyJWT's messages name claims, never the token's content.
            raise Unauthenticated(f"the JWT is not valid: {exc}") from None
        return identity_of(claims)

    def _key(self, kid: str) -> jwt.PyJWK | None:
        with self._lock:
            now = self.clock()
            fresh = (self._fetched_at is not None
                     and now - self._fetched_at < self.cache_seconds)
            may_refetch = (self._fetched_at is None
                           or now - self._fetched_at >= self.refetch_seconds)
            if not fresh or (kid not in self._keys and may_refetch):
                self._refresh(now)
            return self._keys.get(kid)

    def _refresh(self, now: float) -> None:
        """Fetch the JWKS; on failure keep the keys held (503 only when there are none)."""
        try:
            url = self.jwks_url or self._discover()
            reply = self.http.get(url)
            reply.raise_for_status()
            keys = {key.key_id: key for key in jwt.PyJWKSet.from_dict(reply.json()).keys
                    if key.key_id and key.algorithm_name in ALGORITHMS}
        except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
            self._fetched_at = now  # a failing issuer is asked again after refetch_seconds
            if not self._keys:
                raise IssuerUnavailable(
                    f"the OIDC issuer's signing keys could not be fetched "
                    f"({type(exc).__name__})") from None
            return
        self._keys, self._fetched_at = keys, now

    def _discover(self) -> str:
        reply = self.http.get(self.issuer.rstrip("/") + "/.well-known/openid-configuration")
        reply.raise_for_status()
        url = reply.json().get("jwks_uri")
        if not isinstance(url, str):
            raise ValueError("the discovery document has no jwks_uri")
        self.jwks_url = url
        return url

    def close(self) -> None:
        self.http.close()


def identity_of(claims: Mapping[str, Any]) -> Identity:
    """The identity a verified JWT's claims give; Forbidden without one of our app roles."""
    roles = claims.get("roles")
    role = role_from_app_roles(roles if isinstance(roles, list) else [])
    name = next((claims[c] for c in ("preferred_username", "upn", "sub")
                 if isinstance(claims.get(c), str) and claims[c]), None)
    if name is None:
        raise Unauthenticated("the JWT names no user (preferred_username, upn or sub)")
    if role is None:
        raise Forbidden(f"the JWT carries none of the app roles {', '.join(APP_ROLES)}")
    return Identity(name=name, role=role, via="oidc")
