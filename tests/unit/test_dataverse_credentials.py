"""Credentials the mirror signs in with (``worker.dataverse.credentials``): the selection by
settings, a certificate's client assertion checked by the emulator's token endpoint
(signature against the registered certificate), and azure-identity's credentials."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from structlog.testing import capture_logs

from tests.unit.test_dataverse_support import CLIENT, SECRET, TENANT, Clock, settings
from worker.dataverse import DataverseAuthError, DataverseClient, Pacer
from worker.dataverse.auth import TokenCache
from worker.dataverse.credentials import (
    AzureIdentityTokens,
    CertificateTokens,
    ClientCertificate,
    token_source,
)
from worker.dataverse.settings import MirrorSettings
from worker.emulators import DataverseEmulator, Emulator
from worker.errors import ConfigurationError


def certificate_pem(password: bytes | None = None) -> tuple[bytes, bytes]:
    """A self-signed RSA certificate: (PEM of key and certificate, PEM of the certificate)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "provisioning-mirror")])
    now = dt.datetime.now(dt.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(days=1))
                   .not_valid_after(now + dt.timedelta(days=30))
                   .sign(key, hashes.SHA256()))
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password
        else serialization.NoEncryption())
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8, encryption)
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
    return key_pem + cert_pem, cert_pem


@pytest.fixture(scope="module")
def pems() -> tuple[bytes, bytes]:
    return certificate_pem()


def mirror_settings(tmp_path: Path, pem: bytes | None = None, **environ: str) -> MirrorSettings:
    if pem is not None:
        path = tmp_path / "mirror.pem"
        path.write_bytes(pem)
        environ.setdefault("PROVISIONING_DATAVERSE_CERTIFICATE_PATH", str(path))
    return MirrorSettings.from_env(settings(dataverse_client_secret=None), environ)


def connect(config: MirrorSettings, dataverse: DataverseEmulator,
            clock: Clock) -> tuple[DataverseClient, Any]:
    http = httpx.Client(transport=Emulator(dataverse=dataverse).transport())
    tokens = token_source(config, http, clock=clock)
    pacer = Pacer(1000, 300, 1000, clock=clock, sleep=clock.sleep)
    return DataverseClient(config, http, tokens, pacer), tokens


# -- selection -----------------------------------------------------------------------------


def test_the_secret_is_the_default_and_a_lone_certificate_path_selects_the_certificate(
        tmp_path: Path, pems: tuple[bytes, bytes]) -> None:
    assert MirrorSettings.from_env(settings(), {}).credential == "secret"
    config = mirror_settings(tmp_path, pems[0])
    assert config.credential == "certificate"
    http = httpx.Client(transport=httpx.MockTransport(lambda _: httpx.Response(500)))
    assert isinstance(token_source(config, http), CertificateTokens)
    assert type(token_source(MirrorSettings.from_env(settings(), {}), http)) is TokenCache


def test_credential_settings_name_every_missing_or_bad_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as caught:
        MirrorSettings.from_env(settings(dataverse_client_secret=None),
                                {"PROVISIONING_DATAVERSE_CREDENTIAL": "password"})
    assert "PROVISIONING_DATAVERSE_CREDENTIAL: must be one of secret, certificate, workload, " \
           "managed, default, not 'password'" in str(caught.value)
    with pytest.raises(ConfigurationError) as caught:
        MirrorSettings.from_env(settings(dataverse_tenant_id=None), {
            "PROVISIONING_DATAVERSE_CREDENTIAL": "certificate",
            "PROVISIONING_DATAVERSE_CERTIFICATE_PATH": str(tmp_path / "missing.pem")})
    message = str(caught.value)
    assert "PROVISIONING_DATAVERSE_TENANT_ID: is required" in message
    assert f"PROVISIONING_DATAVERSE_CERTIFICATE_PATH: no such file: {tmp_path}" in message
    with pytest.raises(ConfigurationError, match="CERTIFICATE_PATH: is required"):
        MirrorSettings.from_env(settings(), {"PROVISIONING_DATAVERSE_CREDENTIAL": "certificate"})
    with pytest.raises(ConfigurationError, match="AUTHORITY_URL: must be https"):
        MirrorSettings.from_env(settings(dataverse_authority_url="http://127.0.0.1:1"),
                                {"PROVISIONING_DATAVERSE_CREDENTIAL": "workload"})


def test_a_managed_identity_needs_no_tenant_client_or_secret() -> None:
    config = MirrorSettings.from_env(
        settings(dataverse_tenant_id=None, dataverse_client_id=None,
                 dataverse_client_secret=None),
        {"PROVISIONING_DATAVERSE_CREDENTIAL": "managed"})
    assert (config.credential, config.tenant_id, config.client_id) == ("managed", "", "")


