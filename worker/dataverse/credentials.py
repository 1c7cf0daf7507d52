"""How the mirror signs in to Dataverse: the credential ``PROVISIONING_DATAVERSE_CREDENTIAL``
selects, behind one ``TokenSource`` (``token()`` and ``invalidate()``, as the client uses).

=============  ==========================================================  ================
credential     how                                                         needs
=============  ==========================================================  ================
secret         client credentials with the client secret (``TokenCache``)  nothing more
certificate    client credentials with a client assertion: a JWT signed    ``cryptography``
               with the certificate's private key (``CertificateTokens``)
workload       azure-identity ``WorkloadIdentityCredential`` (AKS)         ``azure-identity``
managed        azure-identity ``ManagedIdentityCredential`` (VM, AKS)      ``azure-identity``
default        azure-identity ``DefaultAzureCredential``                   ``azure-identity``
=============  ==========================================================  ================

The ``[azure]`` extra installs both. Why the certificate is not azure-identity's
``CertificateCredential``: azure-identity refuses an authority that is not https
("The value must be a TLS protected (https) URL"), and that credential goes through MSAL,
which reads the authority's OpenID metadata before the first token. Signing the assertion
here needs only ``cryptography``, runs on the same ``TokenCache`` as the secret (a 401 gets
a fresh token; azure-identity's cache offers no forced refresh) and is tested over plain
HTTP against the emulator. The assertion is Microsoft's documented format
(learn.microsoft.com, "Microsoft identity platform application authentication
certificate credentials"): header ``alg`` RS256, ``typ``
JWT, ``x5t`` the base64url SHA-1 thumbprint; claims ``aud`` the token endpoint, ``iss`` and
``sub`` the client id, ``jti``, ``nbf``, ``iat``, ``exp``. Building it here keeps one token
path (refresh margin, 401 invalidation, error translation) for secret and certificate.

Tokens never reach a log: ``AccessToken.value`` is ``repr=False`` and only
``dataverse.token_fetched`` with the lifetime is logged.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import httpx
import structlog

from worker.dataverse.auth import AccessToken, TokenCache
from worker.dataverse.errors import DataverseAuthError, DataverseUnavailable
from worker.dataverse.settings import AZURE_EXTRA, MirrorSettings
from worker.errors import ConfigurationError
from worker.settings import PREFIX

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

log = structlog.get_logger("worker.dataverse")

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_SECONDS = 600  # an assertion is good for one token request; ten minutes is ample


class TokenSource(Protocol):
    """Bearer tokens for the Web API, cached; ``invalidate`` after a 401."""

    def token(self) -> str: ...

    def invalidate(self, value: str | None = None) -> None: ...


def b64url(data: bytes) -> str:
    """Base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class ClientCertificate:
    """An app registration's certificate: the RSA private key that signs, and the
    thumbprint Entra ID finds the registered certificate by."""

    private_key: RSAPrivateKey = field(repr=False)
    thumbprint: str  # x5t: base64url SHA-1 of the DER certificate

    @classmethod
    def load(cls, pem: bytes, password: str | None = None) -> ClientCertificate:
        """From a PEM holding the private key and the certificate (what
        ``az ad sp create-for-rbac --create-cert`` writes); ValueError says what is wrong."""
        from cryptography import x509  # noqa: PLC0415 - the optional [azure] extra
        from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415 - optional extra
        from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey  # noqa: PLC0415 - optional extra

        try:
            key = serialization.load_pem_private_key(
                pem, password.encode() if password is not None else None)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"no readable private key ({exc})") from exc
        if not isinstance(key, RSAPrivateKey):
            raise ValueError("the private key must be RSA (Entra ID signs client "
                             "assertions with RS256)")
        try:
            certificate = x509.load_pem_x509_certificate(pem)
        except ValueError as exc:
            raise ValueError(f"no readable certificate ({exc})") from exc
        return cls(key, b64url(certificate.fingerprint(hashes.SHA1())))  # noqa: S303

    def assertion(self, client_id: str, audience: str, now: float) -> str:
        """A signed client assertion for one token request at ``audience``."""
        from cryptography.hazmat.primitives import hashes  # noqa: PLC0415 - optional extra
        from cryptography.hazmat.primitives.asymmetric import padding  # noqa: PLC0415 - optional extra

        header = {"alg": "RS256", "typ": "JWT", "x5t": self.thumbprint}
        issued = int(now)
        claims = {"aud": audience, "iss": client_id, "sub": client_id,
                  "jti": str(uuid.uuid4()), "nbf": issued, "iat": issued,
                  "exp": issued + ASSERTION_SECONDS}
        signing_input = ".".join(b64url(json.dumps(part, separators=(",", ":")).encode())
                                 for part in (header, claims))
        signature = self.private_key.sign(signing_input.encode("ascii"), padding.PKCS1v15(),
                                          hashes.SHA256())
        return f"{signing_input}.{b64url(signature)}"


