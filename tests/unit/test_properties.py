"""The invariants of SPEC §2.4 hold after every step of random event sequences.

A hypothesis ``RuleBasedStateMachine`` plays the worker: it keeps a few records, their
histories and the dedupe keys a store would mark, and delivers events, step results (in
any order, late, more than once), retries and timeouts through ``apply``.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from statemachine import (
    LOOKUPS,
    CallingTestTimedOut,
    Command,
    Event,
    EventType,
    GateKeeperReason,
    GateKeeperStatus,
    HistoryEntry,
    InvariantViolation,
    ProvisioningState,
    Result,
    RetryDue,
    RunStep,
    StatusReason,
    StepResult,
    UnknownRecord,
    apply,
    check_invariants,
    dedupe_key,
    parse_event,
    record_id_of,
    violations,
)

RECORDS = [
    "6f9619ff-8b86-d011-b42d-00cf4fc96400",
    "6f9619ff-8b86-d011-b42d-00cf4fc96401",
]
NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)


def linked_id(record_id: str, what: str) -> str:
    """The id of a record's voice channel, phone number or Teams channel."""
    return record_id[:-4] + {"voice": "a", "phone": "b", "teams": "c"}[what] + record_id[-3:]


PARENTS = {
    "voice": "msdyn_ocvoicechannelsetting",  # Cascade
    "phone": "msdyn_ocphonenumber",  # RemoveLink
    "teams": "msdyn_octeamschannelconfig",  # RemoveLink
}
PARENT_LOOKUP = {
    "voice": "msdyn_voicechannelsettingid",
    "phone": "msdyn_phonenumberid",
    "teams": "msdyn_octeamschannelconfigid",
}

records = st.sampled_from(RECORDS)


