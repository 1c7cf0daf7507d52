"""Events in (SPEC §3): CloudEvents 1.0 structured form, validated with every problem at once."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from statemachine import (
    LOOKUPS,
    AutomatedCallingStatus,
    CallingTestCompleted,
    ChannelKind,
    Event,
    EventType,
    GateKeeperReason,
    GateKeeperReported,
    GateKeeperStatus,
    InvalidEvent,
    ParentDeleted,
    ProvisionRequested,
    parse_event,
)

RECORD_ID = "6f9619ff-8b86-d011-b42d-00cf4fc964ff"
CHANNEL_ID = "0b3a9c54-43a7-4f7e-9d6e-2c52f6b1d001"
PROVIDER_ID = "0b3a9c54-43a7-4f7e-9d6e-2c52f6b1d002"
PARENT_ID = "0b3a9c54-43a7-4f7e-9d6e-2c52f6b1d003"


def cloudevent(event_type: str, data: Any = None, **fields: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "specversion": "1.0", "id": "evt-1", "source": "channel-onboarding",
        "type": event_type, "subject": RECORD_ID,
    }
    if data is not None:
        raw["data"] = data
    raw.update(fields)
    return raw


def problems_of(raw: Any) -> dict[str, str]:
    with pytest.raises(InvalidEvent) as caught:
        parse_event(raw)
    return {problem.path: problem.reason for problem in caught.value.problems}


# -- the six types -------------------------------------------------------------------------

def test_provision_requested_is_parsed_with_channel_and_links():
    event = parse_event(cloudevent(
        "provision.requested",
        {"name": "Contoso WhatsApp", "channel": {"kind": "whatsapp", "id": CHANNEL_ID},
         "links": {"msdyn_communicationprovidersettingid": PROVIDER_ID,
                   "msdyn_phonenumberid": None}},
        time="2026-11-27T10:00:00Z",
    ))
    assert event == Event(
        id="evt-1", source="channel-onboarding", type=EventType.PROVISION_REQUESTED,
        subject=RECORD_ID,
        data=ProvisionRequested(
            name="Contoso WhatsApp", kind=ChannelKind.WHATSAPP, channel_id=CHANNEL_ID,
            links={"msdyn_communicationprovidersettingid": PROVIDER_ID,
                   "msdyn_phonenumberid": None}),
        time=datetime(2026, 11, 27, 10, 0, tzinfo=UTC),
    )


def test_provision_links_are_optional():
    event = parse_event(cloudevent(
        "provision.requested", {"name": "Line", "channel": {"kind": "line", "id": CHANNEL_ID}}))
    assert isinstance(event.data, ProvisionRequested)
    assert event.data.links == {}
    assert event.time is None


def test_ids_are_read_in_canonical_lowercase_form():
    event = parse_event(cloudevent(
        "provision.requested",
        {"name": "Teams", "channel": {"kind": "teams", "id": CHANNEL_ID.upper()}},
        subject=RECORD_ID.upper()))
    assert event.subject == RECORD_ID
    assert isinstance(event.data, ProvisionRequested)
    assert event.data.channel_id == CHANNEL_ID


def test_the_channel_lookup_may_repeat_the_channel_id_in_links():
    event = parse_event(cloudevent(
        "provision.requested",
        {"name": "Voice", "channel": {"kind": "voice", "id": CHANNEL_ID},
         "links": {"msdyn_voicechannelsettingid": CHANNEL_ID}}))
    assert isinstance(event.data, ProvisionRequested)
    assert event.data.channel_id == CHANNEL_ID


def test_the_channel_lookup_in_links_must_equal_the_channel_id():
    assert problems_of(cloudevent(
        "provision.requested",
        {"name": "Voice", "channel": {"kind": "voice", "id": CHANNEL_ID},
         "links": {"msdyn_voicechannelsettingid": PROVIDER_ID}},
    )).keys() == {"data.links.msdyn_voicechannelsettingid"}


@pytest.mark.parametrize(
    ("status", "reason"),
    [("Active", "Running"), ("Inactive", "Error"), ("Inactive", "Deprovisioned")],
)
def test_gatekeeper_reported_is_parsed_for_each_allowed_pair(status, reason):
    event = parse_event(cloudevent("gatekeeper.reported",
                                   {"status": status, "reason": reason, "details": "d"}))
    assert event.type is EventType.GATEKEEPER_REPORTED
    assert event.data == GateKeeperReported(
        status=GateKeeperStatus[status.upper()], reason=GateKeeperReason[reason.upper()],
        details="d")


@pytest.mark.parametrize(("status", "reason"), [("Active", "Error"), ("Inactive", "Running"),
                                                 ("Active", "Deprovisioned")])
def test_gatekeeper_reported_refuses_a_pair_outside_the_four_states(status, reason):
    assert problems_of(cloudevent("gatekeeper.reported",
                                  {"status": status, "reason": reason})).keys() == {"data.reason"}


@pytest.mark.parametrize("result", ["Success", "Failure"])
def test_calling_test_completed_is_parsed(result):
    event = parse_event(cloudevent("calling_test.completed",
                                   {"result": result, "test_id": "t-1", "details": "ok"}))
    assert event.data == CallingTestCompleted(
        result=AutomatedCallingStatus.from_label(result), test_id="t-1", details="ok")


@pytest.mark.parametrize("result", ["InProgress", "NotTested", "success", 1])
def test_calling_test_completed_result_must_be_success_or_failure(result):
    assert problems_of(cloudevent("calling_test.completed",
                                  {"result": result})).keys() == {"data.result"}


@pytest.mark.parametrize("lookup", LOOKUPS, ids=lambda lookup: lookup.parent_table)
def test_parent_deleted_is_parsed_for_every_parent_table(lookup):
    event = parse_event(cloudevent("parent.deleted",
                                   {"table": lookup.parent_table, "id": PARENT_ID}))
    assert event.data == ParentDeleted(table=lookup.parent_table, parent_id=PARENT_ID)


def test_parent_deleted_needs_no_subject():
    raw = cloudevent("parent.deleted",
                     {"table": "msdyn_ocphonenumber", "id": PARENT_ID})
    del raw["subject"]
    event = parse_event(raw)
    assert event.subject is None
    assert "subject" not in event.to_cloudevent()


def test_parent_deleted_refuses_a_table_that_is_not_a_parent():
    assert problems_of(cloudevent("parent.deleted",
                                  {"table": "account", "id": PARENT_ID})).keys() == {"data.table"}


@pytest.mark.parametrize("event_type", ["deprovision.requested", "calling_test.requested"])
@pytest.mark.parametrize("data", ["absent", None, {}])
def test_types_without_data_take_data_absent_null_or_empty(event_type, data):
    raw = cloudevent(event_type)
    if data != "absent":
        raw["data"] = data
    event = parse_event(raw)
    assert event.type is EventType(event_type)
    assert event.data is None
    assert event.subject == RECORD_ID


@pytest.mark.parametrize("event_type", ["deprovision.requested", "calling_test.requested"])
@pytest.mark.parametrize("data", [{"name": "x"}, [], "x", 0])
def test_types_without_data_refuse_any_other_data(event_type, data):
    assert problems_of(cloudevent(event_type, data)).keys() == {"data"}


@pytest.mark.parametrize("event_type", [
    "provision.requested", "deprovision.requested", "gatekeeper.reported",
    "calling_test.requested", "calling_test.completed",
])
def test_every_type_but_parent_deleted_needs_a_subject(event_type):
    raw = cloudevent(event_type)
    del raw["subject"]
    assert "subject" in problems_of(raw)


@pytest.mark.parametrize("event_type", ["provision.requested", "gatekeeper.reported",
                                        "calling_test.completed", "parent.deleted"])
@pytest.mark.parametrize("data", ["absent", None, [], "text"])
def test_types_with_data_refuse_missing_or_non_object_data(event_type, data):
    raw = cloudevent(event_type)
    if data != "absent":
        raw["data"] = data
    assert problems_of(raw).keys() == {"data"}


# -- every problem at once, each with its field path ---------------------------------------

def test_every_envelope_problem_is_reported_with_its_path():
    problems = problems_of({
        "specversion": "0.3", "id": 7, "source": "", "type": "provision.requested",
        "subject": "not-a-uuid", "time": "yesterday",
        "data": {"name": "n", "channel": {"kind": "line", "id": CHANNEL_ID}},
    })
    assert problems.keys() == {"specversion", "id", "source", "subject", "time"}
    assert "1.0" in problems["specversion"]
    assert "string" in problems["id"]


def test_every_data_problem_is_reported_with_its_path():
    problems = problems_of(cloudevent("provision.requested", {
        "name": "x" * 101,
        "channel": {"kind": "fax", "id": "12"},
        "links": {"msdyn_contactid": PROVIDER_ID, "msdyn_phonenumberid": "nope"},
    }))
    assert problems.keys() == {
        "data.name", "data.channel.kind", "data.channel.id", "data.links.msdyn_contactid",
        "data.links.msdyn_phonenumberid",
    }
    assert "100" in problems["data.name"]
    assert "whatsapp" in problems["data.channel.kind"]


def test_text_with_a_lone_surrogate_is_refused_with_its_path():
    raw = cloudevent("provision.requested", {
        "name": "Contoso \ud800", "channel": {"kind": "line", "id": CHANNEL_ID}})
    raw["id"] = "evt-\udfff"
    problems = problems_of(raw)
    assert problems.keys() == {"id", "data.name"}
    assert "lone surrogate" in problems["data.name"]


def test_missing_required_fields_are_each_reported():
    assert problems_of({}).keys() == {"specversion", "id", "source", "type", "subject"}
    assert problems_of(cloudevent("provision.requested", {})).keys() == {
        "data.name", "data.channel"}
    assert problems_of(cloudevent("provision.requested", {"name": " ", "channel": {}})).keys() \
        == {"data.name", "data.channel.kind", "data.channel.id"}
    assert problems_of(cloudevent("gatekeeper.reported", {})).keys() == {
        "data.status", "data.reason"}
    assert problems_of(cloudevent("parent.deleted", {})).keys() == {"data.table", "data.id"}


def test_an_unknown_type_is_refused_naming_the_known_ones():
    problems = problems_of(cloudevent("provision.cancelled"))
    assert problems.keys() == {"type"}
    assert "parent.deleted" in problems["type"]


def test_a_name_of_exactly_one_hundred_characters_is_accepted():
    event = parse_event(cloudevent(
        "provision.requested", {"name": "n" * 100, "channel": {"kind": "line", "id": CHANNEL_ID}}))
    assert isinstance(event.data, ProvisionRequested)
    assert len(event.data.name) == 100


@pytest.mark.parametrize("raw", [None, [], "event", 3, True])
def test_an_event_that_is_not_an_object_is_refused(raw):
    assert problems_of(raw).keys() == {""}


def test_invalid_event_message_lists_every_problem():
    with pytest.raises(InvalidEvent, match=r"specversion: is required; id: is required"):
        parse_event({"source": "s", "type": "deprovision.requested", "subject": RECORD_ID})


@pytest.mark.parametrize("moment", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_a_time_at_the_edge_of_the_calendar_is_refused_as_invalid(moment):
    assert problems_of(cloudevent("deprovision.requested", time=moment)).keys() == {"time"}


# -- round trip ----------------------------------------------------------------------------

uuids = st.uuids().map(str)
words = st.text(min_size=1, max_size=40).filter(lambda text: text.strip() != "")
details = st.none() | st.text(max_size=200)


def payloads(event_type: EventType) -> st.SearchStrategy[Any]:
    if event_type is EventType.PROVISION_REQUESTED:
        def provision(kind: ChannelKind, name: str, channel_id: str,
                      links: dict[str, str | None]) -> ProvisionRequested:
            links = {column: value for column, value in links.items()
                     if column != kind.lookup.column}
            return ProvisionRequested(name=name, kind=kind, channel_id=channel_id, links=links)
        return st.builds(
            provision, st.sampled_from(ChannelKind), st.text(min_size=1, max_size=100).filter(
                lambda text: text.strip() != ""), uuids,
            st.dictionaries(st.sampled_from([lookup.column for lookup in LOOKUPS]),
                            st.none() | uuids))
    if event_type is EventType.GATEKEEPER_REPORTED:
        return st.builds(
            lambda pair, text: GateKeeperReported(pair[0], pair[1], text),
            st.sampled_from([(GateKeeperStatus.ACTIVE, GateKeeperReason.RUNNING),
                             (GateKeeperStatus.INACTIVE, GateKeeperReason.ERROR),
                             (GateKeeperStatus.INACTIVE, GateKeeperReason.DEPROVISIONED)]),
            details)
    if event_type is EventType.CALLING_TEST_COMPLETED:
        return st.builds(
            CallingTestCompleted,
            st.sampled_from([AutomatedCallingStatus.SUCCESS, AutomatedCallingStatus.FAILURE]),
            st.none() | words, details)
    if event_type is EventType.PARENT_DELETED:
        return st.builds(ParentDeleted,
                         st.sampled_from([lookup.parent_table for lookup in LOOKUPS]), uuids)
    return st.none()


@st.composite
def events(draw: st.DrawFn) -> Event:
    event_type = draw(st.sampled_from(EventType))
    subject = draw(uuids) if event_type is not EventType.PARENT_DELETED \
        else draw(st.none() | uuids)
    return Event(
        id=draw(words), source=draw(words), type=event_type, subject=subject,
        data=draw(payloads(event_type)),
        time=draw(st.none() | st.datetimes(timezones=st.just(UTC))),
    )


@settings(max_examples=300, deadline=None)
@given(events())
def test_to_cloudevent_round_trips_through_json(event):
    raw = json.loads(json.dumps(event.to_cloudevent()))
    assert raw["specversion"] == "1.0"
    assert parse_event(raw) == event


# -- bad input never raises anything but InvalidEvent -------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=15,
)


def either(*likely: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A field that is usually plausible and sometimes any JSON at all."""
    return st.one_of(*likely, json_values)


