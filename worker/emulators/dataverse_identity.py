"""The identity side of the Dataverse emulator beyond client secrets: certificate client
assertions at the token endpoint, and the managed identity endpoint (IMDS).

``check_client_assertion`` is what Entra ID checks in a ``client_assertion`` (RFC 7523,
learn.microsoft.com "certificate credentials"): a JWT whose header names ``RS256`` (or
``PS256``) and the ``x5t`` thumbprint of a certificate registered on the app, whose
signature that certificate's key verifies, whose ``iss`` and ``sub`` are the client id,
whose ``aud`` is this token endpoint and which is within ``nbf``..``exp``. With no
certificate registered the emulator accepts any well-formed assertion (as it accepts any
secret when none is configured), unless it checks a client secret: then it refuses one.
An assertion whose ``iss`` is not the client id is a workload identity's federated token,
accepted for a ``FederatedCredential`` of the same issuer and subject, audience
``api://AzureADTokenExchange``, signed with that issuer's key.

``imds_token`` answers ``GET /metadata/identity/oauth2/token?api-version=…&resource=…``
with ``Metadata: true``, as the Azure Instance Metadata Service does for a managed identity
(azure-identity goes there when ``AZURE_POD_IDENTITY_AUTHORITY_HOST`` points at the
emulator).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
IMDS_PATH = "/metadata/identity/oauth2/token"
CLOCK_SKEW = 300.0  # Entra ID tolerates five minutes
FEDERATED_AUDIENCE = "api://AzureADTokenExchange"  # what workload identity tokens are for


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _thumbprint(pem: bytes) -> tuple[str, Any]:
    from cryptography import x509  # noqa: PLC0415 - optional extra
    from cryptography.hazmat.primitives import hashes  # noqa: PLC0415 - optional extra

    certificate = x509.load_pem_x509_certificate(pem)
    digest = certificate.fingerprint(hashes.SHA1())  # noqa: S303 - x5t is SHA-1 by definition
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode(), certificate.public_key()


@dataclass(frozen=True)
class FederatedCredential:
    """A federated identity credential on the app (workload identity): tokens that
    ``issuer`` (an AKS cluster's OIDC issuer) signs for ``subject``
    (``system:serviceaccount:<namespace>:<name>``). Entra ID fetches the issuer's signing
    keys from its discovery document; the emulator is given the public key (PEM)."""

    issuer: str
    subject: str
    public_key: bytes
    audience: str = FEDERATED_AUDIENCE


def _verify(key: Any, alg: str, parts: Sequence[str], signature: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature  # noqa: PLC0415 - optional extra
    from cryptography.hazmat.primitives import hashes  # noqa: PLC0415 - optional extra
    from cryptography.hazmat.primitives.asymmetric import padding  # noqa: PLC0415 - optional extra

    scheme = padding.PKCS1v15() if alg == "RS256" else padding.PSS(
        mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
    try:
        key.verify(signature, f"{parts[0]}.{parts[1]}".encode("ascii"), scheme,
                   hashes.SHA256())
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def check_client_assertion(form: Mapping[str, str], *, client_id: str, token_path: str,
                           certificates: Sequence[bytes], strict: bool, now: float,
                           federated: Sequence[FederatedCredential] = ()) -> str | None:
    """None when the form's client assertion is acceptable, else the AADSTS description.

    ``certificates``: PEM certificates registered on the app; ``strict``: the emulator
    checks credentials (refuse an assertion when no certificate is registered);
    ``federated``: the app's federated credentials (an assertion whose ``iss`` is not the
    client id is checked against them)."""
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
    try:
        not_before = float(claims["nbf"] if "nbf" in claims else claims["iat"])
        expires = float(claims["exp"])
    except (KeyError, TypeError, ValueError):
        return "AADSTS50027: JWT token is invalid or malformed (iat or nbf, and exp)."
    if not not_before - CLOCK_SKEW <= now < expires + CLOCK_SKEW:
        return "AADSTS700024: Client assertion is not within its valid time range."
    if claims.get("iss") != client_id and federated:
        return _check_federated(claims, federated, str(alg), parts, signature)
    if claims.get("iss") != client_id or claims.get("sub") != client_id:
        return ("AADSTS700021: Client assertion application identifier doesn't match "
                "'client_id' parameter.")
    if urlsplit(str(claims.get("aud", ""))).path.rstrip("/") != token_path.rstrip("/"):
        return ("AADSTS700212: No matching federated identity record found for presented "
                "assertion audience.")
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
    if not _verify(key, str(alg), parts, signature):
        return "AADSTS700027: Client assertion contains an invalid signature."
    return None


def _check_federated(claims: Mapping[str, Any], federated: Sequence[FederatedCredential],
                     alg: str, parts: Sequence[str], signature: bytes) -> str | None:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - optional extra

    match = next((f for f in federated if f.issuer == claims.get("iss")
                  and f.subject == claims.get("sub")), None)
    if match is None:
        return (f"AADSTS70021: No matching federated identity record found for presented "
                f"assertion. Assertion Issuer: '{claims.get('iss')}'. Assertion Subject: "
                f"'{claims.get('sub')}'.")
    audience = claims.get("aud")
    audiences = audience if isinstance(audience, list) else [audience]
    if match.audience not in audiences:
        return ("AADSTS700212: No matching federated identity record found for presented "
                "assertion audience.")
    key = serialization.load_pem_public_key(match.public_key)
    if not _verify(key, alg, parts, signature):
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


def imds_token(token: str, client_id: str, scope: str, lifetime: int, now: int,
               ) -> dict[str, str]:
    """IMDS's answer carrying ``token`` (its numbers are strings, as IMDS sends them)."""
    return {"access_token": token, "client_id": client_id, "expires_in": str(lifetime),
            "expires_on": str(now + lifetime), "ext_expires_in": str(lifetime),
            "not_before": str(now), "resource": scope[:-len("/.default")],
            "token_type": "Bearer"}
