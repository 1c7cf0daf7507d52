"""The mirror sends every applied change to Dataverse, in order, and survives conflicts,
throttling, outages and refusals (in process: memory store, emulator transport, fake
clock)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from statemachine import LOOKUPS, PRIMARY_KEY, ProvisioningState, StatusReason
from tests.factories import event, new_id
from tests.unit.test_dataverse_support import Rig, make_mirror, make_rig, provision
from worker.dataverse import MemoryMirrorState, OutboxEntry
from worker.dataverse.errors import MirrorBusy, UnreadableEntry
from worker.dataverse.mirror import create_body, differing
from worker.dataverse.status import format_status, mirror_status
from worker.emulators import Fault
from worker.keys import dumps
from worker.store.protocol import Commit

WHATSAPP_BIND = "msdyn_ocwhatsappchannelaccountId@odata.bind"
PROVIDER = "msdyn_communicationprovidersettingid"


@pytest.fixture
def rig() -> Rig:
    return make_rig()


def in_step(rig: Rig, record_id: str) -> dict[str, Any]:
    """The row in Dataverse, after checking it says what the worker's record says."""
    row = rig.dataverse.row(record_id)
    assert row is not None, f"no row {record_id} in Dataverse"
    assert differing(rig.record(record_id), row) == frozenset()
    return row


def onboard(rig: Rig, record_id: str, **links: str | None) -> None:
    rig.submit(provision(record_id, links={PROVIDER: new_id(), **links}))


def test_every_applied_change_reaches_dataverse_in_order(rig: Rig) -> None:
    record_id = new_id()
    onboard(rig, record_id)
    rig.submit(event("deprovision.requested", record_id))
    outbox = [OutboxEntry.decode(raw) for raw in rig.store.outbox_peek(100)]
    assert [(e.op, e.version) for e in outbox] == [("create", 2), ("update", 3),
                                                   ("update", 4), ("update", 5)]

    report = rig.run()

    assert (report.sent, report.remaining, report.stopped) == (4, 0, "empty")
    row = in_step(rig, record_id)
    assert (row["statecode"], row["statuscode"]) == (1, StatusReason.DEPROVISIONED)
    methods = [(c.method, c.status) for c in rig.api_calls()]
    assert methods == [("POST", 201), ("PATCH", 200), ("PATCH", 200), ("PATCH", 200)]
    # Each PATCH carries the etag the previous write answered.
    etags = [c.if_match for c in rig.api_calls("PATCH")]
    assert etags == [f'W/"{v}"' for v in range(1_000_001, 1_000_004)]


def test_a_patch_carries_only_the_changed_columns_and_state_with_status(rig: Rig) -> None:
    record_id = new_id()
    onboard(rig, record_id)
    rig.submit(event("deprovision.requested", record_id))
    rig.run()
    bodies = [c.body for c in rig.api_calls("PATCH")]
    assert bodies[1] == {"statecode": 0, "statuscode": int(StatusReason.DEPROVISIONING)}
    assert bodies[2] == {"statecode": 1, "statuscode": int(StatusReason.DEPROVISIONED),
                         "msdyn_gatekeeperstatus": 715240001,
                         "msdyn_gatekeeperstatusreason": 2}


def test_lookups_are_bound_by_navigation_property_and_cleared_with_null(rig: Rig) -> None:
    record_id, provider = new_id(), new_id()
    rig.submit(provision(record_id, channel_id=(account := new_id()),
                         links={PROVIDER: provider}))
    rig.run()
    [post] = rig.api_calls("POST")
    assert isinstance(post.body, dict)
    assert post.body[WHATSAPP_BIND] == f"/msdyn_ocwhatsappchannelaccounts({account})"
    assert post.body["msdyn_communicationprovidersettingid@odata.bind"] == (
        f"/msdyn_occommunicationprovidersettings({provider})")
    assert "statecode" not in post.body
    assert post.body[PRIMARY_KEY] == record_id

    rig.submit(event("parent.deleted", None, {"table": "msdyn_occommunicationprovidersetting",
                                              "id": provider}))
    rig.run()
    assert rig.api_calls("PATCH")[-1].body == {
        "msdyn_communicationprovidersettingid@odata.bind": None}
    assert in_step(rig, record_id)["_msdyn_communicationprovidersettingid_value"] is None