plausible_data = st.fixed_dictionaries({}, optional={
    "name": either(st.text(max_size=120)),
    "channel": either(st.fixed_dictionaries({}, optional={
        "kind": either(st.sampled_from([kind.value for kind in ChannelKind])),
        "id": either(uuids)})),
    "links": either(st.dictionaries(
        st.sampled_from([lookup.column for lookup in LOOKUPS]) | st.text(max_size=10),
        either(uuids), max_size=3)),
    "status": either(st.sampled_from(["Active", "Inactive", "active"])),
    "reason": either(st.sampled_from(["Running", "Error", "Deprovisioned"])),
    "details": either(st.text(max_size=50)),
    "result": either(st.sampled_from(["Success", "Failure"])),
    "test_id": either(st.text(max_size=10)),
    "table": either(st.sampled_from([lookup.parent_table for lookup in LOOKUPS])),
    "id": either(uuids),
})
plausible_events = st.fixed_dictionaries({}, optional={
    "specversion": either(st.just("1.0")),
    "id": either(words),
    "source": either(words),
    "type": either(st.sampled_from([event_type.value for event_type in EventType])),
    "subject": either(uuids),
    "time": either(st.datetimes(timezones=st.timezones()).map(datetime.isoformat)),
    "data": either(plausible_data),
})


@settings(max_examples=500, deadline=None)
@given(st.one_of(json_values, plausible_events))
@example({"specversion": "1.0", "id": "e", "source": "s", "type": "deprovision.requested",
          "subject": RECORD_ID, "time": "0001-01-01T00:00:00+01:00"})
def test_arbitrary_json_never_raises_anything_but_invalid_event(raw):
    event: Event | None = None
    problems: tuple[object, ...] = ()
    try:
        event = parse_event(raw)
    except InvalidEvent as refused:
        problems = refused.problems
    if event is None:
        assert problems, "a refusal names at least one problem"
    else:
        assert parse_event(event.to_cloudevent()) == event
