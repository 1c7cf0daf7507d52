"""A record as Dataverse Web API JSON (SPEC §5.1), its write form, and its stored form."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statemachine import (
    LOOKUPS,
    AutomatedCallingStatus,
    ChannelKind,
    GateKeeperReason,
    GateKeeperStatus,
    InvalidRecord,
    ProvisioningState,
    StatusReason,
    Tracking,
    truncate,
    utf16_length,
)

FORMATTED = "@OData.Community.Display.V1.FormattedValue"
CREATED = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC)
RECORD_ID = "6f9619ff-8b86-d011-b42d-00cf4fc964ff"
CHANNEL_ID = "0b3a9c54-43a7-4f7e-9d6e-2c52f6b1d001"
PROVIDER_ID = "0b3a9c54-43a7-4f7e-9d6e-2c52f6b1d002"

LOOKUP_COLUMNS = [
    "msdyn_ocfbapplicationid", "msdyn_ocfbpageid", "msdyn_oclinechannelconfigid",
    "msdyn_octeamschannelconfigid", "msdyn_ocwhatsappchannelaccountid", "msdyn_phonenumberid",
    "msdyn_voicechannelsettingid", "msdyn_communicationprovidersettingid",
]
GATE_PAIRS = [
    (None, None),
    (GateKeeperStatus.ACTIVE, GateKeeperReason.RUNNING),
    (GateKeeperStatus.INACTIVE, GateKeeperReason.ERROR),
    (GateKeeperStatus.INACTIVE, GateKeeperReason.DEPROVISIONED),
]


def make_record(**changes: object) -> ProvisioningState:
    links: dict[str, str | None] = dict.fromkeys(LOOKUP_COLUMNS)
    links["msdyn_ocwhatsappchannelaccountid"] = CHANNEL_ID
    links["msdyn_communicationprovidersettingid"] = PROVIDER_ID
    record = ProvisioningState(
        id=RECORD_ID, name="Contoso WhatsApp", status=StatusReason.RUNNING,
        created_on=CREATED, modified_on=CREATED + timedelta(minutes=5), version=4,
        gatekeeper_status=GateKeeperStatus.ACTIVE, gatekeeper_reason=GateKeeperReason.RUNNING,
        provisioning_response='{"ok": true}', links=links,
        tracking=Tracking(channel_kind=ChannelKind.WHATSAPP),
    )
    return record.evolve(**changes)


# -- the read form (SPEC §5.1) -------------------------------------------------------------

def test_read_form_has_exactly_the_properties_of_the_spec():
    row = make_record().to_dataverse()
    assert set(row) == {
        "@odata.etag", "msdyn_ocprovisioningstateid", "msdyn_name",
        "statecode", f"statecode{FORMATTED}", "statuscode", f"statuscode{FORMATTED}",
        "msdyn_gatekeeperstatus", f"msdyn_gatekeeperstatus{FORMATTED}",
        "msdyn_gatekeeperstatusreason", f"msdyn_gatekeeperstatusreason{FORMATTED}",
        "msdyn_automatedcallingstatus", f"msdyn_automatedcallingstatus{FORMATTED}",
        "msdyn_exceptiondetails", "msdyn_errormessage", "msdyn_provisioningresponse",
        *(f"_{column}_value" for column in LOOKUP_COLUMNS),
        "createdon", "modifiedon", "versionnumber",
    }


def test_read_form_values_of_a_running_record():
    row = make_record().to_dataverse()
    assert row["@odata.etag"] == 'W/"4"'
    assert row["versionnumber"] == 4
    assert row["msdyn_ocprovisioningstateid"] == RECORD_ID
    assert row["msdyn_name"] == "Contoso WhatsApp"
    assert (row["statecode"], row[f"statecode{FORMATTED}"]) == (0, "Active")
    assert (row["statuscode"], row[f"statuscode{FORMATTED}"]) == (192350003, "Running")
    assert row["msdyn_gatekeeperstatus"] == 715240000
    assert row[f"msdyn_gatekeeperstatus{FORMATTED}"] == "Active"
    assert row["msdyn_gatekeeperstatusreason"] == 0
    assert row[f"msdyn_gatekeeperstatusreason{FORMATTED}"] == "Running"
    assert row["msdyn_automatedcallingstatus"] == 0
    assert row[f"msdyn_automatedcallingstatus{FORMATTED}"] == "NotTested"
    assert row["msdyn_exceptiondetails"] == ""
    assert row["msdyn_errormessage"] is None
    assert row["msdyn_provisioningresponse"] == '{"ok": true}'
    assert row["createdon"] == "2026-11-27T10:00:00Z"
    assert row["modifiedon"] == "2026-11-27T10:05:00Z"


def test_every_lookup_value_property_is_present_and_null_when_unset():
    row = make_record().to_dataverse()
    for column in LOOKUP_COLUMNS:
        assert f"_{column}_value" in row
    assert row["_msdyn_ocwhatsappchannelaccountid_value"] == CHANNEL_ID
    assert row["_msdyn_communicationprovidersettingid_value"] == PROVIDER_ID
    unset = [c for c in LOOKUP_COLUMNS if c not in (
        "msdyn_ocwhatsappchannelaccountid", "msdyn_communicationprovidersettingid")]
    assert all(row[f"_{column}_value"] is None for column in unset)


def test_etag_is_the_weak_version():
    assert make_record(version=123).to_dataverse()["@odata.etag"] == 'W/"123"'
    assert make_record(version=1).etag == 'W/"1"'


def test_unset_gatekeeper_choices_are_null_without_formatted_values():
    row = make_record(status=StatusReason.DRAFT, gatekeeper_status=None,
                      gatekeeper_reason=None).to_dataverse()
    assert row["msdyn_gatekeeperstatus"] is None
    assert row["msdyn_gatekeeperstatusreason"] is None
    assert f"msdyn_gatekeeperstatus{FORMATTED}" not in row
    assert f"msdyn_gatekeeperstatusreason{FORMATTED}" not in row
    # The columns that are never null keep their labels.
    assert row[f"statuscode{FORMATTED}"] == "Draft"
    assert row[f"statecode{FORMATTED}"] == "Active"
    assert row[f"msdyn_automatedcallingstatus{FORMATTED}"] == "NotTested"


def test_deprovisioned_record_reads_as_statecode_inactive():
    row = make_record(
        status=StatusReason.DEPROVISIONED, gatekeeper_status=GateKeeperStatus.INACTIVE,
        gatekeeper_reason=GateKeeperReason.DEPROVISIONED,
    ).to_dataverse()
    assert (row["statecode"], row[f"statecode{FORMATTED}"]) == (1, "Inactive")
    assert (row["statuscode"], row[f"statuscode{FORMATTED}"]) == (192350006, "Deprovisioned")
    assert row[f"msdyn_gatekeeperstatus{FORMATTED}"] == "Inactive"
    assert row[f"msdyn_gatekeeperstatusreason{FORMATTED}"] == "Deprovisioned"


@pytest.mark.parametrize("calling", list(AutomatedCallingStatus))
def test_calling_status_carries_its_label(calling):
    row = make_record(calling_status=calling).to_dataverse()
    assert row["msdyn_automatedcallingstatus"] == int(calling)
    assert row[f"msdyn_automatedcallingstatus{FORMATTED}"] == calling.label


def test_read_form_is_plain_json():
    row = make_record().to_dataverse()
    assert json.loads(json.dumps(row)) == row


# -- the write form ------------------------------------------------------------------------

def test_write_form_binds_set_lookups_and_nulls_cleared_ones():
    body = make_record().to_dataverse_write()
    assert body["msdyn_ocwhatsappchannelaccountId@odata.bind"] == (
        f"/msdyn_ocwhatsappchannelaccounts({CHANNEL_ID})")
    assert body["msdyn_communicationprovidersettingid@odata.bind"] == (
        f"/msdyn_occommunicationprovidersettings({PROVIDER_ID})")
    for bind in ("msdyn_ocfbapplicationid", "msdyn_ocfbpageid", "msdyn_oclinechannelconfigid",
                 "msdyn_octeamschannelconfigid", "msdyn_phonenumberid",
                 "msdyn_voicechannelsettingid"):
        assert body[f"{bind}@odata.bind"] is None


def test_write_form_has_columns_and_binds_but_no_read_only_properties():
    body = make_record().to_dataverse_write()
    assert set(body) == {
        "msdyn_name", "statecode", "statuscode", "msdyn_gatekeeperstatus",
        "msdyn_gatekeeperstatusreason", "msdyn_automatedcallingstatus",
        "msdyn_exceptiondetails", "msdyn_errormessage", "msdyn_provisioningresponse",
        "msdyn_ocfbapplicationid@odata.bind", "msdyn_ocfbpageid@odata.bind",
        "msdyn_oclinechannelconfigid@odata.bind", "msdyn_octeamschannelconfigid@odata.bind",
        "msdyn_ocwhatsappchannelaccountId@odata.bind", "msdyn_phonenumberid@odata.bind",
        "msdyn_voicechannelsettingid@odata.bind",
        "msdyn_communicationprovidersettingid@odata.bind",
    }
    assert body["statecode"] == 0
    assert body["statuscode"] == 192350003


@pytest.mark.parametrize("column", LOOKUP_COLUMNS)
def test_write_form_binds_each_lookup_to_its_parent_entity_set(column):
    lookup = next(lookup for lookup in LOOKUPS if lookup.column == column)
    links = dict.fromkeys(LOOKUP_COLUMNS)
    links[column] = PROVIDER_ID
    body = make_record(links=links).to_dataverse_write(only=frozenset({column}))
    assert body == {
        f"{lookup.navigation_property}@odata.bind": f"/{lookup.parent_entity_set}({PROVIDER_ID})",
    }


def test_write_form_only_limits_the_body_to_the_named_columns():
    record = make_record()
    body = record.to_dataverse_write(
        only=frozenset({"statuscode", "statecode", "msdyn_phonenumberid",
                        "msdyn_ocwhatsappchannelaccountid"}))
    assert body == {
        "statuscode": 192350003, "statecode": 0, "msdyn_phonenumberid@odata.bind": None,
        "msdyn_ocwhatsappchannelaccountId@odata.bind":
            f"/msdyn_ocwhatsappchannelaccounts({CHANNEL_ID})",
    }
    assert record.to_dataverse_write(only=frozenset()) == {}


def test_changed_columns_name_the_logical_columns_that_differ():
    before = make_record()
    links = {**before.links, "msdyn_phonenumberid": PROVIDER_ID}
    after = before.evolve(status=StatusReason.ERROR, exception_details="boom", links=links,
                          version=5, modified_on=CREATED + timedelta(hours=1))
    assert after.changed_columns(before) == frozenset(
        {"statuscode", "msdyn_exceptiondetails", "msdyn_phonenumberid"})
    assert before.changed_columns(before) == frozenset()


# -- reading rows back ---------------------------------------------------------------------

uuids = st.uuids().map(str)
utc_times = st.datetimes(timezones=st.just(UTC))
memo = st.text(max_size=300)


@st.composite
def records(draw: st.DrawFn) -> ProvisioningState:
    gate_status, gate_reason = draw(st.sampled_from(GATE_PAIRS))
    return ProvisioningState(
        id=draw(uuids),
        name=draw(st.text(max_size=100)),
        status=draw(st.sampled_from(StatusReason)),
        created_on=draw(utc_times),
        modified_on=draw(utc_times),
        version=draw(st.integers(min_value=1, max_value=2**53)),
        gatekeeper_status=gate_status,
        gatekeeper_reason=gate_reason,
        calling_status=draw(st.sampled_from(AutomatedCallingStatus)),
        exception_details=draw(memo),
        error_message=draw(st.none() | memo),
        provisioning_response=draw(st.none() | memo),
        links={column: draw(st.none() | uuids) for column in LOOKUP_COLUMNS},
    )


@st.composite
def trackings(draw: st.DrawFn) -> Tracking:
    maybe_text = st.none() | st.text(min_size=1, max_size=40)
    maybe_version = st.none() | st.integers(min_value=1, max_value=10**6)
    return Tracking(
        channel_kind=draw(st.none() | st.sampled_from(ChannelKind)),
        step=draw(st.none() | st.sampled_from(["provision", "deprovision", "calling_test"])),
        step_version=draw(maybe_version),
        step_event_id=draw(maybe_text),
        failed_call=draw(maybe_text),
        retry_attempt=draw(st.integers(min_value=0, max_value=1000)),
        calling_test_id=draw(maybe_text),
        calling_test_version=draw(maybe_version),
        calling_test_started_at=draw(st.none() | utc_times),
        step_trace=draw(st.none() | st.from_regex(
            r"\A00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]\Z")),
    )


@settings(max_examples=200, deadline=None)
@given(records())
def test_from_dataverse_reads_back_every_column_of_the_read_form(record):
    row = json.loads(json.dumps(record.to_dataverse()))
    assert ProvisioningState.from_dataverse(row) == record


@settings(max_examples=200, deadline=None)
@given(records(), trackings())
def test_stored_form_round_trips_with_its_tracking(record, tracking):
    record = record.evolve(tracking=tracking)
    data = json.loads(json.dumps(record.to_json()))
    restored = ProvisioningState.from_json(data)
    assert restored == record
    assert restored.tracking == tracking


def test_stored_form_without_tracking_reads_as_fresh_tracking():
    data = make_record().to_dataverse()
    assert ProvisioningState.from_json(data).tracking == Tracking()


def test_from_dataverse_accepts_what_a_real_org_returns():
    row = make_record().to_dataverse()
    row["msdyn_ocprovisioningstateid"] = RECORD_ID.upper()
    row["_msdyn_ocwhatsappchannelaccountid_value"] = CHANNEL_ID.upper()
    row["createdon"] = "2026-11-27T10:00:00+00:00"
    row["@odata.context"] = "https://org.example/api/data/v9.2/$metadata#msdyn_ocprovisioningstates"
    record = ProvisioningState.from_dataverse(row)
    assert record.id == RECORD_ID
    assert record.links["msdyn_ocwhatsappchannelaccountid"] == CHANNEL_ID
    assert record.created_on == CREATED


def test_from_dataverse_defaults_optional_columns_left_out():
    row = {
        "msdyn_ocprovisioningstateid": RECORD_ID, "msdyn_name": "n", "statuscode": 192350001,
        "createdon": "2026-11-27T10:00:00Z", "modifiedon": "2026-11-27T10:00:00Z",
        "versionnumber": 1,
    }
    record = ProvisioningState.from_dataverse(row)
    assert record.calling_status is AutomatedCallingStatus.NOT_TESTED
    assert record.gatekeeper == (None, None)
    assert record.exception_details == ""
    assert record.links == dict.fromkeys(LOOKUP_COLUMNS)


def problem_paths(row: dict[str, object]) -> set[str]:
    with pytest.raises(InvalidRecord) as caught:
        ProvisioningState.from_dataverse(row)
    return {problem.path for problem in caught.value.problems}


def test_from_dataverse_names_every_bad_field_at_once():
    row = make_record().to_dataverse()
    row.update({
        "msdyn_ocprovisioningstateid": "not-a-uuid",
        "msdyn_name": "x" * 101,
        "statuscode": 42,
        "msdyn_gatekeeperstatus": 7,
        "msdyn_gatekeeperstatusreason": "Running",
        "msdyn_automatedcallingstatus": 9,
        "msdyn_exceptiondetails": 12,
        "msdyn_errormessage": ["x"],
        "msdyn_provisioningresponse": {"a": 1},
        "_msdyn_phonenumberid_value": "nope",
        "_msdyn_ocfbpageid_value": 5,
        "createdon": "yesterday",
        "versionnumber": "four",
    })
    del row["modifiedon"]
    assert problem_paths(row) == {
        "msdyn_ocprovisioningstateid", "msdyn_name", "statuscode", "msdyn_gatekeeperstatus",
        "msdyn_gatekeeperstatusreason", "msdyn_automatedcallingstatus",
        "msdyn_exceptiondetails", "msdyn_errormessage", "msdyn_provisioningresponse",
        "_msdyn_phonenumberid_value", "_msdyn_ocfbpageid_value", "createdon", "modifiedon",
        "versionnumber",
    }


def test_from_dataverse_requires_id_name_status_times_and_version():
    assert problem_paths({}) == {
        "msdyn_ocprovisioningstateid", "msdyn_name", "statuscode", "createdon", "modifiedon",
        "versionnumber",
    }


def test_from_dataverse_refuses_a_statecode_that_contradicts_the_statuscode():
    row = make_record().to_dataverse()
    row["statecode"] = 1
    assert problem_paths(row) == {"statecode"}


@pytest.mark.parametrize("value", [5, 1.5, True, ["2026-11-27T10:00:00Z"], {"at": "now"}])
def test_from_dataverse_refuses_a_datetime_that_is_not_a_string(value):
    row = make_record().to_dataverse()
    row["createdon"] = value
    assert problem_paths(row) == {"createdon"}


def test_from_dataverse_refuses_a_datetime_outside_the_calendar():
    row = make_record().to_dataverse()
    row["modifiedon"] = "0001-01-01T00:00:00+01:00"
    assert problem_paths(row) == {"modifiedon"}


def test_invalid_record_message_lists_each_problem():
    row = make_record().to_dataverse()
    row["statuscode"] = 1
    row["versionnumber"] = None
    with pytest.raises(InvalidRecord, match=r"statuscode: .*; versionnumber: is required"):
        ProvisioningState.from_dataverse(row)


# -- truncate (SPEC §1: worker-written text is cut visibly, within its maximum) ------------

MARKER = re.compile(r"… \[truncated (\d+) chars\]\Z")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=3000), st.integers(min_value=32, max_value=2500))
def test_truncate_fits_the_maximum_and_ends_with_a_marker_naming_the_cut(text, max_length):
    result = truncate(text, max_length)
    assert utf16_length(result) <= max_length  # as Dataverse counts (SPEC §1)
    if utf16_length(text) <= max_length:
        assert result == text
        return
    found = MARKER.search(result)
    assert found is not None, result
    cut = int(found.group(1))
    kept = result[: found.start()]
    assert text.startswith(kept)
    assert len(kept) + cut == len(text)


@pytest.mark.parametrize("length", [8192, 8193, 9000, 12345 + 8192, 10**6])
def test_truncate_keeps_the_column_maximum_exactly(length):
    text = "é" * length
    result = truncate(text, 8192)
    assert len(result) == 8192
    if length > 8192:
        assert MARKER.search(result)
    else:
        assert result == text
