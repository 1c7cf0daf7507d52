"""Store v2's compact forms (worker/codec.py) give back exactly what was stored."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from statemachine import HistoryEntry, ProvisioningState, Result, Tracking
from statemachine.history import Snapshot
from statemachine.table import AutomatedCallingStatus, StatusReason
from tests.unit.test_record import GATE_PAIRS, records, trackings, utc_times, uuids
from worker.store import codec

# Texts that hold the ids and phrases the codec replaces by tokens, and its "~".
tricky = st.lists(st.sampled_from(["~", "~~", "~r", "~A", " channel ", "Running", "x",
                                   "provisioning ", "GateKeeper reported ", "é", "\ud800"]),
                  max_size=12).map("".join)


@st.composite
def stored_records(draw: st.DrawFn) -> ProvisioningState:
    record = draw(records())
    ids = [record.id, *(v for v in record.links.values() if v)]
    text = st.lists(tricky | st.sampled_from(ids) | st.text(max_size=20), max_size=6).map(
        "".join)
    return record.evolve(
        tracking=draw(trackings()), exception_details=draw(text),
        error_message=draw(st.none() | text), provisioning_response=draw(st.none() | text))


@settings(max_examples=300, deadline=None)
@given(stored_records())
def test_a_record_round_trips(record: ProvisioningState) -> None:
    head = codec.pack_record(record)
    assert codec.head_version(head) == record.version
    assert codec.unpack_record(record.id, head) == record
    assert codec.unpack_record(record.id, head).to_json() == record.to_json()  # type: ignore[union-attr]


snapshots = st.none() | st.builds(
    lambda status, gate, calling: Snapshot(status, gate[0], gate[1], calling),
    st.sampled_from(StatusReason), st.sampled_from(GATE_PAIRS),
    st.sampled_from(AutomatedCallingStatus))


@st.composite
def entries(draw: st.DrawFn) -> HistoryEntry:
    return HistoryEntry(
        record_id=draw(uuids), version=draw(st.none() | st.integers(1, 2**53)),
        event_id=draw(st.text(max_size=40)),
        event_type=draw(st.sampled_from(["provision.requested", "step.provision",
                                         "retry.due", "something.else"])),
        trigger=draw(st.sampled_from(["create", "provisioned", "delete", "odd"])),
        outcome=draw(st.sampled_from(Result)), reason=draw(tricky | st.text(max_size=60)),
        before=draw(snapshots), after=draw(snapshots), at=draw(utc_times),
        task_id=draw(st.none() | st.text(max_size=36)))


@settings(max_examples=300, deadline=None)
@given(entries())
def test_a_history_entry_round_trips_to_the_same_json(entry: HistoryEntry) -> None:
    back = codec.unpack_entry(entry.record_id, codec.pack_entry(entry))
    assert back == entry
    assert back.to_json() == entry.to_json()


def test_no_record_and_a_deleted_one() -> None:
    assert codec.unpack_record("r", "0|") is None
    assert codec.unpack_record("r", "0|x1800000000") is None
    assert codec.deleted_at("0|x1800000000") == 1800000000.0
    assert codec.deleted_at("0|") is None
    assert codec.head_version(None) == 0


def test_marks_round_trip_through_their_inline_form() -> None:
    marks = {"a" + codec.digest("evt-1"): 1800000000, "k" + codec.digest("e|p|2"): 1800000005}
    blob = codec.window_blob(marks)
    assert len(blob) == 2 * codec.MARK_WIDTH
    assert codec.window_marks(blob) == marks
    assert codec.digest("evt-1") != codec.digest("evt-2")


def test_tracking_default_packs_to_nothing() -> None:
    record = ProvisioningState(id="6f1c0000-0000-4000-8000-000000000001", name="n",
                               status=StatusReason.DRAFT, created_on=codec.EPOCH,
                               modified_on=codec.EPOCH, version=1,
                               tracking=Tracking())
    assert codec.pack_record(record).endswith(",[]]")


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _full_tracking_record(step_trace: str | None) -> ProvisioningState:
    return ProvisioningState(
        id="6f1c0000-0000-4000-8000-000000000002", name="n", status=StatusReason.ERROR,
        created_on=codec.EPOCH, modified_on=codec.EPOCH, version=4,
        tracking=Tracking(step="provision", step_version=2, step_event_id="evt-1",
                          failed_call="provision_channel", retry_attempt=1,
                          calling_test_id="t-1", calling_test_version=3,
                          calling_test_started_at=codec.EPOCH, step_trace=step_trace))


def test_the_step_trace_is_the_last_tracking_element_and_round_trips() -> None:
    record = _full_tracking_record(TRACEPARENT)
    head = codec.pack_record(record)
    assert head.endswith(',0,"CvdlGRbNQ92ESOshHIAxnLeta3FpIDMxAQ"]]')  # 25 bytes, base64
    back = codec.unpack_record(record.id, head)
    assert back == record
    assert back is not None and back.tracking.step_trace == TRACEPARENT


def test_a_record_stored_before_the_step_trace_decodes_without_one() -> None:
    # A head written by the codec before step_trace existed: at most 9 tracking elements.
    # (Made by the codec of the commit before this one.)
    head = ('4|["n",3,0,0,0,0,0,"",null,null,{},'
            '[null,"provision",2,"evt-1","provision_channel",1,"t-1",3,0]]')
    record = codec.unpack_record("6f1c0000-0000-4000-8000-000000000002", head)
    assert record == _full_tracking_record(None)
    assert codec.pack_record(_full_tracking_record(None)) == head  # and is written the same


def test_a_v1_stored_record_without_the_step_trace_still_reads() -> None:
    # Store v1 kept Record.to_json(); its "_worker" tracking has no step_trace.
    stored = _full_tracking_record(None).to_json()
    assert "step_trace" in stored["_worker"]
    del stored["_worker"]["step_trace"]
    record = ProvisioningState.from_json(stored)
    assert record.tracking.step_trace is None
    assert codec.unpack_record(record.id, codec.pack_record(record)) == record


@given(st.text(max_size=60) | st.from_regex(r"\A00-[0-9a-fA-F ]{32}-[0-9a-f]{16}-[0-9a-f]{2}\Z"))
def test_any_step_trace_text_round_trips(value: str) -> None:
    record = _full_tracking_record(value)
    assert codec.unpack_record(record.id, codec.pack_record(record)) == record