def test_a_cascade_delete_deletes_the_row(rig: Rig) -> None:
    record_id, account = new_id(), new_id()
    rig.submit(provision(record_id, channel_id=account))
    rig.submit(event("parent.deleted", None, {"table": "msdyn_ocwhatsappchannelaccount",
                                              "id": account}))
    rig.run()
    assert rig.dataverse.row(record_id) is None
    assert rig.api_calls()[-1].method == "DELETE"
    assert rig.mirror.state.etag(record_id) is None


def test_a_record_that_is_not_active_is_created_then_its_state_patched(rig: Rig) -> None:
    now = datetime(2026, 11, 27, tzinfo=UTC)
    record = ProvisioningState(
        id=new_id(), name="Already gone", status=StatusReason.DEPROVISIONED, created_on=now,
        modified_on=now, version=9)
    entry = OutboxEntry.decode(dumps({"op": "create", "record_id": record.id, "version": 9,
                                      "columns": [], "row": record.to_dataverse()}))
    assert "statuscode" not in create_body(record)
    rig.mirror.send(entry)
    post, patch = rig.api_calls()
    assert isinstance(post.body, dict)
    assert "statecode" not in post.body
    assert patch.body == {"statecode": 1, "statuscode": int(StatusReason.DEPROVISIONED)}
    assert patch.if_match is not None
    row = rig.dataverse.row(record.id)
    assert row is not None
    assert differing(record, row) == frozenset()


def test_a_create_leaves_unset_lookups_out_and_a_patch_clears_with_null(rig: Rig) -> None:
    record_id, provider = new_id(), new_id()
    rig.submit(provision(record_id, links={"msdyn_communicationprovidersettingid": provider}))
    rig.submit(event("parent.deleted", None, {"table": "msdyn_occommunicationprovidersetting",
                                              "id": provider}))
    rig.run()
    post = rig.api_calls("POST")[0]
    assert isinstance(post.body, dict)
    binds = {k: v for k, v in post.body.items() if k.endswith("@odata.bind")}
    assert set(binds) == {"msdyn_ocwhatsappchannelaccountId@odata.bind",
                          "msdyn_communicationprovidersettingid@odata.bind"}
    assert None not in binds.values()
    cleared = [c.body for c in rig.api_calls("PATCH") if isinstance(c.body, dict)
               and "msdyn_communicationprovidersettingid@odata.bind" in c.body]
    assert cleared[-1]["msdyn_communicationprovidersettingid@odata.bind"] is None
    row = rig.dataverse.row(record_id)
    assert row is not None
    assert row["_msdyn_communicationprovidersettingid_value"] is None


def test_a_412_rereads_the_row_and_the_workers_record_wins(rig: Rig) -> None:
    record_id = new_id()
    onboard(rig, record_id)
    rig.run()
    rig.dataverse.edit(record_id, {"msdyn_name": "Renamed in Dynamics",
                                   "msdyn_errormessage": "typed by a user"})
    rig.submit(event("deprovision.requested", record_id))

    report = rig.run()

    assert report.stopped == "empty"
    row = in_step(rig, record_id)
    assert row["msdyn_name"] == "Contoso WhatsApp"
    assert row["msdyn_errormessage"] is None
    statuses = [(c.method, c.status) for c in rig.api_calls()][-4:]
    assert statuses == [("PATCH", 412), ("GET", 200), ("PATCH", 200), ("PATCH", 200)]
    assert rig.mirror.state.status()["conflicts"] == "1"


def test_a_row_deleted_in_dataverse_is_created_again(rig: Rig) -> None:
    record_id = new_id()
    onboard(rig, record_id)
    rig.run()
    rig.dataverse.remove(record_id)
    rig.submit(event("deprovision.requested", record_id))
    rig.run()
    row = in_step(rig, record_id)
    assert row["statuscode"] == StatusReason.DEPROVISIONED


def test_a_create_sent_again_after_a_crash_only_reconciles(rig: Rig) -> None:
    record_id = new_id()
    onboard(rig, record_id)
    create = OutboxEntry.decode(rig.store.outbox_peek(1)[0])
    rig.mirror.send(create)
    rig.mirror.state.forget_etag(record_id)  # the crash lost what the POST answered
    rig.mirror.send(create)
    calls = [(c.method, c.status) for c in rig.api_calls()]
    assert calls[-2:] == [("POST", 412), ("GET", 200)]
    assert rig.mirror.state.etag(record_id) == rig.dataverse.row(record_id)["@odata.etag"]  # type: ignore[index]


