"""The identity side of the Dataverse emulator beyond client secrets: certificate client
assertions at the token endpoint, and the managed identity endpoint (IMDS).

``check_client_assertion`` is what Entra ID checks in a ``client_assertion`` (RFC 7523,
learn.microsoft.com "certificate credentials"): a JWT whose header names ``RS256`` (or
``PS256``) and the ``x5t`` thumbprint of a certificate registered on the app, whose
signature that certificate's key verifies, whose ``iss`` and ``sub`` are the client id,
whose ``aud`` is this token endpoint and which is within ``nbf``..``exp``. With no
certificate registered the emulator accepts any well-formed assertion (as it accepts any
secret when none is configured), unless it checks a client secret: then it refuses one.

``imds_token`` answers ``GET /metadata/identity/oauth2/token?api-version=…&resource=…``
with ``Metadata: true``, as the Azure Instance Metadata Service does for a managed identity
(azure-identity goes there when ``AZURE_POD_IDENTITY_AUTHORITY_HOST`` points at the
emulator).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
IMDS_PATH = "/metadata/identity/oauth2/token"
CLOCK_SKEW = 300.0  # Entra ID tolerates five minutes


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _thumbprint(pem: bytes) -> tuple[str, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    certificate = x509.load_pem_x509_certificate(pem)
    digest = certificate.fingerprint(hashes.SHA1())  # noqa: S303 - x5t is SHA-1 by definition
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode(), certificate.public_key()


def check_client_assertion(form: Mapping[str, str], *, client_id: str, token_path: str,
                           certificates: Sequence[bytes], strict: bool,
                           now: float) -> str | None:
    """None when the form's client assertion is acceptable, else the AADSTS description.

    ``certificates``: PEM certificates registered on the app; ``strict``: the emulator
    checks credentials (refuse an assertion when no certificate is registered)."""
    if form.get("client_assertion_type") != ASSERTION_TYPE:
        return ("AADSTS50027: Invalid client_assertion_type; it must be "
                f"{ASSERTION_TYPE}.")
    parts = form.get("client_assertion", "").split(".")
    try:
        if len(parts) != 3:
            raise ValueError("not three parts")
        header = json.loads(_b64decode(parts[0]))
        claims = json.loads(_b64decode(parts[1]))
        signature = _b64decode(parts[2])
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise ValueError("not JSON objects")
    except (ValueError, UnicodeDecodeError):
        return "AADSTS50027: JWT token is invalid or malformed."
    alg = header.get("alg")
    if alg not in ("RS256", "PS256"):
        return f"AADSTS5002723: Invalid JWT token. Unsupported signing algorithm {alg!r}."
    if claims.get("iss") != client_id or claims.get("sub") != client_id:
        return ("AADSTS700021: Client assertion application identifier doesn't match "
                "'client_id' parameter.")
    if urlsplit(str(claims.get("aud", ""))).path.rstrip("/") != token_path.rstrip("/"):
        return ("AADSTS700212: No matching federated identity record found for presented "
                "assertion audience.")
    try:
        not_before, expires = float(claims["nbf"]), float(claims["exp"])
    except (KeyError, TypeError, ValueError):
        return "AADSTS50027: JWT token is invalid or malformed (nbf and exp are required)."
    if not not_before - CLOCK_SKEW <= now < expires + CLOCK_SKEW:
        return "AADSTS700024: Client assertion is not within its valid time range."
    if not certificates:
        if strict:
            return ("AADSTS700027: The certificate with identifier used to sign the client "
                    "assertion is not registered on application.")
        return None
    registered = dict(_thumbprint(pem) for pem in certificates)
    key = registered.get(str(header.get("x5t", "")))
    if key is None:
        return ("AADSTS700027: The certificate with identifier used to sign the client "
                "assertion is not registered on application.")
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    scheme = padding.PKCS1v15() if alg == "RS256" else padding.PSS(
        mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
    try:
        key.verify(signature, f"{parts[0]}.{parts[1]}".encode("ascii"), scheme,
                   hashes.SHA256())
    except (InvalidSignature, ValueError, TypeError):
        return "AADSTS700027: Client assertion contains an invalid signature."
    return None


class ImdsRefused(Exception):
    """An IMDS request the endpoint refuses: its status and error body."""

    def __init__(self, status: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.body = {"error": "invalid_request", "error_description": description}


def imds_request(method: str, query: str, headers: Mapping[str, str]) -> tuple[str, str]:
    """``(client_id, scope)``: the identity (``system`` for the system-assigned one, else
    the ``client_id`` asked for) and the scope to issue a token for; ImdsRefused when the
    request is not one IMDS answers (``headers``: lower-case names)."""
    if method != "GET":
        raise ImdsRefused(405, "The endpoint only accepts GET requests.")
    if headers.get("metadata", "").lower() != "true":
        raise ImdsRefused(400, "Required metadata header not specified")
    params = {k: v[0] for k, v in parse_qs(query).items()}
    if not params.get("api-version"):
        raise ImdsRefused(400, "Required query variable 'api-version' is missing")
    resource = params.get("resource", "")
    if not resource:
        raise ImdsRefused(400, "Required query variable 'resource' is missing")
    return params.get("client_id") or "system", resource.rstrip("/") + "/.default"