class CertificateTokens(TokenCache):
    """Client credentials with a certificate: ``client_assertion`` instead of a secret."""

    def __init__(self, settings: MirrorSettings, http: httpx.Client,
                 certificate: ClientCertificate, *,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(settings, http, clock=clock)
        self.certificate = certificate
        self._now = clock

    def _client_credential(self) -> dict[str, str]:
        return {"client_assertion_type": ASSERTION_TYPE,
                "client_assertion": self.certificate.assertion(
                    self._settings.client_id, self._settings.token_url, self._now())}


class AzureIdentityTokens(TokenCache):
    """Tokens from an azure-identity credential, cached and refreshed early like the rest.

    azure-identity keeps its own cache too: after a 401 the next token is the one it still
    holds until it nears expiry (it has no way to force a refresh)."""

    def __init__(self, settings: MirrorSettings, http: httpx.Client,
                 credential: TokenCredential, *,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(settings, http, clock=clock)
        self.credential = credential

    def _fetch(self) -> AccessToken:
        from azure.core.exceptions import AzureError, ClientAuthenticationError  # noqa: PLC0415 - optional extra

        started = self._clock()
        try:
            access = self.credential.get_token(self._settings.scope)
        except ClientAuthenticationError as exc:  # CredentialUnavailableError too
            raise DataverseAuthError(type(exc).__name__, _first_line(exc)) from exc
        except AzureError as exc:
            raise DataverseUnavailable(type(exc).__name__, _first_line(exc)) from exc
        lifetime = float(access.expires_on) - time.time()  # expires_on: epoch seconds
        if not access.token or lifetime <= 0:
            raise DataverseAuthError("invalid_token_response",
                                     f"{type(self.credential).__name__} answered an expired "
                                     "or empty token")
        self.fetched += 1
        log.info("dataverse.token_fetched", expires_in=round(lifetime),
                 credential=self._settings.credential)
        return AccessToken(access.token, started + lifetime, lifetime)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def azure_credential(settings: MirrorSettings) -> TokenCredential:
    """The azure-identity credential for ``workload``, ``managed`` or ``default``, with the
    tenant and client id of the settings when given (else azure-identity reads its
    AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_FEDERATED_TOKEN_FILE)."""
    try:
        from azure import identity  # noqa: PLC0415 - the optional [azure] extra
    except ImportError as exc:
        raise ConfigurationError(f"{PREFIX}DATAVERSE_CREDENTIAL={settings.credential} needs "
                                 f"azure-identity: {AZURE_EXTRA}") from exc
    client_id = settings.client_id or None
    tenant_id = settings.tenant_id or None
    options: dict[str, Any] = {}
    try:
        if settings.credential == "workload":
            if tenant_id:
                options["tenant_id"] = tenant_id
            if client_id:
                options["client_id"] = client_id
            return identity.WorkloadIdentityCredential(authority=settings.authority_url,
                                                       **options)
        if settings.credential == "managed":
            return identity.ManagedIdentityCredential(client_id=client_id)
        if client_id:
            options.update(managed_identity_client_id=client_id,
                           workload_identity_client_id=client_id)
        if tenant_id:
            options["workload_identity_tenant_id"] = tenant_id
        return identity.DefaultAzureCredential(authority=settings.authority_url, **options)
    except ValueError as exc:  # azure-identity names what is missing (tenant, token file)
        raise ConfigurationError(f"{PREFIX}DATAVERSE_CREDENTIAL={settings.credential}: "
                                 f"{exc}") from exc


def token_source(settings: MirrorSettings, http: httpx.Client, *,
                 clock: Callable[[], float] = time.time) -> TokenSource:
    """The token source ``settings.credential`` selects; ConfigurationError when its
    certificate cannot be read or its credential cannot be built."""
    if settings.credential == "secret":
        return TokenCache(settings, http, clock=clock)
    if settings.credential == "certificate":
        variable = f"{PREFIX}DATAVERSE_CERTIFICATE_PATH"
        try:
            with open(str(settings.certificate_path), "rb") as file:
                pem = file.read()
            certificate = ClientCertificate.load(pem, settings.certificate_password)
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"{variable}: {settings.certificate_path}: {exc}") from exc
        except ImportError as exc:
            raise ConfigurationError(f"{PREFIX}DATAVERSE_CREDENTIAL=certificate needs the "
                                     f"cryptography package: {AZURE_EXTRA}") from exc
        return CertificateTokens(settings, http, certificate, clock=clock)
    return AzureIdentityTokens(settings, http, azure_credential(settings), clock=clock)
