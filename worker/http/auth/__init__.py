"""Authentication and roles of the HTTP API (SPEC §8).

``Authenticator.identify(authorization)`` turns an ``Authorization`` header into an
``Identity`` or raises: API tokens (``pst_…``, tokens.py) are checked against Redis on
every request; anything else is a JWT for the OIDC issuer (oidc.py) when one is set.
"""

from __future__ import annotations

from worker.http.auth.errors import (
    AuthError,
    Forbidden,
    IssuerUnavailable,
    TokenExists,
    Unauthenticated,
)
from worker.http.auth.oidc import OidcVerifier, identity_of
from worker.http.auth.roles import APP_ROLES, Identity, Role, role_from_app_roles
from worker.http.auth.tokens import ApiToken, NewToken, RedisTokenStore, valid_name


class Authenticator:
    """Both kinds of credentials; ``oidc`` None: API tokens only."""

    def __init__(self, tokens: RedisTokenStore, oidc: OidcVerifier | None = None) -> None:
        self.tokens = tokens
        self.oidc = oidc

    def identify(self, authorization: str | None) -> Identity:
        """Who sent ``Authorization: Bearer <token>``; Unauthenticated when nobody valid."""
        if not authorization:
            raise Unauthenticated("credentials are required: Authorization: Bearer <token>")
        scheme, _, credentials = authorization.strip().partition(" ")
        credentials = credentials.strip()
        if scheme.lower() != "bearer" or not credentials:
            raise Unauthenticated("use Authorization: Bearer <token>")
        if credentials.startswith("pst_"):
            entry = self.tokens.verify(credentials)
            if entry is None:
                raise Unauthenticated("the API token is not valid (unknown, revoked or expired)")
            return Identity(name=entry.name, role=entry.role, via="token")
        if self.oidc is None:
            raise Unauthenticated("not an API token, and OIDC is not configured")
        return self.oidc.verify(credentials)

    def authorize(self, authorization: str | None, needed: Role) -> Identity:
        """``identify``, then Forbidden unless the identity's role may do what ``needed``."""
        identity = self.identify(authorization)
        if not identity.may(needed):
            raise Forbidden(f"{identity.name} is a {identity.role.label}; this needs the "
                            f"{needed.label} role")
        return identity


__all__ = [
    "APP_ROLES",
    "ApiToken",
    "AuthError",
    "Authenticator",
    "Forbidden",
    "Identity",
    "IssuerUnavailable",
    "NewToken",
    "OidcVerifier",
    "RedisTokenStore",
    "Role",
    "TokenExists",
    "Unauthenticated",
    "identity_of",
    "role_from_app_roles",
    "valid_name",
]
