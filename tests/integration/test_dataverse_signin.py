"""Credentials over real HTTP: the mirror built by ``bootstrap.build_mirror`` signs in with
a certificate (the emulator verifies the client assertion's signature against the
registered certificate), and azure-identity's ManagedIdentityCredential gets its token from
the emulator's IMDS endpoint. Workload identity is not emulated: azure-identity only talks
to an https authority (see the README, "Credentials")."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from statemachine import StatusReason
from tests.integration.test_dataverse_mirror import (
    PROVIDER,
    build,
    close,
    mirror_settings,
    org_emulator,
)
from tests.integration.workers import new_id, provision
from tests.unit.test_dataverse_credentials import certificate_pem
from worker.dataverse import DataverseClient, Pacer
from worker.dataverse.credentials import AzureIdentityTokens, CertificateTokens, token_source
from worker.dataverse.settings import MirrorSettings
from worker.emulator import Emulator, EmulatorServer, serve
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