def test_the_certificate_password_never_appears_in_a_repr(tmp_path: Path) -> None:
    pem, _ = certificate_pem(b"pem-password-1")
    config = mirror_settings(tmp_path, pem,
                             PROVISIONING_DATAVERSE_CERTIFICATE_PASSWORD="pem-password-1")
    assert "pem-password-1" not in repr(config)
    assert config.describe()["certificate_password"] == "***"


def test_an_unreadable_certificate_is_a_configuration_error(tmp_path: Path) -> None:
    pem, _ = certificate_pem(b"right")
    http = httpx.Client(transport=httpx.MockTransport(lambda _: httpx.Response(500)))
    wrong = mirror_settings(tmp_path, pem, PROVISIONING_DATAVERSE_CERTIFICATE_PASSWORD="wrong")
    with pytest.raises(ConfigurationError, match=r"CERTIFICATE_PATH: .*mirror\.pem: no "
                                                 r"readable private key"):
        token_source(wrong, http)
    right = mirror_settings(tmp_path, pem, PROVISIONING_DATAVERSE_CERTIFICATE_PASSWORD="right")
    assert isinstance(token_source(right, http), CertificateTokens)
    (tmp_path / "key-only.pem").write_bytes(pem.split(b"-----BEGIN CERTIFICATE")[0])
    key_only = mirror_settings(tmp_path, None, PROVISIONING_DATAVERSE_CERTIFICATE_PATH=str(
        tmp_path / "key-only.pem"), PROVISIONING_DATAVERSE_CERTIFICATE_PASSWORD="right")
    with pytest.raises(ConfigurationError, match="no readable certificate"):
        token_source(key_only, http)


# -- a certificate against the emulator's token endpoint --------------------------------------


@pytest.fixture
def default_logging() -> Iterator[None]:
    """structlog's defaults (the CLI tests may leave a level filter configured)."""
    saved = structlog.get_config()
    structlog.reset_defaults()
    try:
        yield
    finally:
        structlog.configure(**saved)


@pytest.mark.usefixtures("default_logging")
def test_a_certificate_signs_in_and_the_web_api_answers(tmp_path: Path,
                                                       pems: tuple[bytes, bytes]) -> None:
    clock = Clock()
    dataverse = DataverseEmulator(tenant_id=TENANT, client_id=CLIENT, client_secret=SECRET,
                                  client_certificates=[pems[1]], clock=clock)
    client, tokens = connect(mirror_settings(tmp_path, pems[0]), dataverse, clock)
    with capture_logs() as logs:
        token = tokens.token()
    assert client.get("6f1c0000-0000-4000-8000-000000000001") is None  # 404: signed in
    assert dataverse.tokens_issued == 1
    assert token not in repr(logs)
    assert [entry["event"] for entry in logs] == ["dataverse.token_fetched"]


def test_a_certificate_the_app_does_not_know_is_refused(tmp_path: Path,
                                                        pems: tuple[bytes, bytes]) -> None:
    clock = Clock()
    _, other = certificate_pem()
    dataverse = DataverseEmulator(tenant_id=TENANT, client_id=CLIENT, client_secret=SECRET,
                                  client_certificates=[other], clock=clock)
    _, tokens = connect(mirror_settings(tmp_path, pems[0]), dataverse, clock)
    with pytest.raises(DataverseAuthError, match=r"AADSTS700027: The certificate with "
                                                 r"identifier .* is not registered"):
        tokens.token()
    strict = DataverseEmulator(tenant_id=TENANT, client_id=CLIENT, client_secret=SECRET,
                               clock=clock)
    _, tokens = connect(mirror_settings(tmp_path, pems[0]), strict, clock)
    with pytest.raises(DataverseAuthError, match="AADSTS700027"):
        tokens.token()


def test_a_forged_or_stale_assertion_is_refused(tmp_path: Path,
                                                pems: tuple[bytes, bytes]) -> None:
    clock = Clock()
    dataverse = DataverseEmulator(tenant_id=TENANT, client_id=CLIENT,
                                  client_certificates=[pems[1]], clock=clock)
    http = httpx.Client(transport=Emulator(dataverse=dataverse).transport())
    config = mirror_settings(tmp_path, pems[0])
    certificate = ClientCertificate.load(pems[0])
    other_pem, _ = certificate_pem()
    impostor = ClientCertificate(ClientCertificate.load(other_pem).private_key,
                                 certificate.thumbprint)  # the right x5t, the wrong key

    def ask(assertion: str) -> dict[str, Any]:
        reply = http.post(config.token_url, data={
            "grant_type": "client_credentials", "client_id": CLIENT, "scope": config.scope,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion})
        assert reply.status_code in (200, 401)
        return dict(reply.json())

    assert "access_token" in ask(certificate.assertion(CLIENT, config.token_url, clock()))
    assert ask(impostor.assertion(CLIENT, config.token_url, clock()))[
        "error_description"] == "AADSTS700027: Client assertion contains an invalid signature."
    assert ask(certificate.assertion(CLIENT, config.token_url, clock() - 3600))[
        "error_description"].startswith("AADSTS700024")
    assert ask(certificate.assertion("someone-else", config.token_url, clock()))[
        "error_description"].startswith("AADSTS700021")
    assert ask(certificate.assertion(CLIENT, "https://login.example.test/x/token", clock()))[
        "error_description"].startswith("AADSTS700212")
    assert ask("not.a-jwt")["error_description"].startswith("AADSTS50027")