def test_a_row_the_mirror_never_wrote_is_read_before_its_first_update(rig: Rig) -> None:
    record_id = new_id()
    onboard(rig, record_id)
    rig.store.outbox_ack(rig.store.outbox_size())  # made before the mirror was switched on
    rig.submit(event("deprovision.requested", record_id))
    rig.run()
    assert [c.method for c in rig.api_calls()][:2] == ["GET", "POST"]
    in_step(rig, record_id)


def test_a_429_pauses_the_mirror_for_retry_after_and_sends_nothing_meanwhile() -> None:
    rig = make_rig(request_budget=2, window_seconds=30)
    record_ids = [new_id() for _ in range(3)]
    for record_id in record_ids:
        onboard(rig, record_id)
    waiting = rig.store.outbox_size()

    first = rig.run()
    assert (first.sent, first.stopped) == (2, "throttled")
    assert first.remaining == waiting - 2
    status = rig.mirror.state.status()
    assert json.loads(status["last_error"])["code"] == "0x80072322"
    assert float(status["paused_until"]) == pytest.approx(rig.clock() + 30)

    calls = len(rig.dataverse.calls)
    rig.clock.advance(29)
    assert rig.run().stopped == "paused"
    assert len(rig.dataverse.calls) == calls  # not one request while throttled

    rig.clock.advance(1)
    rig.dataverse.set_budget(None)
    assert rig.run().stopped == "empty"
    for record_id in record_ids:
        in_step(rig, record_id)


def test_an_outage_keeps_the_entries_and_backs_off_then_drains_in_order(rig: Rig) -> None:
    record_ids = [new_id() for _ in range(3)]
    rig.dataverse.start_outage(503)
    for record_id in record_ids:
        onboard(rig, record_id)
        rig.submit(event("deprovision.requested", record_id))
    waiting = rig.store.outbox_size()

    pauses = []
    for _ in range(3):
        report = rig.run()
        assert (report.sent, report.remaining, report.stopped) == (0, waiting, "unavailable")
        pause = float(rig.mirror.state.status()["paused_until"]) - rig.clock()
        pauses.append(pause)
        rig.clock.advance(pause)
    assert pauses == [1.0, 2.0, 4.0]
    error = mirror_status(rig.store, rig.mirror.state, rig.mirror.settings,
                          datetime.fromtimestamp(rig.clock(), UTC))
    assert error["failing"]
    assert error["last_error"]["status"] == 503

    rig.dataverse.end_outage()
    calls_before = len(rig.api_calls())
    assert rig.run().stopped == "empty"
    sent = [c for c in rig.api_calls()[calls_before:] if c.status < 300]
    for record_id in record_ids:
        in_step(rig, record_id)
        mine = [c.method for c in sent if c.record_id == record_id or (
            c.method == "POST" and isinstance(c.body, dict)
            and c.body.get(PRIMARY_KEY) == record_id)]
        assert mine == ["POST", "PATCH", "PATCH", "PATCH"]
    assert rig.mirror.state.status()["failures"] == "0"


def test_a_refused_entry_blocks_the_outbox_until_an_operator_skips_it(rig: Rig) -> None:
    first, second = new_id(), new_id()
    onboard(rig, first)
    onboard(rig, second)
    rig.dataverse.fail_next(*[Fault(403, "0x80040220", "Principal user is missing "
                                    "prvCreatemsdyn_ocprovisioningstate privilege")] * 2)
    report = rig.run()
    assert (report.sent, report.stopped) == (0, "rejected")
    assert "0x80040220" in (report.error or "")
    rig.clock.advance(60)
    assert rig.run().stopped == "rejected"  # still refused: nothing behind it moves

    dropped = rig.mirror.skip()
    assert isinstance(dropped, OutboxEntry)
    assert (dropped.op, dropped.record_id) == ("create", first)
    assert rig.run().stopped == "empty"  # no pause after a skip
    assert rig.dataverse.row(first) is not None  # its next update re-created it
    in_step(rig, first)
    in_step(rig, second)


def test_skip_on_an_empty_outbox_or_during_a_run(rig: Rig) -> None:
    assert rig.mirror.skip() is None
    onboard(rig, new_id())
    assert rig.mirror.state.acquire("someone", 30)
    with pytest.raises(MirrorBusy):
        rig.mirror.skip()


def test_an_unreadable_outbox_entry_blocks_with_a_clear_error(rig: Rig) -> None:
    rig.store.commit(Commit(record_id=new_id(), expected_version=0, before=None, after=None,
                            entries=(), outbox_entry="{not json"))
    report = rig.run()
    assert report.stopped == "rejected"
    assert "unreadable_entry" in (report.error or "")
    assert rig.mirror.skip() == "{not json"


