"""What the Dataverse unit tests share (no tests here): a fake clock and a ``Rig``, a
Service on the in-memory stores with the mirror on, the backend emulator (with its
Dataverse emulator) as an in-process httpx transport, and a Mirror on the memory twin of
its state. Time in the mirror, its pacer, its token cache and the Dataverse emulator is the
fake clock; sleeping advances it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from statemachine import ProvisioningState
from tests.factories import provision as provision_of
from worker.backends import Backends
from worker.dataverse import (
    SERVICE_WINDOW_SECONDS,
    DataverseClient,
    MemoryMirrorState,
    Mirror,
    MirrorSettings,
    Pacer,
    RunReport,
    TokenCache,
)
from worker.emulators import DataverseEmulator, Emulator, RecordedCall
from worker.service import Service, submit_events
from worker.settings import BackendSettings, Settings
from worker.store.failed import MemoryFailedStore
from worker.store.memory import MemoryStateStore

ORG = "https://contoso-sandbox.crm4.dynamics.com"
AUTHORITY = "https://login.example.test"
TENANT, CLIENT, SECRET = "tenant-1", "client-1", "s3cret-value"


class Clock:
    """Fake time: ``clock()`` reads it, ``sleep(s)`` and ``advance(s)`` move it."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def settings(**changes: Any) -> Settings:
    values: dict[str, Any] = {
        "backends": BackendSettings(
            provisioner_url="http://backends.test", gatekeeper_url="http://backends.test",
            calling_test_url="http://backends.test", backoff_base=0.0, backoff_cap=0.0),
        "retry_base_seconds": 0.0, "retry_cap_seconds": 0.0, "max_retries": 2,
        "dataverse_url": ORG, "dataverse_tenant_id": TENANT, "dataverse_client_id": CLIENT,
        "dataverse_client_secret": SECRET, "dataverse_authority_url": AUTHORITY,
    }
    values.update(changes)
    return Settings(**values)








def provision(record_id: str, *, kind: str = "whatsapp", channel_id: str | None = None,
              name: str = "Contoso WhatsApp",
              links: Mapping[str, str | None] | None = None) -> dict[str, Any]:
    """``provision.requested`` named as the Dataverse rows these tests read back."""
    return provision_of(record_id, channel_id, kind=kind, name=name, links=links,
                        source="dataverse-tests")


@dataclass
class Rig:
    clock: Clock
    emulator: Emulator
    dataverse: DataverseEmulator
    service: Service
    mirror: Mirror
    http: httpx.Client

    @property
    def store(self) -> MemoryStateStore:
        store = self.service.store
        assert isinstance(store, MemoryStateStore)
        return store

    def submit(self, *events: Mapping[str, Any]) -> None:
        """Accept the events and drain their records, as a worker would."""
        report = submit_events(self.service, enumerate(events, start=1))
        assert report.ok, report.refused
        for record_id in dict.fromkeys(report.record_ids):
            self.service.drain(record_id)

    def run(self, budget: float | None = None) -> RunReport:
        return self.mirror.run(budget)

    def record(self, record_id: str) -> ProvisioningState:
        record = self.store.load(record_id)
        assert record is not None
        return record

    def api_calls(self, method: str | None = None) -> list[RecordedCall]:
        """The Web API requests Dataverse answered (token requests left out)."""
        return [c for c in self.dataverse.calls
                if "/oauth2/" not in c.path and (method is None or c.method == method)]


def make_mirror(mirror_settings: MirrorSettings, store: MemoryStateStore, http: httpx.Client,
                clock: Clock, state: MemoryMirrorState | None = None) -> Mirror:
    pacer = Pacer(mirror_settings.requests_per_window, SERVICE_WINDOW_SECONDS,
                  mirror_settings.burst, clock=clock, sleep=clock.sleep)
    client = DataverseClient(mirror_settings, http, TokenCache(mirror_settings, http,
                                                               clock=clock), pacer)
    return Mirror(mirror_settings, store, state or MemoryMirrorState(clock=clock), client,
                  clock=clock, monotonic=clock, hostname="unit")


def make_rig(*, environ: Mapping[str, str] | None = None, **dataverse: Any) -> Rig:
    clock = Clock()
    emulated = DataverseEmulator(tenant_id=TENANT, client_id=CLIENT, client_secret=SECRET,
                                 clock=clock, sleep=clock.sleep, **dataverse)
    emulator = Emulator(seed=7, dataverse=emulated)
    config = settings()
    http = httpx.Client(transport=emulator.transport())
    backends = Backends(config.backends, http, sleep=lambda _: None)
    store = MemoryStateStore()
    service = Service(config, store, MemoryFailedStore(), backends)
    mirror_settings = MirrorSettings.from_env(config, environ or {})
    return Rig(clock, emulator, emulated, service,
               make_mirror(mirror_settings, store, http, clock), http)


def dataverse_cli(rig: Rig, monkeypatch: pytest.MonkeyPatch,
                  capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """``provisioning dataverse …`` on ``rig``'s service and mirror: (exit code, out, err)."""
    from tests.factories import run_cli_on
    from worker.cli import console
    from worker.cli import dataverse as commands

    run_cli_on(monkeypatch, rig.service)
    monkeypatch.setattr(commands, "_mirror", lambda: rig.mirror)

    def invoke(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()  # what the rig logged before
        try:
            code = console.main(["dataverse", *argv])
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return invoke
