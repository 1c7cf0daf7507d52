"""The Dataverse mirror over real HTTP: a real Redis, the emulator served on loopback (its
Dataverse Web API and token endpoint), the mirror built by ``bootstrap.build_mirror``.
Conflicts, throttling, token expiry, an outage that ends with the outbox drained in order,
the import through the console script, and beat running the mirror in a real worker."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from statemachine import PRIMARY_KEY, StatusReason
from tests.factories import event, new_id, provision
from tests.integration.workers import running_cluster
from worker.bootstrap.mirror import build_mirror
from worker.bootstrap.services import build_service
from worker.dataverse import Mirror, OutboxEntry, RunReport
from worker.dataverse.mirror import differing
from worker.dataverse.status import mirror_status
from worker.emulators import DataverseEmulator, Emulator, EmulatorServer, serve
from worker.service import Service, submit_events
from worker.settings import Settings

pytestmark = pytest.mark.integration

TENANT, CLIENT, SECRET = "contoso-tenant", "mirror-app", "mirror-secret"
PROVIDER = "msdyn_communicationprovidersettingid"
# Short pauses so that backoff and throttling end within seconds.
MIRROR_ENV = {"PROVISIONING_DATAVERSE_BACKOFF_CAP": "0.2",
              "PROVISIONING_DATAVERSE_TIMEOUT": "2"}


def org_emulator(**options: Any) -> DataverseEmulator:
    return DataverseEmulator(tenant_id=TENANT, client_id=CLIENT, client_secret=SECRET,
                             **options)


def mirror_settings(redis_url: str, backends: str, dataverse: str) -> dict[str, str]:
    return {
        "PROVISIONING_REDIS_URL": redis_url,
        "PROVISIONING_PROVISIONER_URL": backends,
        "PROVISIONING_GATEKEEPER_URL": backends,
        "PROVISIONING_CALLING_TEST_URL": backends,
        "PROVISIONING_BACKOFF_BASE": "0", "PROVISIONING_BACKOFF_CAP": "0",
        "PROVISIONING_DATAVERSE_URL": dataverse,
        "PROVISIONING_DATAVERSE_AUTHORITY_URL": dataverse,
        "PROVISIONING_DATAVERSE_TENANT_ID": TENANT,
        "PROVISIONING_DATAVERSE_CLIENT_ID": CLIENT,
        "PROVISIONING_DATAVERSE_CLIENT_SECRET": SECRET,
        "PROVISIONING_LOG_FORMAT": "json",
    }


@dataclass
class Setup:
    """Backends on one emulator server, Dataverse on ``org`` (the same server unless a
    test wants to take Dataverse down alone)."""

    backends: EmulatorServer
    org: EmulatorServer
    service: Service
    mirror: Mirror
    env: dict[str, str]
    backend_transport: httpx.HTTPTransport

    @property
    def dataverse(self) -> DataverseEmulator:
        return self.org.emulator.dataverse

    def submit(self, *events: dict[str, Any]) -> None:
        report = submit_events(self.service, enumerate(events, start=1))
        assert report.ok
        for record_id in report.record_ids:
            self.service.drain(record_id)

    def admin(self, method: str, action: str, body: Any = None) -> Any:
        reply = httpx.request(method, f"{self.org.url}/_dataverse/{action}", json=body,
                              timeout=10)
        reply.raise_for_status()
        return reply.json()

    def calls(self) -> list[dict[str, Any]]:
        """What Dataverse answered, over the admin API, as any client would see it."""
        return [c for c in self.admin("GET", "requests") if "/oauth2/" not in c["path"]]

    def drain_mirror(self, timeout: float = 15.0) -> list[RunReport]:
        """Run the mirror as beat would, honouring its pauses, until the outbox is empty."""
        deadline = time.monotonic() + timeout
        reports = []
        while True:
            report = self.mirror.run()
            reports.append(report)
            if report.stopped == "empty":
                return reports
            assert time.monotonic() < deadline, f"mirror still not drained: {reports}"
            paused = float(self.mirror.state.status().get("paused_until") or 0)
            time.sleep(min(1.0, max(0.05, paused - time.time())))

    def in_step(self, record_id: str) -> dict[str, Any]:
        record = self.service.store.load(record_id)
        assert record is not None
        reply = httpx.get(f"{self.org.url}/_dataverse/rows", timeout=10).json()
        [row] = [r for r in reply if r[PRIMARY_KEY] == record_id]
        assert differing(record, row) == frozenset(), (record.to_dataverse(), row)
        return dict(row)


def build(redis_url: str, backends: EmulatorServer, org: EmulatorServer,
          **extra: str) -> Setup:
    env = {**mirror_settings(redis_url, backends.url, org.url), **extra}
    settings = Settings.from_env(env)
    # Our own transport: build_service's httpx client is not closed by Backends.close().
    transport = httpx.HTTPTransport()
    service = build_service(settings, transport=transport)
    mirror = build_mirror(settings, environ={**env, **MIRROR_ENV})
    assert mirror is not None
    return Setup(backends, org, service, mirror, env, transport)


def close(setup: Setup) -> None:
    setup.mirror.client.http.close()
    setup.mirror.store.client.close()  # type: ignore[attr-defined]
    setup.backend_transport.close()
    setup.service.store.client.close()  # type: ignore[attr-defined]


@pytest.fixture
def setup(redis_url: str) -> Iterator[Setup]:
    server = serve("127.0.0.1", 0, Emulator(dataverse=org_emulator()))
    try:
        running = build(redis_url, server, server)
        try:
            yield running
        finally:
            close(running)
    finally:
        server.shutdown()


def onboard(setup: Setup, record_id: str, kind: str = "whatsapp",
            **links: str | None) -> None:
    setup.submit(provision(record_id, new_id(), kind=kind, links={PROVIDER: new_id(), **links}))


def test_each_applied_change_appears_in_dataverse(setup: Setup) -> None:
    whatsapp, voice = new_id(), new_id()
    onboard(setup, whatsapp)
    onboard(setup, voice, kind="voice", msdyn_phonenumberid=new_id())
    setup.submit(event("deprovision.requested", whatsapp))
    waiting = setup.service.store.outbox_size()

    reports = setup.drain_mirror()

    assert sum(r.sent for r in reports) == waiting
    gone = setup.in_step(whatsapp)
    assert (gone["statecode"], gone["statuscode"]) == (1, StatusReason.DEPROVISIONED)
    running = setup.in_step(voice)
    assert running["statuscode"] == StatusReason.RUNNING
    posts = [c for c in setup.calls() if c["method"] == "POST"]
    assert all("statecode" not in c["body"] for c in posts)
    # Store v2: one outbox per shard, so records' creates need not come in commit order.
    (created,) = [c for c in posts if c["body"][PRIMARY_KEY] == whatsapp]
    assert "msdyn_ocwhatsappchannelaccountId@odata.bind" in created["body"]
    assert {c["status"] for c in setup.calls()} <= {200, 201}
    status = mirror_status(setup.service.store, setup.mirror.state, setup.mirror.settings,
                           datetime.now(UTC))
    assert (status["outbox"]["entries"], status["sent"], status["failing"]) == (
        0, waiting, False)


def test_a_row_changed_in_dynamics_is_reconciled_after_a_412(setup: Setup) -> None:
    record_id = new_id()
    onboard(setup, record_id)
    setup.drain_mirror()
    setup.admin("POST", "edit", {"id": record_id, "changes": {
        "msdyn_name": "Renamed by a user", "msdyn_provisioningresponse": "edited"}})
    setup.submit(event("deprovision.requested", record_id))

    setup.drain_mirror()

    row = setup.in_step(record_id)
    assert row["msdyn_name"] == "Contoso"
    statuses = [c["status"] for c in setup.calls() if c["record_id"] == record_id]
    assert 412 in statuses
    assert setup.mirror.state.status()["conflicts"] == "1"


def test_throttling_pauses_the_mirror_for_retry_after(setup: Setup) -> None:
    setup.admin("POST", "budget", {"requests": 2, "window_seconds": 2})
    records = [new_id() for _ in range(3)]
    for record_id in records:
        onboard(setup, record_id)

    first = setup.mirror.run()
    assert (first.sent, first.stopped) == (2, "throttled")
    throttled_at = time.time()
    before = len(setup.calls())
    assert setup.mirror.run().stopped == "paused"
    assert len(setup.calls()) == before  # nothing sent while paused

    setup.drain_mirror()
    calls = setup.calls()
    refused = next(c for c in calls if c["status"] == 429)
    after = [c for c in calls if c["at"] > refused["at"]]
    assert after and min(c["at"] for c in after) >= throttled_at + 0.9  # Retry-After ≥ 1 s
    for record_id in records:
        setup.in_step(record_id)
    error = json.loads(setup.mirror.state.status()["last_error"])
    assert (error["code"], error["status"]) == ("0x80072322", 429)


def test_tokens_are_refreshed_before_expiry_and_after_a_401(redis_url: str) -> None:
    org = org_emulator(token_seconds=3)
    server = serve("127.0.0.1", 0, Emulator(dataverse=org))
    setup = build(redis_url, server, server)
    try:
        first = new_id()
        onboard(setup, first)
        setup.drain_mirror()
        assert org.tokens_issued == 1
        time.sleep(2.75)  # past 90 % of the token's life (2.7 s), before its end (3 s)
        setup.submit(event("deprovision.requested", first))
        setup.drain_mirror()
        assert org.tokens_issued == 2
        assert 401 not in [c.status for c in org.calls]  # refreshed before it expired

        setup.admin("POST", "revoke-tokens")
        second = new_id()
        onboard(setup, second)
        setup.drain_mirror()
        assert org.tokens_issued == 3
        statuses = [c.status for c in org.calls]
        assert statuses[statuses.index(401) + 1] == 200  # the token request, then the retry
        setup.in_step(second)
    finally:
        close(setup)
        server.shutdown()


def test_an_outage_never_slows_events_and_ends_with_the_outbox_drained_in_order(
        redis_url: str) -> None:
    backends = serve("127.0.0.1", 0, Emulator())
    org = Emulator(dataverse=org_emulator())
    server = serve("127.0.0.1", 0, org)
    address = server.server_address[:2]
    setup = build(redis_url, backends, server)
    try:
        setup.drain_mirror()
        server.shutdown()  # Dataverse is down: connections are refused

        records = [new_id() for _ in range(3)]
        started = time.monotonic()
        for record_id in records:
            onboard(setup, record_id)
            setup.submit(event("deprovision.requested", record_id))
        assert time.monotonic() - started < 5
        # Store v2: one outbox list per shard, each in commit order.
        store = setup.service.store
        entries = [OutboxEntry.decode(raw) for shard in range(store.keys.shards)  # type: ignore[attr-defined]
                   for raw in store.client.lrange(store.keys.outbox(shard), 0, -1)]  # type: ignore[attr-defined]
        assert {e.record_id for e in entries} == set(records)

        down = setup.mirror.run()
        assert (down.sent, down.remaining, down.stopped) == (0, len(entries), "unavailable")
        error = json.loads(setup.mirror.state.status()["last_error"])
        assert error["code"] == "ConnectError"

        setup.org = server = EmulatorServer(address, org).start()  # Dataverse is back
        setup.drain_mirror()

        writes = [(c["method"], c["record_id"] or c["body"][PRIMARY_KEY])
                  for c in setup.calls() if c["status"] in (200, 201)]
        expected = [({"create": "POST", "update": "PATCH"}[e.op], e.record_id) for e in entries]
        assert sorted(writes) == sorted(expected)  # every entry once
        for record_id in records:  # each record's in commit order
            assert [w for w in writes if w[1] == record_id] == [
                w for w in expected if w[1] == record_id]
        for record_id in records:
            setup.in_step(record_id)
    finally:
        close(setup)
        server.shutdown()
        backends.shutdown()


def test_import_then_status_through_the_console_script(setup: Setup, tmp_path: Path,
                                                       request: pytest.FixtureRequest) -> None:
    rows = [{PRIMARY_KEY: new_id(), "msdyn_name": f"Existing {n}", "statuscode": 192350001,
             "_msdyn_ocfbpageid_value": new_id()} for n in range(5)]
    setup.admin("POST", "rows", rows)
    with running_cluster(setup.env["PROVISIONING_REDIS_URL"], tmp_path, request) as cluster:
        cluster.env.update(setup.env)
        imported = cluster.provisioning("dataverse", "import", "--page-size", "2")
        assert imported.returncode == 0, imported.stderr
        assert imported.stdout.startswith("imported 5, already known 0, refused 0 "
                                          "(5 rows in 3 pages")
        again = cluster.provisioning("dataverse", "import")
        assert again.stdout.startswith("imported 0, already known 5")
        status = cluster.provisioning("dataverse", "status", "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["outbox"]["entries"] == 0
    record = setup.service.store.load(rows[0][PRIMARY_KEY])
    assert record is not None
    assert record.tracking.channel_kind is not None
    assert record.tracking.channel_kind.value == "facebook"


def test_beat_runs_the_mirror_in_a_real_worker(redis_url: str, tmp_path: Path,
                                               request: pytest.FixtureRequest) -> None:
    emulator = Emulator(dataverse=org_emulator())
    with running_cluster(redis_url, tmp_path, request, emulator=emulator) as cluster:
        url = cluster.server.url
        cluster.env.update({k: v for k, v in mirror_settings(redis_url, url, url).items()
                            if k.startswith("PROVISIONING_DATAVERSE_")})
        cluster.env["PROVISIONING_DATAVERSE_INTERVAL"] = "0.5"
        cluster.start_worker(concurrency=2)
        cluster.start_beat()
        record_id = new_id()
        cluster.submit([provision(record_id, new_id(), links={PROVIDER: new_id()})])
        cluster.wait_status(record_id, "Running")

        def mirrored() -> dict[str, Any] | None:
            row = emulator.dataverse.row(record_id)
            return row if row is not None and row["statuscode"] == StatusReason.RUNNING \
                else None

        row = cluster.wait_for(mirrored, "the Running row in Dataverse", timeout=30)
        record = cluster.record(record_id)
        assert record is not None
        assert differing(record, row) == frozenset()


def test_names_and_details_outside_the_bmp_are_written_as_dataverse_accepts(
        setup: Setup) -> None:
    emoji, han = "\U0001F600", "\U00020BB7"  # two UTF-16 code units each
    record_id = new_id()
    name = (emoji + han) * 25  # 50 characters, 100 code units: the column's maximum
    setup.submit(provision(record_id, new_id(), name=name, links={PROVIDER: new_id()}))
    setup.submit(event("gatekeeper.reported", record_id, {
        "status": "Inactive", "reason": "Error", "details": emoji * 4096}))
    setup.drain_mirror()

    row = setup.in_step(record_id)
    assert row["msdyn_name"] == name
    details = row["msdyn_exceptiondetails"]
    assert len(details.encode("utf-16-le")) // 2 <= 8192 < len(details) * 2
    assert details.endswith("chars]")
    assert {c["status"] for c in setup.calls()} <= {200, 201}
    [post] = [c for c in setup.calls() if c["method"] == "POST"]
    assert all(value is not None for key, value in post["body"].items()
               if key.endswith("@odata.bind"))  # unset lookups are left out of a create


def test_check_over_http_finds_planted_differences_and_import_refuses(
        setup: Setup, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    setup.admin("POST", "rows", [{PRIMARY_KEY: new_id(), "msdyn_name": "Existing"}])
    with running_cluster(setup.env["PROVISIONING_REDIS_URL"], tmp_path, request) as cluster:
        cluster.env.update(setup.env)
        clean = cluster.provisioning("dataverse", "check")
        assert clean.returncode == 0, clean.stderr
        assert clean.stdout.splitlines()[-1] == "result        ok (0 notes)"

        setup.admin("POST", "metadata", {"column": "msdyn_automatedcallingstatus",
                                         "drop_option": 3})
        setup.admin("POST", "metadata", {"column": "msdyn_name", "max_length": 80})
        planted = cluster.provisioning("dataverse", "check", "--json")
        assert planted.returncode == 1
        report = json.loads(planted.stdout)
        assert [(d["column"], d["blocking"]) for d in report["differences"]] == [
            ("msdyn_name", True), ("msdyn_automatedcallingstatus", True)]

        refused = cluster.provisioning("dataverse", "import")
        assert refused.returncode == 1
        assert "BLOCKING  msdyn_name: max length 80" in refused.stderr
    assert setup.service.store.list_records() == []