def test_only_one_consumer_sends_at_a_time(rig: Rig) -> None:
    onboard(rig, new_id())
    assert rig.mirror.state.acquire("another-worker", 30)
    report = rig.run()
    assert (report.stopped, report.sent, report.requests) == ("locked", 0, 0)
    rig.clock.advance(31)  # the other consumer died: its lock expired
    assert rig.run().stopped == "empty"


class LosingState(MemoryMirrorState):
    """A lock that is lost (expired while a request hung) before the first ack."""

    def renew(self, owner: str, seconds: float) -> bool:
        return False


def test_an_entry_is_never_acknowledged_after_the_lock_was_lost(rig: Rig) -> None:
    onboard(rig, new_id())
    waiting = rig.store.outbox_size()
    mirror = make_mirror(rig.mirror.settings, rig.store, rig.http, rig.clock,
                         LosingState(clock=rig.clock))
    report = mirror.run()
    assert report.stopped == "lock_lost"
    assert rig.store.outbox_size() == waiting


def test_a_run_ends_when_its_budget_is_used(rig: Rig) -> None:
    for _ in range(3):
        onboard(rig, new_id())
    report = rig.run(budget=0.0)
    assert (report.sent, report.stopped) == (0, "budget")
    assert rig.run().stopped == "empty"


def test_the_pacer_state_is_kept_between_runs(rig: Rig) -> None:
    onboard(rig, new_id())
    rig.run()
    assert float(rig.mirror.state.status()["pace_tat"]) > rig.clock() - 1


def test_the_status_shows_the_lag_the_last_success_and_the_last_error(rig: Rig) -> None:
    record_id = new_id()
    onboard(rig, record_id)
    rig.run()
    rig.submit(event("deprovision.requested", record_id))
    rig.dataverse.fail_next(Fault(400, "0x80040203", "Invalid argument."))
    rig.run()
    later = datetime.now(UTC) + timedelta(seconds=5)
    status = mirror_status(rig.store, rig.mirror.state, rig.mirror.settings, later)
    assert status["outbox"]["entries"] == 2
    assert status["outbox"]["lag_seconds"] >= 5
    assert status["outbox"]["next"]["record_id"] == record_id
    assert status["last_success"]["version"] == 3
    assert status["last_error"]["code"] == "0x80040203"
    assert status["failing"]
    text = format_status(status)
    assert "2 entries waiting" in text
    assert "0x80040203 (HTTP 400) DataverseRejected: Invalid argument." in text
    assert "(rejected)" in text.splitlines()[-2]  # paused until …, after a refusal


def test_the_status_of_a_mirror_that_is_off(rig: Rig) -> None:
    status = mirror_status(rig.store, None, None, datetime.now(UTC))
    assert (status["mirror"], status["failing"]) == ("off", False)
    assert format_status(status).splitlines()[:2] == [
        "mirror        off (PROVISIONING_DATAVERSE_URL is not set)",
        "outbox        empty"]  # the mirror being off, that says nothing of Dataverse


def test_differing_treats_empty_text_as_null_and_compares_ids_case_blind(rig: Rig) -> None:
    record_id = new_id()
    onboard(rig, record_id)
    record = rig.record(record_id)
    row = record.to_dataverse()
    row["msdyn_exceptiondetails"] = None
    lookup = LOOKUPS[-1].value_property
    row[lookup] = (row[lookup] or "").upper()
    assert differing(record, row) == frozenset()
    row["statuscode"] = int(StatusReason.ERROR)
    assert differing(record, row) == {"statecode", "statuscode"}


@pytest.mark.parametrize(("raw", "problem"), [
    ("{oops", "not JSON"),
    ("[]", "not a JSON object"),
    ('{"op": "upsert", "record_id": "x"}', "op must be one of create, update, delete"),
    ('{"op": "delete"}', "record_id is missing"),
    ('{"op": "update", "record_id": "x"}', "row is missing"),
    ('{"op": "delete", "record_id": "x", "columns": "statuscode"}', "columns must be a list"),
])
def test_an_outbox_entry_is_checked_before_it_is_sent(raw: str, problem: str) -> None:
    with pytest.raises(UnreadableEntry, match=problem):
        OutboxEntry.decode(raw)


def test_a_delete_entry_needs_no_row_and_tolerates_a_bad_time() -> None:
    entry = OutboxEntry.decode('{"op": "delete", "record_id": "x", "at": "yesterday"}')
    assert (entry.op, entry.row, entry.at, entry.version) == ("delete", None, None, None)
