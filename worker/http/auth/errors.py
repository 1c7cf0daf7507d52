"""The authentication errors, mapped to problem documents by the app::

    AuthError
    ├── Unauthenticated   no valid credentials: 401 with WWW-Authenticate: Bearer
    ├── Forbidden         valid credentials, a role that may not: 403
    └── IssuerUnavailable the OIDC issuer's keys cannot be fetched: 503

Messages never quote a token, a JWT or a secret.
"""

from __future__ import annotations


class AuthError(Exception):
    """Root of the authentication errors."""


class Unauthenticated(AuthError):
    """No credentials, or credentials that are not valid (unknown, revoked, expired)."""


class Forbidden(AuthError):
    """Valid credentials whose role may not do this."""


class IssuerUnavailable(AuthError):
    """The OIDC issuer's signing keys could not be fetched (and none are cached)."""


class TokenExists(ValueError):
    """``token create`` of a name that already has a token."""
