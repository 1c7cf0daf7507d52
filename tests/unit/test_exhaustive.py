"""Every state and every trigger of the three machines, and every state ``apply`` can reach.

The expected tables are written out here from SPEC §2.1-2.3, independently of
``statemachine.machines``, so a typo in either one shows up as a difference.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from statemachine import (
    MACHINES,
    AutomatedCallingStatus,
    BackendStep,
    CallingTestTimedOut,
    Command,
    Event,
    GateKeeper,
    Outcome,
    ProvisioningState,
    Result,
    RetryDue,
    StatusReason,
    StepKind,
    StepResult,
    Trigger,
    UnknownRecord,
    apply,
    parse_event,
    violations,
)
from tests.factories import event as raw_event

S = StatusReason
G = GateKeeper
C = AutomatedCallingStatus

# SPEC §2.1, one row per (trigger, from) with its destination.
LIFECYCLE_EXPECTED: dict[tuple[str, Any], Any] = {
    ("provision", S.DRAFT): S.PROCESSING,
    ("provision", S.ERROR): S.PROCESSING,
    ("provision", S.RUNNING): S.PROCESSING,
    ("provisioned", S.PROCESSING): S.RUNNING,
    ("fail", S.PROCESSING): S.ERROR,
    ("retry", S.ERROR): S.PROCESSING,
    ("retry", S.DEPROVISIONING): S.DEPROVISIONING,
    ("deprovision", S.DRAFT): S.DEPROVISIONING,
    ("deprovision", S.PROCESSING): S.DEPROVISIONING,
    ("deprovision", S.RUNNING): S.DEPROVISIONING,
    ("deprovision", S.ERROR): S.DEPROVISIONING,
    ("deprovisioned", S.DEPROVISIONING): S.DEPROVISIONED,
    ("fail", S.DEPROVISIONING): S.DEPROVISIONING,
    # SPEC §2.2: a GateKeeper error on a Running record, and its recovery.
    ("report_error", S.RUNNING): S.ERROR,
    ("recover", S.ERROR): S.RUNNING,
}

# SPEC §2.2. Activation may succeed from any state but the final one; a failure (or a
# reported error) takes an open or never-opened gate to (Inactive, Error); recovery
# reopens it; deprovisioning closes any gate that is not closed yet.
GATEKEEPER_EXPECTED: dict[tuple[str, Any], Any] = {
    ("activate", G.UNSET): G.ACTIVE_RUNNING,
    ("activate", G.INACTIVE_ERROR): G.ACTIVE_RUNNING,
    ("activate", G.ACTIVE_RUNNING): G.ACTIVE_RUNNING,
    ("report_error", G.UNSET): G.INACTIVE_ERROR,
    ("report_error", G.ACTIVE_RUNNING): G.INACTIVE_ERROR,
    ("recover", G.INACTIVE_ERROR): G.ACTIVE_RUNNING,
    ("close_gate", G.UNSET): G.INACTIVE_DEPROVISIONED,
    ("close_gate", G.ACTIVE_RUNNING): G.INACTIVE_DEPROVISIONED,
    ("close_gate", G.INACTIVE_ERROR): G.INACTIVE_DEPROVISIONED,
}

# SPEC §2.3. ``test_started`` records the id of the test the service started.
CALLING_EXPECTED: dict[tuple[str, Any], Any] = {
    ("request_test", C.NOT_TESTED): C.IN_PROGRESS,
    ("request_test", C.SUCCESS): C.IN_PROGRESS,
    ("request_test", C.FAILURE): C.IN_PROGRESS,
    ("test_started", C.IN_PROGRESS): C.IN_PROGRESS,
    ("test_passed", C.IN_PROGRESS): C.SUCCESS,
    ("test_failed", C.IN_PROGRESS): C.FAILURE,
}

EXPECTED = {
    "Lifecycle (statuscode)": (S, LIFECYCLE_EXPECTED),
    "GateKeeper": (G, GATEKEEPER_EXPECTED),
    "Automated calling": (C, CALLING_EXPECTED),
}


def test_the_three_machines_are_lifecycle_gatekeeper_and_calling():
    assert [machine.name for machine in MACHINES] == list(EXPECTED)
    for machine in MACHINES:
        assert machine.states is EXPECTED[machine.name][0]


def known_triggers(machine: Any) -> list[Trigger]:
    return sorted({trigger for trigger, _, _ in machine.table})


@pytest.mark.parametrize("machine", MACHINES, ids=lambda machine: machine.name)
def test_each_machine_knows_exactly_the_triggers_of_its_spec_table(machine):
    _, expected = EXPECTED[machine.name]
    assert [trigger.value for trigger in known_triggers(machine)] == sorted(
        {trigger for trigger, _ in expected})


@pytest.mark.parametrize("machine", MACHINES, ids=lambda machine: machine.name)
def test_every_state_and_trigger_fires_exactly_as_the_spec_tables_say(machine):
    states, expected = EXPECTED[machine.name]
    differences = []
    for state, trigger in itertools.product(states, known_triggers(machine)):
        want = expected.get((trigger.value, state))
        got = machine.fire(state, trigger)
        if got != want:
            differences.append(f"{state.name} --{trigger.value}--> {got}, SPEC says {want}")
    assert differences == []


@pytest.mark.parametrize("machine", MACHINES, ids=lambda machine: machine.name)
def test_the_triggers_of_each_state_are_those_of_the_spec_tables(machine):
    states, expected = EXPECTED[machine.name]
    for state in states:
        assert machine.triggers(state) == sorted(
            trigger for trigger, source in expected if source is state), state


def test_fire_says_none_for_a_trigger_the_machine_does_not_know():
    # StateMachine.fire's contract: "or None when it may not fire there".
    answers: dict[str, object] = {}
    for machine in MACHINES:
        state = next(iter(machine.states))
        for trigger in Trigger:
            if trigger in known_triggers(machine):
                continue
            try:
                answers[f"{machine.name}: {trigger.value}"] = machine.fire(state, trigger)
            except AttributeError as exc:
                answers[f"{machine.name}: {trigger.value}"] = f"raises {exc}"
    assert answers == dict.fromkeys(answers)


def test_deprovisioned_is_final_for_the_lifecycle_machine():
    lifecycle = MACHINES[0]
    assert lifecycle.triggers(S.DEPROVISIONED) == []


# -- every state ``apply`` reaches --------------------------------------------------------

RECORD_ID = "6f9619ff-8b86-d011-b42d-00cf4fc964ff"
VOICE_ID = "0b3a9c54-43a7-4f7e-9d6e-2c52f6b1d001"
PHONE_ID = "0b3a9c54-43a7-4f7e-9d6e-2c52f6b1d002"
OTHER_ID = "0b3a9c54-43a7-4f7e-9d6e-2c52f6b1d009"
NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
_ids = itertools.count(1)


def event(event_type: str, data: Any = None, subject: str | None = RECORD_ID) -> Event:
    return parse_event(raw_event(event_type, subject, data, event_id=f"bfs-{next(_ids)}",
                                 source="bfs"))


def provision() -> Event:
    return event("provision.requested", {
        "name": "voice", "channel": {"kind": "voice", "id": VOICE_ID},
        "links": {"msdyn_phonenumberid": PHONE_ID}})


def commands_for(record: ProvisioningState) -> Iterator[Command]:
    """A fixed repertoire: every event type, both step outcomes, stale results, sweeps."""
    yield provision()
    yield event("deprovision.requested")
    for status, reason in (("Active", "Running"), ("Inactive", "Error"),
                           ("Inactive", "Deprovisioned")):
        yield event("gatekeeper.reported", {"status": status, "reason": reason})
    yield event("calling_test.requested")
    for result in ("Success", "Failure"):
        yield event("calling_test.completed", {"result": result})
        yield event("calling_test.completed", {"result": result, "test_id": "other-test"})
    yield event("parent.deleted", {"table": "msdyn_ocphonenumber", "id": PHONE_ID}, None)
    yield event("parent.deleted", {"table": "msdyn_ocvoicechannelsetting", "id": VOICE_ID},
                None)
    tracking = record.tracking
    for kind in StepKind:
        current = tracking.step == kind.value and tracking.step_version is not None
        started = tracking.step_version if current and tracking.step_version else record.version
        for version in {started, max(started - 1, 1)}:
            base = {"record_id": record.id, "event_id": tracking.step_event_id or "bfs",
                    "kind": kind, "started_version": version}
            yield StepResult(**base, ok=True, test_id="test-1", response="ok")
            for call in kind.calls:
                yield StepResult(**base, ok=False, failed_call=call, details=f"{call} failed")
    yield RetryDue(record.id, record.version)
    yield RetryDue(record.id, record.version - 1)
    yield CallingTestTimedOut(record.id, tracking.calling_test_version or record.version)


def abstract(record: ProvisioningState) -> tuple[Any, ...]:
    """What matters for what can happen next (versions and times do not)."""
    tracking = record.tracking
    return (
        record.status, record.gatekeeper, record.calling_status, tracking.step,
        tracking.failed_call, tracking.calling_test_id is None,
        tracking.calling_test_version is None, record.links["msdyn_phonenumberid"] is None,
        record.exception_details == "",
    )


FIRST = apply(None, provision(), now=NOW)


def explore() -> tuple[dict[tuple[Any, ...], ProvisioningState],
                       list[tuple[ProvisioningState, Command, Outcome]]]:
    """Breadth-first over ``apply`` from the record the first provision request created."""
    first = FIRST
    assert first.record is not None
    seen = {abstract(first.record): first.record}
    queue = deque([first.record])
    steps: list[tuple[ProvisioningState, Command, Outcome]] = []
    clock = NOW
    while queue:
        record = queue.popleft()
        for command in commands_for(record):
            clock += timedelta(seconds=1)
            try:
                outcome = apply(record, command, now=clock)
            except UnknownRecord:  # pragma: no cover - the record exists here
                raise
            steps.append((record, command, outcome))
            after = outcome.record
            if after is not None and abstract(after) not in seen:
                seen[abstract(after)] = after
                queue.append(after)
    return seen, steps


SEEN, STEPS = explore()


def test_every_reachable_state_satisfies_the_invariants():
    broken = {key: violations(record) for key, record in SEEN.items() if violations(record)}
    assert broken == {}
    assert len(SEEN) > 20


def test_every_status_gate_and_calling_value_is_reached():
    outcomes = [FIRST, *(outcome for _, _, outcome in STEPS)]
    snapshots = [snapshot for outcome in outcomes for entry in outcome.entries
                 for snapshot in (entry.before, entry.after) if snapshot is not None]
    # Draft lives only inside the first apply (create, then provision): see the entries.
    assert {snapshot.status for snapshot in snapshots} == set(StatusReason)
    assert {record.status for record in SEEN.values()} == set(StatusReason) - {S.DRAFT}
    assert {GateKeeper.from_pair(*record.gatekeeper) for record in SEEN.values()} \
        == set(GateKeeper)
    assert {record.calling_status for record in SEEN.values()} == set(AutomatedCallingStatus)


def test_reachable_status_and_gate_pairs_are_those_the_spec_allows():
    reached = {(record.status, GateKeeper.from_pair(*record.gatekeeper))
               for record in SEEN.values()}
    allowed = {
        # Draft exists only inside the first apply; the first stored state is Processing.
        (S.PROCESSING, G.UNSET), (S.PROCESSING, G.ACTIVE_RUNNING),
        (S.PROCESSING, G.INACTIVE_ERROR),
        (S.RUNNING, G.ACTIVE_RUNNING),
        (S.ERROR, G.UNSET), (S.ERROR, G.ACTIVE_RUNNING), (S.ERROR, G.INACTIVE_ERROR),
        (S.DEPROVISIONING, G.UNSET), (S.DEPROVISIONING, G.ACTIVE_RUNNING),
        (S.DEPROVISIONING, G.INACTIVE_ERROR), (S.DEPROVISIONING, G.INACTIVE_DEPROVISIONED),
        (S.DEPROVISIONED, G.INACTIVE_DEPROVISIONED),
    }
    assert reached - allowed == set()
    # Every allowed pair is reachable too (no dead rows in the tables above).
    assert allowed - reached == set()


def test_a_calling_test_starts_only_on_a_running_record_with_a_phone_number():
    started = 0
    for before, _command, outcome in STEPS:
        if any(entry.trigger == "request_test" and entry.outcome is Result.APPLIED
               for entry in outcome.entries):
            started += 1
            assert before.status is StatusReason.RUNNING
            assert before.links["msdyn_phonenumberid"] is not None
    assert started > 0


def test_every_applied_entry_raises_the_version_by_exactly_one():
    for before, _command, outcome in STEPS:
        version = before.version
        for entry in outcome.entries:
            if entry.outcome is Result.APPLIED:
                assert entry.version == version + 1
                version += 1
            else:
                assert entry.version is None
        if outcome.record is not None:
            assert outcome.record.version == version
            assert outcome.applied or outcome.record == before


def test_an_outcome_that_applies_nothing_leaves_the_record_as_it_was():
    for before, _command, outcome in STEPS:
        if not outcome.applied:
            assert outcome.record == before
            assert outcome.effects == ()


def test_deprovisioned_records_change_only_through_parent_deleted():
    changed = []
    for before, command, outcome in STEPS:
        if before.status is not StatusReason.DEPROVISIONED or not outcome.applied:
            continue
        if isinstance(command, Event) and command.type.value == "parent.deleted":
            continue
        changed.append(f"{type(command).__name__} {outcome.entries[-1].trigger}")
    assert sorted(set(changed)) == []


def test_every_trigger_of_the_tables_is_applied_somewhere():
    applied = {entry.trigger for _, _, outcome in STEPS for entry in outcome.entries
               if entry.outcome is Result.APPLIED}
    expected = {trigger for trigger, _ in LIFECYCLE_EXPECTED} | {"remove_link", "delete",
                                                                  "close_gate",
                                                                  "request_test",
                                                                  "test_started",
                                                                  "test_passed",
                                                                  "test_failed"}
    assert expected <= applied


def test_a_step_failure_at_gate_activation_is_the_only_step_failure_that_closes_the_gate():
    for before, command, outcome in STEPS:
        if not (isinstance(command, StepResult) and not command.ok and outcome.applied):
            continue
        assert outcome.record is not None
        gate_changed = outcome.record.gatekeeper != before.gatekeeper
        if gate_changed:
            assert command.failed_call is BackendStep.ACTIVATE_GATE
