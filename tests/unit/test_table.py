"""The table as data matches SPEC §1 and the seed reference page of msdyn_ocprovisioningstate.

Every expected value below is copied by hand from SPEC.md and the seed, not from the code.
"""

from __future__ import annotations

import pytest

from statemachine import (
    CHANNEL_LOOKUP,
    COLUMNS,
    ENTITY,
    ENTITY_SET,
    ERROR_MESSAGE_MAX,
    EXCEPTION_DETAILS_MAX,
    LOOKUP_BY_COLUMN,
    LOOKUP_BY_PARENT,
    LOOKUPS,
    NAME_MAX,
    PROVISIONING_RESPONSE_MAX,
    AutomatedCallingStatus,
    ChannelKind,
    DeleteRule,
    GateKeeperReason,
    GateKeeperStatus,
    StateCode,
    StatusReason,
)
from statemachine.table import COLUMN_BY_NAME, PRIMARY_KEY, ColumnType, RequiredLevel

# SPEC §1.2 (and the seed's many-to-one relationships): column, parent table,
# navigation property, parent entity set, delete rule.
EXPECTED_LOOKUPS = [
    ("msdyn_ocfbapplicationid", "msdyn_ocfbapplication", "msdyn_ocfbapplicationid",
     "msdyn_ocfbapplications", "RemoveLink"),
    ("msdyn_ocfbpageid", "msdyn_ocfbpage", "msdyn_ocfbpageid", "msdyn_ocfbpages", "RemoveLink"),
    ("msdyn_oclinechannelconfigid", "msdyn_oclinechannelconfig", "msdyn_oclinechannelconfigid",
     "msdyn_oclinechannelconfigs", "RemoveLink"),
    ("msdyn_octeamschannelconfigid", "msdyn_octeamschannelconfig",
     "msdyn_octeamschannelconfigid", "msdyn_octeamschannelconfigs", "RemoveLink"),
    ("msdyn_ocwhatsappchannelaccountid", "msdyn_ocwhatsappchannelaccount",
     "msdyn_ocwhatsappchannelaccountId", "msdyn_ocwhatsappchannelaccounts", "Cascade"),
    ("msdyn_phonenumberid", "msdyn_ocphonenumber", "msdyn_phonenumberid",
     "msdyn_ocphonenumbers", "RemoveLink"),
    ("msdyn_voicechannelsettingid", "msdyn_ocvoicechannelsetting", "msdyn_voicechannelsettingid",
     "msdyn_ocvoicechannelsettings", "Cascade"),
    ("msdyn_communicationprovidersettingid", "msdyn_occommunicationprovidersetting",
     "msdyn_communicationprovidersettingid", "msdyn_occommunicationprovidersettings",
     "RemoveLink"),
]


def test_entity_names_and_primary_key_match_the_web_api():
    assert ENTITY == "msdyn_ocprovisioningstate"
    assert ENTITY_SET == "msdyn_ocprovisioningstates"
    assert PRIMARY_KEY == "msdyn_ocprovisioningstateid"


@pytest.mark.parametrize(
    ("value", "label", "statecode"),
    [
        (192350001, "Draft", 0),
        (192350002, "Processing", 0),
        (192350003, "Running", 0),
        (192350004, "Error", 0),
        (192350005, "Deprovisioning", 0),
        (192350006, "Deprovisioned", 1),
    ],
)
def test_every_status_reason_has_its_value_label_and_statecode(value, label, statecode):
    status = StatusReason(value)
    assert status.label == label
    assert int(status.statecode) == statecode
    assert StatusReason.from_label(label) is status


def test_status_reason_has_exactly_the_six_values_of_the_spec():
    assert sorted(int(status) for status in StatusReason) == list(range(192350001, 192350007))


def test_statecode_is_inactive_exactly_for_deprovisioned():
    inactive = [status for status in StatusReason if status.statecode is StateCode.INACTIVE]
    assert inactive == [StatusReason.DEPROVISIONED]


def test_statecode_values_and_labels():
    assert [(int(code), code.label) for code in StateCode] == [(0, "Active"), (1, "Inactive")]


def test_gatekeeper_status_choices_match_the_seed():
    assert [(int(choice), choice.label) for choice in GateKeeperStatus] == [
        (715240000, "Active"), (715240001, "Inactive"),
    ]


def test_gatekeeper_status_reason_choices_match_the_seed():
    assert [(int(choice), choice.label) for choice in GateKeeperReason] == [
        (0, "Running"), (1, "Error"), (2, "Deprovisioned"),
    ]


def test_automated_calling_status_choices_match_the_seed():
    assert [(int(choice), choice.label) for choice in AutomatedCallingStatus] == [
        (0, "NotTested"), (1, "Success"), (2, "Failure"), (3, "InProgress"),
    ]


@pytest.mark.parametrize("label", ["NotTested", "Success", "Failure", "InProgress"])
def test_automated_calling_status_is_found_by_its_label(label):
    assert AutomatedCallingStatus.from_label(label).label == label


def test_an_unknown_calling_label_is_not_found():
    with pytest.raises(KeyError):
        AutomatedCallingStatus.from_label("NOT_TESTED")


def test_the_table_has_exactly_the_eight_lookups_of_the_spec_in_order():
    actual = [
        (lookup.column, lookup.parent_table, lookup.navigation_property,
         lookup.parent_entity_set, lookup.on_parent_delete.value)
        for lookup in LOOKUPS
    ]
    assert actual == EXPECTED_LOOKUPS


