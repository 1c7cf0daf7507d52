"""Credentials over real HTTP: the mirror built by ``bootstrap.build_mirror`` signs in with
a certificate (the emulator verifies the client assertion's signature against the
registered certificate), and azure-identity's ManagedIdentityCredential gets its token from
the emulator's IMDS endpoint, and WorkloadIdentityCredential signs in with a service
account token the emulator checks against the app's federated credential (the emulator
served over TLS, since azure-identity only talks to an https authority)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from statemachine import StatusReason
from tests.factories import new_id, provision
from tests.integration.test_dataverse_mirror import (
    PROVIDER,
    build,
    close,
    mirror_settings,
    org_emulator,
)
from tests.unit.test_dataverse_credentials import certificate_pem
from worker.dataverse import DataverseAuthError, DataverseClient, Pacer
from worker.dataverse.credentials import (
    AzureIdentityTokens,
    CertificateTokens,
    b64url,
    token_source,
)
from worker.dataverse.metadata import check_organization
from worker.dataverse.settings import MirrorSettings
from worker.emulators import Emulator, EmulatorServer, serve
from worker.emulators.dataverse_identity import FederatedCredential
from worker.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def server() -> Iterator[EmulatorServer]:
    _, certificate = PEMS
    running = serve("127.0.0.1", 0, Emulator(dataverse=org_emulator(
        client_certificates=[certificate])))
    try:
        yield running
    finally:
        running.shutdown()


PEMS = certificate_pem(b"cert-password")


def test_the_mirror_signs_in_with_a_certificate_and_drains(
        redis_url: str, server: EmulatorServer, tmp_path: Path) -> None:
    pem_path = tmp_path / "mirror.pem"
    pem_path.write_bytes(PEMS[0])
    setup = build(redis_url, server, server, PROVISIONING_DATAVERSE_CREDENTIAL="certificate",
                  PROVISIONING_DATAVERSE_CERTIFICATE_PATH=str(pem_path),
                  PROVISIONING_DATAVERSE_CERTIFICATE_PASSWORD="cert-password")
    try:
        assert isinstance(setup.mirror.client.tokens, CertificateTokens)
        record_id = new_id()
        setup.submit(provision(record_id, new_id(), links={PROVIDER: new_id()}))
        setup.drain_mirror()
        assert setup.in_step(record_id)["statuscode"] == StatusReason.RUNNING
        tokens = [c for c in setup.admin("GET", "requests") if "/oauth2/" in c["path"]]
        assert [c["status"] for c in tokens] == [200]
    finally:
        close(setup)


def test_a_managed_identity_gets_its_token_from_imds(
        redis_url: str, server: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT", "MSI_SECRET",
                 "IMDS_ENDPOINT", "AZURE_FEDERATED_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    # azure-identity sends IMDS requests here instead of http://169.254.169.254.
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", server.url)
    env = {**mirror_settings(redis_url, server.url, server.url),
           "PROVISIONING_DATAVERSE_CREDENTIAL": "managed"}
    for name in ("PROVISIONING_DATAVERSE_TENANT_ID", "PROVISIONING_DATAVERSE_CLIENT_SECRET"):
        del env[name]
    config = MirrorSettings.from_env(Settings.from_env(env), env)
    with httpx.Client() as http:
        tokens = token_source(config, http)
        assert isinstance(tokens, AzureIdentityTokens)
        client = DataverseClient(config, http, tokens, Pacer(100, 300, 100))
        assert client.get(new_id()) is None  # 404 with the token: signed in
        [imds] = [c for c in server.emulator.dataverse.calls if "/metadata/" in c.path]
        assert imds.status == 200
        assert "client_id=mirror-app" in imds.query  # the user-assigned identity asked for


def tls_files(directory: Path) -> tuple[Path, Path]:
    """A self-signed server certificate for 127.0.0.1 and its key, as PEM files."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(days=1))
                   .not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName(
                       [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None),
                                  critical=True)
                   .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "tls-cert.pem", directory / "tls-key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def service_account_token(key: rsa.RSAPrivateKey, issuer: str, subject: str) -> str:
    """What the AKS webhook mounts in AZURE_FEDERATED_TOKEN_FILE: a JWT the cluster's OIDC
    issuer signed for the service account, audience api://AzureADTokenExchange."""
    now = int(time.time())
    header = {"alg": "RS256", "kid": "cluster-key-1", "typ": "JWT"}
    claims = {"iss": issuer, "sub": subject, "aud": ["api://AzureADTokenExchange"],
              "iat": now, "nbf": now, "exp": now + 3600}
    signing_input = ".".join(b64url(json.dumps(part).encode()) for part in (header, claims))
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64url(signature)}"


@pytest.mark.parametrize("credential", ["workload", "default"])
def test_workload_identity_signs_in_through_azure_identity_over_tls(
        credential: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    issuer = "https://oidc.aks.example.test/contoso-tenant/"
    subject = "system:serviceaccount:provisioning:worker"
    cluster_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = cluster_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    org = org_emulator(federated_credentials=[FederatedCredential(issuer, subject, public)])
    cert_path, key_path = tls_files(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert_path, key_path)
    server = EmulatorServer(("127.0.0.1", 0), Emulator(dataverse=org), tls=tls)
    server.start()
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}"
        token_file = tmp_path / "azure-identity-token"
        token_file.write_text(service_account_token(cluster_key, issuer, subject))
        # What the workload identity webhook injects; requests (under azure-core) trusts
        # the emulator's certificate through REQUESTS_CA_BUNDLE.
        monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token_file))
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert_path))
        for name in ("AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH", "AZURE_USERNAME"):
            monkeypatch.delenv(name, raising=False)  # DefaultAzureCredential's first try
        if credential == "default":
            # DefaultAzureCredential does not hand its authority to its workload identity
            # leg, which reads AZURE_AUTHORITY_HOST (docs/dataverse.md says so).
            monkeypatch.setenv("AZURE_AUTHORITY_HOST", url)
        env = {**mirror_settings("redis://127.0.0.1:1/0", url, url),
               "PROVISIONING_DATAVERSE_CREDENTIAL": credential}
        del env["PROVISIONING_DATAVERSE_CLIENT_SECRET"]
        config = MirrorSettings.from_env(Settings.from_env(env), env)
        with httpx.Client(verify=ssl.create_default_context(cafile=str(cert_path))) as http:
            tokens = token_source(config, http)
            client = DataverseClient(config, http, tokens, Pacer(100, 300, 100))
            assert check_organization(client).ok
        [token_call] = [c for c in org.calls if "/oauth2/" in c.path]
        assert (token_call.path, token_call.status) == (
            "/contoso-tenant/oauth2/v2.0/token", 200)

        if credential == "default":
            return  # DefaultAzureCredential went on to other credentials after a refusal
        token_file.write_text(service_account_token(cluster_key, issuer,
                                                    "system:serviceaccount:other:app"))
        with httpx.Client(verify=ssl.create_default_context(cafile=str(cert_path))) as http, \
                pytest.raises(DataverseAuthError, match="AADSTS70021"):
            token_source(config, http).token()
    finally:
        server.shutdown()