# -- azure-identity --------------------------------------------------------------------------


def test_workload_identity_is_built_from_the_settings_and_the_token_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text("federated-token")
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token_file))
    config = MirrorSettings.from_env(
        settings(dataverse_client_secret=None,
                 dataverse_authority_url="https://login.microsoftonline.com"),
        {"PROVISIONING_DATAVERSE_CREDENTIAL": "workload"})
    http = httpx.Client(transport=httpx.MockTransport(lambda _: httpx.Response(500)))
    tokens = token_source(config, http)
    assert isinstance(tokens, AzureIdentityTokens)
    assert type(tokens.credential).__name__ == "WorkloadIdentityCredential"
    default = token_source(MirrorSettings.from_env(
        settings(dataverse_authority_url="https://login.microsoftonline.com"),
        {"PROVISIONING_DATAVERSE_CREDENTIAL": "default"}), http)
    assert isinstance(default, AzureIdentityTokens)
    assert type(default.credential).__name__ == "DefaultAzureCredential"
    monkeypatch.delenv("AZURE_FEDERATED_TOKEN_FILE")
    with pytest.raises(ConfigurationError, match="PROVISIONING_DATAVERSE_CREDENTIAL=workload: "):
        token_source(config, http)


class FakeCredential:
    """An azure-core TokenCredential answering fixed tokens (azure-identity's contract)."""

    def __init__(self, lifetime: float, error: Exception | None = None) -> None:
        self.lifetime = lifetime
        self.error = error
        self.calls = 0

    def get_token(self, *scopes: str, **_: Any) -> Any:
        from azure.core.credentials import AccessToken

        self.calls += 1
        if self.error is not None:
            raise self.error
        return AccessToken(f"az-token-{self.calls}", int(time.time() + self.lifetime))


def test_azure_identity_tokens_are_cached_and_errors_translated() -> None:
    from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError

    from worker.dataverse.errors import DataverseUnavailable

    config = MirrorSettings.from_env(settings(), {})
    http = httpx.Client(transport=httpx.MockTransport(lambda _: httpx.Response(500)))
    credential = FakeCredential(3600)
    tokens = AzureIdentityTokens(config, http, credential)  # type: ignore[arg-type]
    assert tokens.token() == tokens.token() == "az-token-1"
    tokens.invalidate()
    assert tokens.token() == "az-token-2"
    refused = AzureIdentityTokens(config, http, FakeCredential(  # type: ignore[arg-type]
        0, ClientAuthenticationError("ManagedIdentityCredential authentication unavailable.\n"
                                     "Troubleshoot: …")))
    with pytest.raises(DataverseAuthError, match=r"ClientAuthenticationError: "
                                                 r"ManagedIdentityCredential authentication "
                                                 r"unavailable\.$"):
        refused.token()
    down = AzureIdentityTokens(config, http, FakeCredential(  # type: ignore[arg-type]
        0, ServiceRequestError("connection refused")))
    with pytest.raises(DataverseUnavailable):
        down.token()
    expired = AzureIdentityTokens(config, http, FakeCredential(-5))  # type: ignore[arg-type]
    with pytest.raises(DataverseAuthError, match="invalid_token_response"):
        expired.token()


def test_the_emulator_reads_its_registered_certificate_from_the_environment(
        tmp_path: Path, pems: tuple[bytes, bytes]) -> None:
    path = tmp_path / "registered.pem"
    path.write_bytes(pems[1])
    dataverse = DataverseEmulator.from_env({"EMULATOR_DATAVERSE_CLIENT_CERTIFICATE": str(path),
                                            "EMULATOR_DATAVERSE_CLIENT_ID": CLIENT})
    assert dataverse.client_certificates == (pems[1],)
    clock = Clock(start=time.time())  # the emulator from_env keeps the real clock
    _, tokens = connect(mirror_settings(tmp_path, pems[0]), dataverse, clock)
    assert tokens.token().startswith("emu.")