@pytest.mark.parametrize(
    ("column", "parent", "navigation", "entity_set", "rule"), EXPECTED_LOOKUPS,
)
def test_each_lookup_is_found_by_column_and_by_parent(column, parent, navigation, entity_set,
                                                      rule):
    lookup = LOOKUP_BY_COLUMN[column]
    assert LOOKUP_BY_PARENT[parent] is lookup
    assert lookup.value_property == f"_{column}_value"
    assert lookup.bind_property == f"{navigation}@odata.bind"
    assert lookup.parent_entity_set == entity_set
    assert lookup.on_parent_delete is DeleteRule(rule)


def test_whatsapp_navigation_property_keeps_its_capital_i():
    lookup = LOOKUP_BY_COLUMN["msdyn_ocwhatsappchannelaccountid"]
    assert lookup.navigation_property == "msdyn_ocwhatsappchannelaccountId"
    assert lookup.bind_property == "msdyn_ocwhatsappchannelaccountId@odata.bind"
    # The read form keeps the lowercase logical name.
    assert lookup.value_property == "_msdyn_ocwhatsappchannelaccountid_value"


def test_only_whatsapp_and_voice_parents_cascade_their_delete():
    cascading = {lookup.parent_table for lookup in LOOKUPS
                 if lookup.on_parent_delete is DeleteRule.CASCADE}
    assert cascading == {"msdyn_ocwhatsappchannelaccount", "msdyn_ocvoicechannelsetting"}


def test_delete_rules_are_cascade_and_remove_link_only():
    assert {rule.value for rule in DeleteRule} == {"Cascade", "RemoveLink"}


@pytest.mark.parametrize(
    ("kind", "column"),
    [
        ("facebook", "msdyn_ocfbpageid"),
        ("line", "msdyn_oclinechannelconfigid"),
        ("teams", "msdyn_octeamschannelconfigid"),
        ("whatsapp", "msdyn_ocwhatsappchannelaccountid"),
        ("voice", "msdyn_voicechannelsettingid"),
        ("phonenumber", "msdyn_phonenumberid"),
    ],
)
def test_each_channel_kind_is_identified_by_its_lookup(kind, column):
    channel = ChannelKind(kind)
    assert CHANNEL_LOOKUP[channel] == column
    assert channel.lookup is LOOKUP_BY_COLUMN[column]


def test_there_are_exactly_six_channel_kinds():
    assert {kind.value for kind in ChannelKind} == {
        "facebook", "line", "teams", "whatsapp", "voice", "phonenumber",
    }
    assert set(CHANNEL_LOOKUP) == set(ChannelKind)


def test_text_maxima_match_the_spec():
    assert NAME_MAX == 100
    assert EXCEPTION_DETAILS_MAX == 8192
    assert ERROR_MESSAGE_MAX == 8192
    assert PROVISIONING_RESPONSE_MAX == 2000


def test_the_columns_are_exactly_those_of_the_spec():
    expected = {
        "msdyn_ocprovisioningstateid", "msdyn_name", "statecode", "statuscode",
        "msdyn_gatekeeperstatus", "msdyn_gatekeeperstatusreason",
        "msdyn_automatedcallingstatus", "msdyn_exceptiondetails", "msdyn_errormessage",
        "msdyn_provisioningresponse", "createdon", "modifiedon", "versionnumber",
        *(row[0] for row in EXPECTED_LOOKUPS),
    }
    names = [column.logical_name for column in COLUMNS]
    assert len(names) == len(set(names))
    assert set(names) == expected
    assert set(COLUMN_BY_NAME) == expected


@pytest.mark.parametrize(
    ("name", "column_type", "max_length", "choices"),
    [
        ("msdyn_ocprovisioningstateid", ColumnType.UUID, None, None),
        ("msdyn_name", ColumnType.TEXT, 100, None),
        ("statecode", ColumnType.STATE, None, StateCode),
        ("statuscode", ColumnType.STATUS, None, StatusReason),
        ("msdyn_gatekeeperstatus", ColumnType.CHOICE, None, GateKeeperStatus),
        ("msdyn_gatekeeperstatusreason", ColumnType.CHOICE, None, GateKeeperReason),
        ("msdyn_automatedcallingstatus", ColumnType.CHOICE, None, AutomatedCallingStatus),
        ("msdyn_exceptiondetails", ColumnType.MEMO, 8192, None),
        ("msdyn_errormessage", ColumnType.MEMO, 8192, None),
        ("msdyn_provisioningresponse", ColumnType.MEMO, 2000, None),
        ("createdon", ColumnType.DATETIME, None, None),
        ("modifiedon", ColumnType.DATETIME, None, None),
        ("versionnumber", ColumnType.INTEGER, None, None),
        *((row[0], ColumnType.LOOKUP, None, None) for row in EXPECTED_LOOKUPS),
    ],
)
def test_each_column_has_its_type_length_and_choices(name, column_type, max_length, choices):
    column = COLUMN_BY_NAME[name]
    assert column.column_type is column_type
    assert column.max_length == max_length
    assert column.choices is choices


@pytest.mark.parametrize(
    ("name", "required"),
    [
        ("msdyn_name", RequiredLevel.APPLICATION),
        ("msdyn_automatedcallingstatus", RequiredLevel.APPLICATION),  # seed: ApplicationRequired
        ("msdyn_exceptiondetails", RequiredLevel.APPLICATION),  # seed: ApplicationRequired
        ("msdyn_gatekeeperstatus", RequiredLevel.NONE),  # seed: None
        ("msdyn_gatekeeperstatusreason", RequiredLevel.NONE),  # seed: None
        ("msdyn_errormessage", RequiredLevel.NONE),
        ("msdyn_provisioningresponse", RequiredLevel.NONE),
        *((row[0], RequiredLevel.NONE) for row in EXPECTED_LOOKUPS),  # seed: None
    ],
)
def test_each_writable_column_has_the_required_level_of_the_seed(name, required):
    assert COLUMN_BY_NAME[name].required is required