class ProvisioningWorld(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.records: dict[str, ProvisioningState] = {}
        self.history: dict[str, list[HistoryEntry]] = {rid: [] for rid in RECORDS}
        self.processed: dict[str, set[str]] = {rid: set() for rid in RECORDS}
        self.steps: list[RunStep] = []
        self.delivered: list[tuple[str, Command]] = []
        self.clock = NOW
        self.next_id = 0

    # -- the driver, as the worker would be -------------------------------------------------

    def event(self, event_type: str, data: Any = None, subject: str | None = None) -> Event:
        self.next_id += 1
        raw: dict[str, Any] = {"specversion": "1.0", "id": f"evt-{self.next_id}",
                               "source": "hypothesis", "type": event_type}
        if subject is not None:
            raw["subject"] = subject
        if data is not None:
            raw["data"] = data
        return parse_event(raw)

    def deliver(self, record_id: str, command: Command) -> None:
        before = self.records.get(record_id)
        duplicate = dedupe_key(command) in self.processed[record_id]
        self.clock += timedelta(seconds=1)
        try:
            outcome = apply(before, command, now=self.clock, duplicate=duplicate)
        except UnknownRecord:
            assert before is None
            assert not (isinstance(command, Event)
                        and command.type is EventType.PROVISION_REQUESTED)
            return
        if duplicate:
            # Re-applying a processed command changes nothing (invariant 8).
            assert outcome.record == before
            assert outcome.effects == ()
            assert [entry.outcome for entry in outcome.entries] == [Result.DUPLICATE]
        else:
            self.processed[record_id].add(dedupe_key(command))
        version = before.version if before else 0
        for entry in outcome.entries:
            assert entry.record_id == record_id
            if entry.outcome is Result.APPLIED:
                assert entry.version == version + 1  # invariant 7
                version += 1
            else:
                assert entry.version is None
        if outcome.record is not None:
            assert outcome.record.version == version
        if not outcome.applied:
            assert outcome.record == before
        self.history[record_id].extend(outcome.entries)
        if outcome.record is None:
            self.records.pop(record_id, None)
        else:
            self.records[record_id] = outcome.record
        self.steps.extend(effect for effect in outcome.effects if isinstance(effect, RunStep))
        self.delivered.append((record_id, command))

    def send(self, command: Command) -> None:
        record_id = record_id_of(command)
        assert record_id is not None
        self.deliver(record_id, command)

    # -- events --------------------------------------------------------------------------

    @initialize(kinds=st.lists(st.sampled_from(["voice", "teams"]), min_size=len(RECORDS),
                               max_size=len(RECORDS)))
    def create_the_records(self, kinds: list[str]) -> None:
        for record_id, kind in zip(RECORDS, kinds, strict=True):
            self.provision(record_id, kind)

    @rule(record_id=records, kind=st.sampled_from(["voice", "voice", "teams"]))
    def provision(self, record_id: str, kind: str) -> None:
        data: dict[str, Any] = {"name": f"{kind} channel",
                                "channel": {"kind": kind, "id": linked_id(record_id, kind)}}
        if kind == "voice":
            data["links"] = {"msdyn_phonenumberid": linked_id(record_id, "phone")}
        self.send(self.event("provision.requested", data, record_id))

    @rule(record_id=records, now=st.integers(min_value=0, max_value=3))
    def deprovision(self, record_id: str, now: int) -> None:
        # Deprovisioning is final, so ask for it a quarter as often as the other events.
        if now == 0:
            self.send(self.event("deprovision.requested", subject=record_id))

    @rule(record_id=records, pair=st.sampled_from([("Active", "Running"), ("Inactive", "Error"),
                                                   ("Inactive", "Deprovisioned")]))
    def gatekeeper_reports(self, record_id: str, pair: tuple[str, str]) -> None:
        self.send(self.event("gatekeeper.reported",
                             {"status": pair[0], "reason": pair[1], "details": "reported"},
                             record_id))

    @rule(record_id=records)
    def calling_test_requested(self, record_id: str) -> None:
        self.send(self.event("calling_test.requested", subject=record_id))

    @rule(record_id=records, result=st.sampled_from(["Success", "Failure"]),
          which=st.sampled_from(["current", "other", "none"]))
    def calling_test_completed(self, record_id: str, result: str, which: str) -> None:
        data: dict[str, Any] = {"result": result}
        record = self.records.get(record_id)
        current = record.tracking.calling_test_id if record else None
        if which == "current" and current is not None:
            data["test_id"] = current
        elif which == "other":
            data["test_id"] = "some-other-test"
        self.send(self.event("calling_test.completed", data, record_id))

    @rule(owner=records, parent=st.sampled_from(sorted(PARENTS)))
    def parent_deleted(self, owner: str, parent: str) -> None:
        parent_id = linked_id(owner, parent)
        deleted = self.event("parent.deleted", {"table": PARENTS[parent], "id": parent_id})
        for record_id, record in list(self.records.items()):
            if record.links[PARENT_LOOKUP[parent]] == parent_id:
                self.deliver(record_id, deleted)

    # -- the worker's own steps and beat's sweeps -------------------------------------------

    @precondition(lambda self: bool(self.steps))
    @rule(data=st.data(), ok=st.booleans())
    def step_result(self, data: st.DataObject, ok: bool) -> None:
        # Any step, not only the latest: results arrive late, out of order and twice.
        step = data.draw(st.sampled_from(self.steps))
        failed_call = None if ok else data.draw(st.sampled_from(step.kind.calls))
        self.deliver(step.record_id, StepResult(
            record_id=step.record_id, event_id=step.event_id, kind=step.kind,
            started_version=step.started_version, ok=ok, failed_call=failed_call,
            details="" if ok else data.draw(st.sampled_from(["", "boom", "x" * 9000])),
            response=data.draw(st.none() | st.sampled_from(["ok", "r" * 2500])),
            test_id=f"test-{step.started_version}" if ok else None,
        ))

    @precondition(lambda self: bool(self.steps))
    @rule(data=st.data())
    def latest_step_succeeds(self, data: st.DataObject) -> None:
        # The common case, so that sequences get past Processing often.
        step = self.steps[-1]
        self.deliver(step.record_id, StepResult(
            record_id=step.record_id, event_id=step.event_id, kind=step.kind,
            started_version=step.started_version, ok=True,
            test_id=data.draw(st.sampled_from([f"test-{step.started_version}", "another"])),
        ))

    @precondition(lambda self: bool(self.records))
    @rule(data=st.data(), late=st.booleans())
    def retry_due(self, data: st.DataObject, late: bool) -> None:
        record = data.draw(st.sampled_from(sorted(self.records.values(), key=lambda r: r.id)))
        self.send(RetryDue(record.id, record.version - int(late)))

    @precondition(lambda self: bool(self.records))
    @rule(data=st.data())
    def calling_test_timed_out(self, data: st.DataObject) -> None:
        record = data.draw(st.sampled_from(sorted(self.records.values(), key=lambda r: r.id)))
        started = record.tracking.calling_test_version or record.version
        self.send(CallingTestTimedOut(record.id, started))

    @precondition(lambda self: bool(self.delivered))
    @rule(data=st.data())
    def redeliver(self, data: st.DataObject) -> None:
        record_id, command = data.draw(st.sampled_from(self.delivered))
        self.deliver(record_id, command)

    # -- SPEC §2.4 after every step ------------------------------------------------------

    @invariant()
    def every_record_satisfies_invariants_1_to_6(self) -> None:
        for record in self.records.values():
            assert violations(record) == [], (record, violations(record))

    @invariant()
    def versions_rise_by_one_per_applied_entry_in_history_order(self) -> None:
        for record_id, entries in self.history.items():
            version = 0
            for entry in entries:
                if entry.outcome is not Result.APPLIED:
                    assert entry.version is None
                    continue
                assert entry.version == version + 1, (record_id, entry)
                # A Cascade delete ends the record; a later provision creates it anew.
                version = 0 if entry.trigger == "delete" else version + 1
            record = self.records.get(record_id)
            assert (record.version if record else 0) == version

    @invariant()
    def history_entries_are_in_time_order(self) -> None:
        for entries in self.history.values():
            moments = [entry.at for entry in entries]
            assert moments == sorted(moments)

    @invariant()
    def each_trigger_of_an_event_is_applied_at_most_once(self) -> None:
        for entries in self.history.values():
            applied = Counter((entry.event_id, entry.trigger) for entry in entries
                              if entry.outcome is Result.APPLIED)
            assert [key for key, count in applied.items() if count > 1] == []


ProvisioningWorld.TestCase.settings = settings(
    max_examples=100, stateful_step_count=40, deadline=None,
)
TestProvisioningWorld = ProvisioningWorld.TestCase


# -- the checker the rules above rely on spots every broken invariant ----------------------

def running_record(**changes: Any) -> ProvisioningState:
    record = ProvisioningState(
        id=RECORDS[0], name="voice", status=StatusReason.RUNNING, created_on=NOW,
        modified_on=NOW, version=3, gatekeeper_status=GateKeeperStatus.ACTIVE,
        gatekeeper_reason=GateKeeperReason.RUNNING,
        links={lookup.column: None for lookup in LOOKUPS},
    )
    return record.evolve(**changes)


def test_a_sound_record_has_no_violations():
    assert violations(running_record()) == []
    check_invariants(running_record())


@pytest.mark.parametrize(("changes", "invariant"), [
    ({"gatekeeper_status": GateKeeperStatus.ACTIVE, "gatekeeper_reason": GateKeeperReason.ERROR},
     "2"),
    ({"gatekeeper_status": None, "gatekeeper_reason": GateKeeperReason.RUNNING}, "2"),
    ({"gatekeeper_status": GateKeeperStatus.INACTIVE,
      "gatekeeper_reason": GateKeeperReason.ERROR}, "3"),
    ({"status": StatusReason.DEPROVISIONED}, "4"),
    ({"status": StatusReason.ERROR, "exception_details": ""}, "5"),
    ({"name": "n" * 101}, "6"),
    ({"exception_details": "x" * 8193}, "6"),
    ({"error_message": "x" * 8193}, "6"),
    ({"provisioning_response": "x" * 2001}, "6"),
])
def test_violations_name_each_broken_invariant(changes, invariant):
    record = running_record(**changes)
    found = violations(record)
    assert [line.split(":")[0] for line in found].count(invariant) == 1, found
    with pytest.raises(InvariantViolation, match=f"{invariant}: "):
        check_invariants(record)
