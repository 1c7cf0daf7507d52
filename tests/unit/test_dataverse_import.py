"""``provisioning dataverse import``: an organization's rows become records, as they are."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest

from statemachine import (
    PRIMARY_KEY,
    ChannelKind,
    GateKeeperReason,
    GateKeeperStatus,
    Result,
    StatusReason,
)
from tests.factories import event, new_id
from tests.unit.test_dataverse_support import Rig, make_rig, provision
from worker.dataverse import Imported, Importer, import_record
from worker.dataverse.importer import channel_kind_of, record_from_row
from worker.keys import Keys
from worker.store.redis import RedisStateStore

ACCOUNT, PROVIDER, PHONE, VOICE = new_id(), new_id(), new_id(), new_id()


def running_row(**values: Any) -> dict[str, Any]:
    """A row as a sandbox org has it: Running, gate Active/Running."""
    return {PRIMARY_KEY: new_id(), "msdyn_name": "Contoso WhatsApp", "statecode": 0,
            "statuscode": int(StatusReason.RUNNING),
            "msdyn_gatekeeperstatus": int(GateKeeperStatus.ACTIVE),
            "msdyn_gatekeeperstatusreason": int(GateKeeperReason.RUNNING),
            "msdyn_automatedcallingstatus": 1, "msdyn_exceptiondetails": None,
            "msdyn_provisioningresponse": "provisioned by Omnichannel",
            "_msdyn_ocwhatsappchannelaccountid_value": ACCOUNT,
            "_msdyn_communicationprovidersettingid_value": PROVIDER, **values}


@pytest.fixture
def rig() -> Rig:
    return make_rig()


def importer(rig: Rig) -> Importer:
    return Importer(rig.mirror.client, rig.store, rig.mirror.state, sleep=rig.clock.sleep)


def test_rows_become_records_with_their_ids_states_lookups_and_versions(rig: Rig) -> None:
    whatsapp = running_row()
    voice = running_row(**{"_msdyn_ocwhatsappchannelaccountid_value": None,
                           "_msdyn_voicechannelsettingid_value": VOICE,
                           "_msdyn_phonenumberid_value": PHONE, "msdyn_name": "Voice"})
    draft = {PRIMARY_KEY: new_id(), "msdyn_name": "Draft", "statuscode": 192350001}
    rig.dataverse.seed([whatsapp, voice, draft])

    report = importer(rig).run(page_size=2)

    assert (report.rows, report.pages, len(report.imported)) == (3, 2, 3)
    assert report.ok
    record = rig.record(whatsapp[PRIMARY_KEY])
    row = rig.dataverse.row(whatsapp[PRIMARY_KEY])
    assert row is not None
    assert record.version == row["versionnumber"]
    assert record.status is StatusReason.RUNNING
    assert record.gatekeeper == (GateKeeperStatus.ACTIVE, GateKeeperReason.RUNNING)
    assert record.links["msdyn_ocwhatsappchannelaccountid"] == ACCOUNT
    assert record.links["msdyn_communicationprovidersettingid"] == PROVIDER
    assert record.tracking.channel_kind is ChannelKind.WHATSAPP
    assert record.exception_details == ""  # Dataverse's null
    assert rig.record(voice[PRIMARY_KEY]).tracking.channel_kind is ChannelKind.VOICE
    assert rig.record(draft[PRIMARY_KEY]).tracking.channel_kind is None
    [entry] = rig.store.history(whatsapp[PRIMARY_KEY])
    assert (entry.trigger, entry.outcome, entry.version) == ("import", Result.APPLIED,
                                                             record.version)
    assert entry.before is None
    assert entry.event_type == "dataverse.import"
    assert rig.mirror.state.etag(whatsapp[PRIMARY_KEY]) == row["@odata.etag"]
    assert rig.store.outbox_size() == 0  # the rows are there already
    assert [r.id for r in rig.store.list_records(kind="whatsapp")] == [whatsapp[PRIMARY_KEY]]


def test_a_second_import_skips_what_the_store_knows(rig: Rig) -> None:
    rig.dataverse.seed([running_row()])
    importer(rig).run(page_size=10)
    rig.dataverse.seed([running_row()])
    report = importer(rig).run(page_size=10)
    assert (len(report.imported), len(report.existing)) == (1, 1)


def test_a_record_deleted_here_is_never_resurrected_by_an_import(rig: Rig) -> None:
    record_id, account = new_id(), new_id()
    rig.submit(provision(record_id, channel_id=account))
    rig.submit(event("parent.deleted", None, {"table": "msdyn_ocwhatsappchannelaccount",
                                              "id": account}))
    rig.dataverse.seed([running_row(**{PRIMARY_KEY: record_id})])
    report = importer(rig).run(page_size=10)
    assert report.existing == [record_id]
    assert rig.store.load(record_id) is None


def test_rows_that_do_not_parse_or_break_an_invariant_are_refused_with_reasons(
        rig: Rig) -> None:
    bad_status = running_row(statuscode=1)
    gate_unset = running_row(msdyn_gatekeeperstatus=None, msdyn_gatekeeperstatusreason=None)
    error_without_details = running_row(statuscode=int(StatusReason.ERROR))
    rig.dataverse.seed([bad_status, gate_unset, error_without_details, running_row()])
    report = importer(rig).run(page_size=10)
    assert len(report.imported) == 1
    refused = {r.record_id: r.problems for r in report.refused}
    assert refused[bad_status[PRIMARY_KEY]] == ("statuscode: is not valid (1 is not a valid "
                                                "StatusReason)",)
    assert refused[gate_unset[PRIMARY_KEY]] == (
        "invariant 3: a Running record has GateKeeper (Active, Running)",)
    assert refused[error_without_details[PRIMARY_KEY]] == (
        "invariant 5: an Error record has exception details",)
    for record_id in refused:
        assert rig.store.load(record_id) is None


def test_a_row_without_id_or_a_version_is_refused() -> None:
    with pytest.raises(ValueError, match="msdyn_ocprovisioningstateid: is required"):
        record_from_row({"msdyn_name": "x"})
    with pytest.raises(ValueError, match="versionnumber: must be at least 1"):
        record_from_row({**running_row(), "createdon": "2026-01-01T00:00:00Z",
                         "modifiedon": "2026-01-01T00:00:00Z", "versionnumber": 0})


def test_a_dry_run_writes_nothing(rig: Rig) -> None:
    rig.dataverse.seed([running_row(), running_row()])
    report = importer(rig).run(page_size=10, dry_run=True)
    assert len(report.imported) == 2
    assert rig.store.list_records() == []


def test_a_429_during_the_import_waits_retry_after_and_goes_on() -> None:
    rig = make_rig(request_budget=2, window_seconds=20)
    rig.dataverse.seed([running_row() for _ in range(5)])
    report = importer(rig).run(page_size=2)
    assert len(report.imported) == 5
    assert 20.0 in rig.clock.slept


def test_an_imported_record_takes_events_and_its_row_is_patched_without_conflict(
        rig: Rig) -> None:
    row = running_row()
    rig.dataverse.seed([row])
    importer(rig).run(page_size=10)
    record_id = row[PRIMARY_KEY]
    version = rig.record(record_id).version

    rig.submit(event("deprovision.requested", record_id))
    assert rig.record(record_id).version == version + 2
    report = rig.run()

    assert report.stopped == "empty"
    patches = rig.api_calls("PATCH")
    assert [c.status for c in patches] == [200, 200]
    assert patches[0].if_match == f'W/"{version}"'
    assert rig.mirror.state.status().get("conflicts") is None
    assert rig.dataverse.row(record_id)["statuscode"] == StatusReason.DEPROVISIONED  # type: ignore[index]


def test_import_record_writes_through_the_redis_store_once() -> None:
    store = RedisStateStore(fakeredis.FakeRedis(decode_responses=True), keys=Keys("t"))
    rig = make_rig()
    rig.dataverse.seed([running_row()])
    [row] = rig.dataverse.rows().values()
    record = record_from_row(row)
    assert import_record(store, record, source="test") is Imported.IMPORTED
    assert import_record(store, record, source="test") is Imported.EXISTS
    loaded = store.load(record.id)
    assert loaded is not None
    assert loaded.version == record.version
    assert store.records_linking("msdyn_ocwhatsappchannelaccountid", ACCOUNT) == [record.id]
    assert [e.trigger for e in store.history(record.id)] == ["import"]


def test_the_channel_kind_is_the_one_whose_lookup_is_set() -> None:
    assert channel_kind_of({"msdyn_phonenumberid": PHONE}) is ChannelKind.PHONENUMBER
    assert channel_kind_of({"msdyn_phonenumberid": PHONE,
                            "msdyn_voicechannelsettingid": VOICE}) is ChannelKind.VOICE
    assert channel_kind_of({"msdyn_ocfbapplicationid": new_id()}) is None
