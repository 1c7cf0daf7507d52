"""``apply`` behaves as SPEC §2 says, one behaviour per test."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from statemachine import (
    LOOKUPS,
    AutomatedCallingStatus,
    BackendStep,
    CallingTestTimedOut,
    CancelRetry,
    ChannelKind,
    Command,
    DeleteRecord,
    Event,
    GateKeeperReason,
    GateKeeperStatus,
    Outcome,
    ProvisioningState,
    Result,
    RetryDue,
    RunStep,
    ScheduleRetry,
    StateCode,
    StatusReason,
    StepKind,
    StepResult,
    Tracking,
    UnknownRecord,
    apply,
    parse_event,
    violations,
)
from tests.factories import event as raw_event

NOW = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
RECORD_ID = "6f9619ff-8b86-d011-b42d-00cf4fc964ff"
VOICE_ID = "0b3a9c54-43a7-4f7e-9d6e-2c52f6b1d001"
PHONE_ID = "0b3a9c54-43a7-4f7e-9d6e-2c52f6b1d002"
PROVIDER_ID = "0b3a9c54-43a7-4f7e-9d6e-2c52f6b1d003"
TEAMS_ID = "0b3a9c54-43a7-4f7e-9d6e-2c52f6b1d004"
OTHER_ID = "0b3a9c54-43a7-4f7e-9d6e-2c52f6b1d005"

ACTIVE_RUNNING = (GateKeeperStatus.ACTIVE, GateKeeperReason.RUNNING)
INACTIVE_ERROR = (GateKeeperStatus.INACTIVE, GateKeeperReason.ERROR)
INACTIVE_DEPROVISIONED = (GateKeeperStatus.INACTIVE, GateKeeperReason.DEPROVISIONED)
UNSET = (None, None)

_ids = itertools.count(1)


def event(event_type: str, data: Any = None, *, subject: str | None = RECORD_ID,
          event_id: str | None = None) -> Event:
    """A parsed event; ids count up so a test reads its history in order."""
    return parse_event(raw_event(event_type, subject, data,
                                 event_id=event_id or f"evt-{next(_ids)}"))


def provision_voice(name: str = "Contoso voice") -> Event:
    return event("provision.requested", {
        "name": name, "channel": {"kind": "voice", "id": VOICE_ID},
        "links": {"msdyn_phonenumberid": PHONE_ID,
                  "msdyn_communicationprovidersettingid": PROVIDER_ID},
    })


def provision_teams() -> Event:
    return event("provision.requested",
                 {"name": "Contoso Teams", "channel": {"kind": "teams", "id": TEAMS_ID}})


def gatekeeper(status: str, reason: str, details: str | None = None) -> Event:
    data = {"status": status, "reason": reason}
    if details is not None:
        data["details"] = details
    return event("gatekeeper.reported", data)


def completed(result: str, test_id: str | None = None, details: str | None = None) -> Event:
    data: dict[str, Any] = {"result": result}
    if test_id is not None:
        data["test_id"] = test_id
    if details is not None:
        data["details"] = details
    return event("calling_test.completed", data)


def parent_deleted(table: str, parent_id: str) -> Event:
    return event("parent.deleted", {"table": table, "id": parent_id}, subject=None)


def step_of(outcome: Outcome) -> RunStep:
    steps = [effect for effect in outcome.effects if isinstance(effect, RunStep)]
    assert len(steps) == 1, outcome.effects
    return steps[0]


def result_of(step: RunStep, *, ok: bool = True, **fields: Any) -> StepResult:
    return StepResult(record_id=step.record_id, event_id=step.event_id, kind=step.kind,
                      started_version=step.started_version, ok=ok, **fields)


class Story:
    """A record driven through ``apply`` one command at a time, keeping the last outcome."""

    def __init__(self) -> None:
        self.record: ProvisioningState | None = None
        self.outcome: Outcome | None = None
        self.last_step: RunStep | None = None
        self.clock = NOW

    def send(self, command: Command, *, duplicate: bool = False) -> Outcome:
        self.clock += timedelta(seconds=1)
        outcome = apply(self.record, command, now=self.clock, duplicate=duplicate)
        if outcome.record is not None:
            assert violations(outcome.record) == []
        self.outcome = outcome
        self.record = outcome.record
        steps = [effect for effect in outcome.effects if isinstance(effect, RunStep)]
        if steps:
            self.last_step = steps[-1]
        return outcome

    def finish_step(self, *, ok: bool = True, **fields: Any) -> Outcome:
        assert self.last_step is not None
        return self.send(result_of(self.last_step, ok=ok, **fields))

    @property
    def current(self) -> ProvisioningState:
        assert self.record is not None
        return self.record


def processing_voice() -> Story:
    story = Story()
    story.send(provision_voice())
    return story


def running_voice() -> Story:
    story = processing_voice()
    story.finish_step(ok=True, response='{"provisioned": true}')
    assert story.current.status is StatusReason.RUNNING
    return story


def failed_voice(failed_call: BackendStep = BackendStep.PROVISION_CHANNEL) -> Story:
    story = processing_voice()
    story.finish_step(ok=False, failed_call=failed_call, details="503 from the provisioner",
                      summary="provisioner unavailable")
    assert story.current.status is StatusReason.ERROR
    return story


def deprovisioning_voice() -> Story:
    story = running_voice()
    story.send(event("deprovision.requested"))
    assert story.current.status is StatusReason.DEPROVISIONING
    return story


def deprovisioned_voice() -> Story:
    story = deprovisioning_voice()
    story.finish_step()
    assert story.current.status is StatusReason.DEPROVISIONED
    return story


def draft_record() -> ProvisioningState:
    links: dict[str, str | None] = {lookup.column: None for lookup in LOOKUPS}
    links["msdyn_octeamschannelconfigid"] = TEAMS_ID
    return ProvisioningState(
        id=RECORD_ID, name="Draft Teams", status=StatusReason.DRAFT, created_on=NOW,
        modified_on=NOW, version=1, links=links,
        tracking=Tracking(channel_kind=ChannelKind.TEAMS),
    )


def assert_changed_nothing(outcome: Outcome, before: ProvisioningState | None,
                           result: Result) -> None:
    assert outcome.record == before
    assert not outcome.applied
    assert outcome.effects == ()
    assert len(outcome.entries) == 1
    entry = outcome.entries[0]
    assert entry.outcome is result
    assert entry.version is None
    assert entry.reason


# -- create and provision ------------------------------------------------------------------

def test_first_provision_request_creates_version_1_and_provisions_as_version_2():
    provision = provision_voice()
    outcome = apply(None, provision, now=NOW)
    record = outcome.record
    assert record is not None
    assert [(e.trigger, e.outcome, e.version) for e in outcome.entries] == [
        ("create", Result.APPLIED, 1), ("provision", Result.APPLIED, 2),
    ]
    create, start = outcome.entries
    assert create.before is None
    assert create.after is not None and create.after.status is StatusReason.DRAFT
    assert start.before is not None and start.before.status is StatusReason.DRAFT
    assert start.after is not None and start.after.status is StatusReason.PROCESSING
    assert all(entry.event_id == provision.id for entry in outcome.entries)
    assert all(entry.event_type == "provision.requested" for entry in outcome.entries)
    assert record.id == RECORD_ID
    assert record.version == 2
    assert record.status is StatusReason.PROCESSING
    assert record.statecode is StateCode.ACTIVE
    assert record.gatekeeper == UNSET
    assert record.calling_status is AutomatedCallingStatus.NOT_TESTED
    assert record.name == "Contoso voice"
    assert record.created_on == record.modified_on == NOW
    assert record.links["msdyn_voicechannelsettingid"] == VOICE_ID
    assert record.links["msdyn_phonenumberid"] == PHONE_ID
    assert record.links["msdyn_communicationprovidersettingid"] == PROVIDER_ID
    assert record.links["msdyn_ocfbpageid"] is None
    assert record.tracking.channel_kind is ChannelKind.VOICE
    assert outcome.result is Result.APPLIED


def test_provisioning_runs_the_provisioner_then_gate_activation():
    outcome = apply(None, provision_voice(), now=NOW)
    step = step_of(outcome)
    assert step.kind is StepKind.PROVISION
    assert step.record_id == RECORD_ID
    assert step.started_version == 2
    assert [call.step for call in step.calls] == [BackendStep.PROVISION_CHANNEL,
                                                 BackendStep.ACTIVATE_GATE]
    call = step.calls[0]
    assert call.kind is ChannelKind.VOICE
    assert call.channel_id == VOICE_ID
    assert call.name == "Contoso voice"
    assert call.phone_number_id == PHONE_ID
    assert call.links == {"msdyn_phonenumberid": PHONE_ID,
                          "msdyn_communicationprovidersettingid": PROVIDER_ID}


def test_idempotency_key_is_record_id_version_at_step_start_and_step():
    outcome = apply(None, provision_voice(), now=NOW)
    assert [call.idempotency_key for call in step_of(outcome).calls] == [
        f"{RECORD_ID}:2:provision_channel", f"{RECORD_ID}:2:activate_gate",
    ]


def test_provision_while_processing_is_ignored():
    story = processing_voice()
    before = story.current
    outcome = story.send(provision_voice())
    assert_changed_nothing(outcome, before, Result.IGNORED)


def test_provision_request_for_a_running_record_reprovisions_it():
    story = running_voice()
    before = story.current
    outcome = story.send(provision_voice(name="Renamed voice"))
    record = story.current
    assert [(e.trigger, e.version) for e in outcome.entries] == [("provision", before.version + 1)]
    assert record.status is StatusReason.PROCESSING
    assert record.name == "Renamed voice"
    assert record.gatekeeper == ACTIVE_RUNNING  # the gate stays open while re-provisioning
    step = step_of(outcome)
    assert step.started_version == before.version + 1
    assert step.calls[0].idempotency_key == f"{RECORD_ID}:{before.version + 1}:provision_channel"


def test_provision_of_another_channel_kind_is_rejected():
    story = running_voice()
    before = story.current
    outcome = story.send(provision_teams())
    assert_changed_nothing(outcome, before, Result.REJECTED)
    assert "kind" in outcome.reason


def test_provision_from_error_cancels_the_retry_and_starts_over():
    story = failed_voice()
    before = story.current
    outcome = story.send(provision_voice())
    assert story.current.status is StatusReason.PROCESSING
    assert story.current.tracking.retry_attempt == 0
    assert outcome.effects[0] == CancelRetry(RECORD_ID)
    assert step_of(outcome).started_version == before.version + 1


def test_provision_is_rejected_while_deprovisioning():
    story = deprovisioning_voice()
    before = story.current
    assert_changed_nothing(story.send(provision_voice()), before, Result.REJECTED)


# -- results of the provisioning step ------------------------------------------------------

def test_provisioning_success_makes_the_record_running_with_the_gate_active():
    story = processing_voice()
    provision_event_id = story.current.tracking.step_event_id
    outcome = story.finish_step(ok=True, response='{"channel": "ok"}')
    record = story.current
    assert record.status is StatusReason.RUNNING
    assert record.gatekeeper == ACTIVE_RUNNING
    assert record.version == 3
    assert record.provisioning_response == '{"channel": "ok"}'
    assert record.exception_details == ""
    assert outcome.effects == (CancelRetry(RECORD_ID),)
    (entry,) = outcome.entries
    assert (entry.trigger, entry.outcome, entry.version) == ("provisioned", Result.APPLIED, 3)
    assert entry.event_id == provision_event_id  # invariant 8: the id of the starting event
    assert entry.event_type == "step.provision"


def test_provisioner_failure_moves_the_record_to_error_and_schedules_a_retry():
    story = processing_voice()
    outcome = story.finish_step(ok=False, failed_call=BackendStep.PROVISION_CHANNEL,
                                details="Traceback...\n503", summary="provisioner 503\nmore")
    record = story.current
    assert record.status is StatusReason.ERROR
    assert record.gatekeeper == UNSET  # the gate was never touched
    assert record.exception_details == "Traceback...\n503"
    assert record.error_message == "provisioner 503"
    assert record.tracking.retry_attempt == 1
    assert outcome.effects == (ScheduleRetry(RECORD_ID, 1),)
    assert [(e.trigger, e.version) for e in outcome.entries] == [("fail", 3)]


def test_gate_activation_failure_sets_the_gatekeeper_inactive_error():
    story = processing_voice()
    story.finish_step(ok=False, failed_call=BackendStep.ACTIVATE_GATE, details="gate said no")
    record = story.current
    assert record.status is StatusReason.ERROR
    assert record.gatekeeper == INACTIVE_ERROR
    assert record.exception_details == "gate said no"


def test_a_failure_without_details_still_records_exception_details():
    story = processing_voice()
    story.finish_step(ok=False, failed_call=BackendStep.PROVISION_CHANNEL)
    assert story.current.exception_details
    assert story.current.error_message


def test_long_failure_text_is_truncated_to_the_column_with_a_marker():
    story = processing_voice()
    story.finish_step(ok=False, failed_call=BackendStep.PROVISION_CHANNEL,
                      details="x" * 20_000, response="r" * 5_000)
    record = story.current
    assert len(record.exception_details) == 8192
    assert record.exception_details.endswith("chars]")
    assert record.provisioning_response is not None
    assert len(record.provisioning_response) == 2000
    assert "[truncated" in record.provisioning_response


def test_provisioning_success_after_a_deprovision_request_is_stale():
    story = processing_voice()
    provisioning = story.last_step
    assert provisioning is not None
    story.send(event("deprovision.requested"))
    before = story.current
    outcome = story.send(result_of(provisioning, ok=True))
    assert_changed_nothing(outcome, before, Result.STALE)
    assert before.status is StatusReason.DEPROVISIONING


def test_a_result_of_an_earlier_step_is_stale():
    story = failed_voice()
    first_step = story.last_step
    assert first_step is not None
    story.send(RetryDue(RECORD_ID, story.current.version))
    before = story.current
    outcome = story.send(result_of(first_step, ok=True))
    assert_changed_nothing(outcome, before, Result.STALE)


def test_a_result_for_a_running_record_is_stale():
    story = running_voice()
    step = story.last_step
    assert step is not None
    before = story.current
    assert_changed_nothing(story.send(result_of(step, ok=False)), before, Result.STALE)


# -- retries -------------------------------------------------------------------------------

def test_retry_from_error_restarts_provisioning_under_a_new_idempotency_key():
    story = failed_voice()
    before = story.current
    outcome = story.send(RetryDue(RECORD_ID, before.version))
    assert story.current.status is StatusReason.PROCESSING
    assert [(e.trigger, e.version) for e in outcome.entries] == [("retry", before.version + 1)]
    step = step_of(outcome)
    assert step.kind is StepKind.PROVISION
    assert step.started_version == before.version + 1
    assert step.calls[0].idempotency_key == (
        f"{RECORD_ID}:{before.version + 1}:provision_channel")
    assert step.event_id == outcome.entries[0].event_id


def test_retry_attempts_count_up_until_a_success_resets_them():
    story = failed_voice()
    story.send(RetryDue(RECORD_ID, story.current.version))
    outcome = story.finish_step(ok=False, failed_call=BackendStep.PROVISION_CHANNEL)
    assert outcome.effects == (ScheduleRetry(RECORD_ID, 2),)
    story.send(RetryDue(RECORD_ID, story.current.version))
    story.finish_step(ok=True)
    assert story.current.status is StatusReason.RUNNING
    assert story.current.tracking.retry_attempt == 0


def test_a_retry_scheduled_before_a_later_change_is_stale():
    story = failed_voice()
    scheduled_at = story.current.version
    story.send(provision_voice())
    before = story.current
    assert_changed_nothing(story.send(RetryDue(RECORD_ID, scheduled_at)), before, Result.STALE)


def test_retry_of_a_running_record_changes_nothing():
    story = running_voice()
    before = story.current
    assert_changed_nothing(story.send(RetryDue(RECORD_ID, before.version)), before,
                           Result.STALE)


def test_retry_due_applies_while_a_calling_test_start_is_in_flight():
    # SPEC §2.1: retry Error -> Processing when the record's retry is due. A GateKeeper
    # error that arrives while a calling test is being started must not block the retry.
    story = running_voice()
    story.send(event("calling_test.requested"))
    outcome = story.send(gatekeeper("Inactive", "Error", "gate down"))
    assert outcome.effects == (ScheduleRetry(RECORD_ID, 1),)
    retry = story.send(RetryDue(RECORD_ID, story.current.version))
    assert retry.applied, retry.reason
    assert story.current.status is StatusReason.PROCESSING


# -- deprovisioning ------------------------------------------------------------------------

def test_deprovision_deactivates_the_gate_then_deletes_the_channel():
    story = running_voice()
    before = story.current
    outcome = story.send(event("deprovision.requested"))
    assert story.current.status is StatusReason.DEPROVISIONING
    assert [(e.trigger, e.version) for e in outcome.entries] == [
        ("deprovision", before.version + 1)]
    assert outcome.effects[0] == CancelRetry(RECORD_ID)
    step = step_of(outcome)
    assert step.kind is StepKind.DEPROVISION
    assert [call.step for call in step.calls] == [BackendStep.DEACTIVATE_GATE,
                                                 BackendStep.DEPROVISION_CHANNEL]
    assert [call.idempotency_key for call in step.calls] == [
        f"{RECORD_ID}:{before.version + 1}:deactivate_gate",
        f"{RECORD_ID}:{before.version + 1}:deprovision_channel",
    ]


@pytest.mark.parametrize("start", ["processing", "running", "error"])
def test_deprovision_is_accepted_from_processing_running_and_error(start):
    story = {"processing": processing_voice, "running": running_voice,
             "error": failed_voice}[start]()
    outcome = story.send(event("deprovision.requested"))
    assert outcome.applied
    assert story.current.status is StatusReason.DEPROVISIONING
    assert step_of(outcome).kind is StepKind.DEPROVISION


def test_deprovisioning_a_draft_runs_the_same_steps():
    draft = draft_record()
    outcome = apply(draft, event("deprovision.requested"), now=NOW)
    assert outcome.record is not None
    assert outcome.record.status is StatusReason.DEPROVISIONING
    assert outcome.record.version == 2
    assert [call.step for call in step_of(outcome).calls] == [BackendStep.DEACTIVATE_GATE,
                                                             BackendStep.DEPROVISION_CHANNEL]


def test_deprovision_while_deprovisioning_changes_nothing():
    story = deprovisioning_voice()
    before = story.current
    assert_changed_nothing(story.send(event("deprovision.requested")), before, Result.IGNORED)


def test_deprovisioning_success_makes_the_record_deprovisioned_and_inactive():
    story = deprovisioning_voice()
    outcome = story.finish_step()
    record = story.current
    assert record.status is StatusReason.DEPROVISIONED
    assert record.statecode is StateCode.INACTIVE
    assert record.gatekeeper == INACTIVE_DEPROVISIONED
    assert [e.trigger for e in outcome.entries] == ["deprovisioned"]
    assert outcome.effects == (CancelRetry(RECORD_ID),)


def test_deprovisioning_failure_stays_deprovisioning_and_schedules_a_retry():
    story = deprovisioning_voice()
    outcome = story.finish_step(ok=False, failed_call=BackendStep.DEPROVISION_CHANNEL,
                                details="404? 500!")
    record = story.current
    assert record.status is StatusReason.DEPROVISIONING
    assert record.exception_details == "404? 500!"
    assert outcome.effects == (ScheduleRetry(RECORD_ID, 1),)
    assert [e.trigger for e in outcome.entries] == ["fail"]


def test_retry_from_deprovisioning_reruns_the_deprovisioning_steps():
    story = deprovisioning_voice()
    story.finish_step(ok=False, failed_call=BackendStep.DEACTIVATE_GATE)
    before = story.current
    outcome = story.send(RetryDue(RECORD_ID, before.version))
    assert story.current.status is StatusReason.DEPROVISIONING
    assert [(e.trigger, e.version) for e in outcome.entries] == [("retry", before.version + 1)]
    step = step_of(outcome)
    assert step.kind is StepKind.DEPROVISION
    assert step.started_version == before.version + 1
    story.finish_step()
    assert story.current.status is StatusReason.DEPROVISIONED


def test_deprovisioning_skips_the_channel_delete_once_the_channel_link_is_removed():
    story = Story()
    story.send(provision_teams())
    story.finish_step()
    story.send(parent_deleted("msdyn_octeamschannelconfig", TEAMS_ID))
    outcome = story.send(event("deprovision.requested"))
    assert [call.step for call in step_of(outcome).calls] == [BackendStep.DEACTIVATE_GATE]


@pytest.mark.parametrize("command", [
    "provision", "deprovision", "gatekeeper_running", "gatekeeper_error",
    "gatekeeper_deprovisioned", "calling_requested", "calling_success", "calling_failure",
])
def test_deprovisioned_record_rejects_every_event(command):
    story = deprovisioned_voice()
    before = story.current
    sent = {
        "provision": provision_voice,
        "deprovision": lambda: event("deprovision.requested"),
        "gatekeeper_running": lambda: gatekeeper("Active", "Running"),
        "gatekeeper_error": lambda: gatekeeper("Inactive", "Error"),
        "gatekeeper_deprovisioned": lambda: gatekeeper("Inactive", "Deprovisioned"),
        "calling_requested": lambda: event("calling_test.requested"),
        "calling_success": lambda: completed("Success"),
        "calling_failure": lambda: completed("Failure"),
    }[command]()
    outcome = story.send(sent)
    assert_changed_nothing(outcome, before, Result.REJECTED)
    assert "Deprovisioned" in outcome.reason


def test_deprovisioned_record_is_not_changed_by_a_late_step_result_or_retry():
    story = deprovisioned_voice()
    step = story.last_step
    assert step is not None
    before = story.current
    for command in (result_of(step, ok=False), RetryDue(RECORD_ID, before.version)):
        outcome = story.send(command)
        assert outcome.record == before
        assert not outcome.applied


def test_calling_test_timeout_does_not_change_a_deprovisioned_record():
    # SPEC §2.1: Deprovisioned is final for the machines (only parent.deleted applies).
    story = running_voice()
    story.send(event("calling_test.requested"))
    started_at = story.current.tracking.calling_test_version
    assert started_at is not None
    story.send(event("deprovision.requested"))
    story.finish_step()
    before = story.current
    assert before.status is StatusReason.DEPROVISIONED
    outcome = story.send(CallingTestTimedOut(RECORD_ID, started_at))
    assert outcome.record == before
    assert not outcome.applied


# -- GateKeeper ----------------------------------------------------------------------------

def test_gatekeeper_error_on_a_running_record_moves_it_to_error_and_schedules_a_retry():
    story = running_voice()
    before = story.current
    outcome = story.send(gatekeeper("Inactive", "Error", "certificate expired"))
    record = story.current
    assert record.status is StatusReason.ERROR
    assert record.gatekeeper == INACTIVE_ERROR
    assert "certificate expired" in record.exception_details
    assert outcome.effects == (ScheduleRetry(RECORD_ID, 1),)
    (entry,) = outcome.entries
    assert entry.version == before.version + 1
    assert entry.event_type == "gatekeeper.reported"


def test_gatekeeper_recovery_returns_an_error_it_caused_to_running():
    story = running_voice()
    story.send(gatekeeper("Inactive", "Error", "certificate expired"))
    outcome = story.send(gatekeeper("Active", "Running"))
    record = story.current
    assert record.status is StatusReason.RUNNING
    assert record.gatekeeper == ACTIVE_RUNNING
    assert outcome.effects == (CancelRetry(RECORD_ID),)


def test_gatekeeper_recovery_after_a_failed_activation_returns_the_record_to_running():
    story = failed_voice(BackendStep.ACTIVATE_GATE)
    story.send(gatekeeper("Active", "Running"))
    assert story.current.status is StatusReason.RUNNING


def test_gatekeeper_recovery_is_rejected_when_the_provisioner_failed():
    story = failed_voice(BackendStep.PROVISION_CHANNEL)
    before = story.current
    assert_changed_nothing(story.send(gatekeeper("Active", "Running")), before,
                           Result.REJECTED)


def test_gatekeeper_recovery_does_not_revive_a_record_whose_last_failure_was_the_provisioner():
    # The gate failed first, then the retry failed at the provisioner: the record's failure
    # is no longer the GateKeeper's (SPEC §2.2), so a gate report must not make it Running.
    story = running_voice()
    story.send(gatekeeper("Inactive", "Error", "gate down"))
    story.send(RetryDue(RECORD_ID, story.current.version))
    story.finish_step(ok=False, failed_call=BackendStep.PROVISION_CHANNEL,
                      details="provisioner 500")
    before = story.current
    assert before.status is StatusReason.ERROR
    outcome = story.send(gatekeeper("Active", "Running"))
    assert not outcome.applied
    assert outcome.record == before


def test_a_second_gatekeeper_error_report_changes_nothing():
    story = running_voice()
    story.send(gatekeeper("Inactive", "Error"))
    before = story.current
    outcome = story.send(gatekeeper("Inactive", "Error"))
    assert outcome.record == before
    assert not outcome.applied


def test_gatekeeper_running_report_on_a_running_record_changes_nothing():
    story = running_voice()
    before = story.current
    assert_changed_nothing(story.send(gatekeeper("Active", "Running")), before, Result.IGNORED)


def test_gatekeeper_deprovisioned_report_closes_the_gate_of_a_deprovisioning_record():
    story = deprovisioning_voice()
    outcome = story.send(gatekeeper("Inactive", "Deprovisioned"))
    assert outcome.applied
    assert story.current.gatekeeper == INACTIVE_DEPROVISIONED
    assert story.current.status is StatusReason.DEPROVISIONING
    story.finish_step()
    assert story.current.gatekeeper == INACTIVE_DEPROVISIONED


def test_gatekeeper_deprovisioned_report_on_a_running_record_is_rejected():
    story = running_voice()
    before = story.current
    assert_changed_nothing(story.send(gatekeeper("Inactive", "Deprovisioned")), before,
                           Result.REJECTED)


def test_gatekeeper_error_then_retry_provisions_again():
    story = running_voice()
    story.send(gatekeeper("Inactive", "Error"))
    story.send(RetryDue(RECORD_ID, story.current.version))
    assert story.current.status is StatusReason.PROCESSING
    story.finish_step()
    assert story.current.status is StatusReason.RUNNING
    assert story.current.gatekeeper == ACTIVE_RUNNING


# -- automated calling ---------------------------------------------------------------------

def test_calling_test_request_on_a_running_record_with_a_phone_number_starts_a_test():
    story = running_voice()
    before = story.current
    outcome = story.send(event("calling_test.requested"))
    record = story.current
    assert record.calling_status is AutomatedCallingStatus.IN_PROGRESS
    assert record.version == before.version + 1
    step = step_of(outcome)
    assert step.kind is StepKind.CALLING_TEST
    (call,) = step.calls
    assert call.step is BackendStep.START_CALLING_TEST
    assert call.phone_number_id == PHONE_ID
    assert call.idempotency_key == f"{RECORD_ID}:{before.version + 1}:start_calling_test"


@pytest.mark.parametrize("start", ["processing", "error", "deprovisioning"])
def test_calling_test_request_is_rejected_unless_the_record_is_running(start):
    story = {"processing": processing_voice, "error": failed_voice,
             "deprovisioning": deprovisioning_voice}[start]()
    before = story.current
    assert_changed_nothing(story.send(event("calling_test.requested")), before,
                           Result.REJECTED)


def test_calling_test_request_is_rejected_without_a_phone_number():
    story = Story()
    story.send(provision_teams())
    story.finish_step()
    before = story.current
    outcome = story.send(event("calling_test.requested"))
    assert_changed_nothing(outcome, before, Result.REJECTED)
    assert "msdyn_phonenumberid" in outcome.reason


def test_calling_test_request_is_rejected_once_the_phone_number_link_is_removed():
    story = running_voice()
    story.send(parent_deleted("msdyn_ocphonenumber", PHONE_ID))
    before = story.current
    assert_changed_nothing(story.send(event("calling_test.requested")), before,
                           Result.REJECTED)


def test_calling_test_request_while_one_is_in_progress_changes_nothing():
    story = running_voice()
    story.send(event("calling_test.requested"))
    before = story.current
    outcome = story.send(event("calling_test.requested"))
    assert outcome.record == before
    assert not outcome.applied


def test_calling_test_started_then_completed_with_success():
    story = running_voice()
    story.send(event("calling_test.requested"))
    started = story.finish_step(ok=True, test_id="call-1")
    assert [e.trigger for e in started.entries] == ["test_started"]
    assert story.current.tracking.calling_test_id == "call-1"
    assert story.current.calling_status is AutomatedCallingStatus.IN_PROGRESS
    outcome = story.send(completed("Success", test_id="call-1"))
    assert [e.trigger for e in outcome.entries] == ["test_passed"]
    assert story.current.calling_status is AutomatedCallingStatus.SUCCESS


def test_calling_test_failure_records_its_details():
    story = running_voice()
    story.send(event("calling_test.requested"))
    story.finish_step(ok=True, test_id="call-1")
    story.send(completed("Failure", test_id="call-1", details="no dial tone"))
    record = story.current
    assert record.calling_status is AutomatedCallingStatus.FAILURE
    assert "no dial tone" in record.exception_details
    assert record.status is StatusReason.RUNNING


def test_calling_test_completed_for_another_test_id_is_stale():
    story = running_voice()
    story.send(event("calling_test.requested"))
    story.finish_step(ok=True, test_id="call-2")
    before = story.current
    assert_changed_nothing(story.send(completed("Success", test_id="call-1")), before,
                           Result.STALE)


def test_calling_test_completed_without_a_test_in_progress_is_rejected():
    story = running_voice()
    before = story.current
    assert_changed_nothing(story.send(completed("Success")), before, Result.REJECTED)


def test_calling_test_may_be_repeated_after_success_and_after_failure():
    story = running_voice()
    for result in ("Success", "Failure", "Success"):
        story.send(event("calling_test.requested"))
        assert story.current.calling_status is AutomatedCallingStatus.IN_PROGRESS
        story.send(completed(result))
        assert story.current.calling_status.label == result


def test_a_calling_test_that_could_not_start_fails():
    story = running_voice()
    story.send(event("calling_test.requested"))
    outcome = story.finish_step(ok=False, failed_call=BackendStep.START_CALLING_TEST,
                                details="no trunk")
    assert [e.trigger for e in outcome.entries] == ["test_failed"]
    assert story.current.calling_status is AutomatedCallingStatus.FAILURE
    assert "no trunk" in story.current.exception_details


def test_calling_test_in_progress_too_long_fails_with_timed_out():
    story = running_voice()
    story.send(event("calling_test.requested"))
    started_at = story.current.tracking.calling_test_version
    assert started_at is not None
    outcome = story.send(CallingTestTimedOut(RECORD_ID, started_at))
    assert [e.trigger for e in outcome.entries] == ["test_failed"]
    assert story.current.calling_status is AutomatedCallingStatus.FAILURE
    assert "timed out" in story.current.exception_details


def test_timeout_of_an_earlier_calling_test_is_stale():
    story = running_voice()
    story.send(event("calling_test.requested"))
    first = story.current.tracking.calling_test_version
    assert first is not None
    story.send(completed("Success"))
    story.send(event("calling_test.requested"))
    before = story.current
    assert_changed_nothing(story.send(CallingTestTimedOut(RECORD_ID, first)), before,
                           Result.STALE)


def test_calling_test_start_result_after_completion_is_stale():
    story = running_voice()
    story.send(event("calling_test.requested"))
    story.send(completed("Success"))
    before = story.current
    assert_changed_nothing(story.finish_step(ok=True, test_id="late"), before, Result.STALE)


# -- parent deleted ------------------------------------------------------------------------

@pytest.mark.parametrize(("table", "parent_id"), [
    ("msdyn_ocvoicechannelsetting", VOICE_ID),
])
def test_parent_delete_with_cascade_deletes_the_record(table, parent_id):
    story = running_voice()
    before = story.current
    outcome = story.send(parent_deleted(table, parent_id))
    assert outcome.deleted
    assert outcome.record is None
    assert DeleteRecord(RECORD_ID) in outcome.effects
    (entry,) = outcome.entries
    assert (entry.trigger, entry.outcome, entry.version) == (
        "delete", Result.APPLIED, before.version + 1)
    assert entry.after is None
    assert entry.record_id == RECORD_ID


def test_whatsapp_account_delete_cascades_to_the_record():
    whatsapp_id = OTHER_ID
    provision = event("provision.requested",
                      {"name": "WA", "channel": {"kind": "whatsapp", "id": whatsapp_id}})
    record = apply(None, provision, now=NOW).record
    outcome = apply(record, parent_deleted("msdyn_ocwhatsappchannelaccount", whatsapp_id),
                    now=NOW)
    assert outcome.deleted
    assert outcome.effects[-1] == DeleteRecord(RECORD_ID)


def test_parent_delete_with_remove_link_clears_only_that_lookup():
    story = running_voice()
    before = story.current
    outcome = story.send(parent_deleted("msdyn_occommunicationprovidersetting", PROVIDER_ID))
    record = story.current
    assert [(e.trigger, e.version) for e in outcome.entries] == [
        ("remove_link", before.version + 1)]
    assert record.links["msdyn_communicationprovidersettingid"] is None
    assert record.links["msdyn_phonenumberid"] == PHONE_ID
    assert record.links["msdyn_voicechannelsettingid"] == VOICE_ID
    assert record.status is StatusReason.RUNNING
    assert not outcome.deleted


@pytest.mark.parametrize("lookup", LOOKUPS, ids=lambda lookup: lookup.parent_table)
def test_each_parent_table_applies_its_delete_rule(lookup):
    cascades = lookup.parent_table in ("msdyn_ocwhatsappchannelaccount",
                                       "msdyn_ocvoicechannelsetting")  # SPEC §1.2
    links = draft_record().links
    links[lookup.column] = OTHER_ID
    record = draft_record().evolve(links=links)
    outcome = apply(record, parent_deleted(lookup.parent_table, OTHER_ID), now=NOW)
    assert outcome.deleted is cascades
    if cascades:
        assert outcome.record is None
    else:
        assert outcome.record is not None
        assert outcome.record.links[lookup.column] is None
        assert outcome.record.version == 2


@pytest.mark.parametrize(("table", "parent_id", "deleted"), [
    ("msdyn_ocvoicechannelsetting", VOICE_ID, True),
    ("msdyn_ocphonenumber", PHONE_ID, False),
])
def test_parent_delete_applies_even_to_a_deprovisioned_record(table, parent_id, deleted):
    story = deprovisioned_voice()
    before = story.current
    outcome = story.send(parent_deleted(table, parent_id))
    assert outcome.applied
    assert outcome.deleted is deleted
    assert outcome.entries[0].version == before.version + 1
    if not deleted:
        assert story.current.links["msdyn_phonenumberid"] is None
        assert story.current.status is StatusReason.DEPROVISIONED


def test_parent_delete_of_a_parent_the_record_does_not_link_changes_nothing():
    story = running_voice()
    before = story.current
    outcome = story.send(parent_deleted("msdyn_ocphonenumber", OTHER_ID))
    assert outcome.record == before
    assert not outcome.applied
    assert not outcome.deleted


# -- duplicates and unknown records --------------------------------------------------------

def test_a_duplicate_delivery_records_a_duplicate_entry_and_changes_nothing():
    story = running_voice()
    before = story.current
    for command in (provision_voice(), event("deprovision.requested"),
                    gatekeeper("Inactive", "Error"), event("calling_test.requested"),
                    parent_deleted("msdyn_ocvoicechannelsetting", VOICE_ID),
                    RetryDue(RECORD_ID, before.version)):
        outcome = story.send(command, duplicate=True)
        assert_changed_nothing(outcome, before, Result.DUPLICATE)


def test_a_duplicate_first_provision_request_creates_nothing():
    provision = provision_voice()
    outcome = apply(None, provision, now=NOW, duplicate=True)
    assert outcome.record is None
    assert [(e.outcome, e.version, e.record_id) for e in outcome.entries] == [
        (Result.DUPLICATE, None, RECORD_ID)]


@pytest.mark.parametrize("command", [
    "deprovision", "gatekeeper", "calling_requested", "calling_completed", "step", "retry",
    "timeout",
])
def test_a_command_for_an_unknown_record_raises_unknown_record(command):
    sent: Command = {
        "deprovision": lambda: event("deprovision.requested"),
        "gatekeeper": lambda: gatekeeper("Active", "Running"),
        "calling_requested": lambda: event("calling_test.requested"),
        "calling_completed": lambda: completed("Success"),
        "step": lambda: StepResult(RECORD_ID, "evt", StepKind.PROVISION, 2, True),
        "retry": lambda: RetryDue(RECORD_ID, 3),
        "timeout": lambda: CallingTestTimedOut(RECORD_ID, 3),
    }[command]()
    with pytest.raises(UnknownRecord) as caught:
        apply(None, sent, now=NOW)
    assert caught.value.record_id == RECORD_ID


def test_history_entries_carry_the_snapshots_before_and_after():
    story = running_voice()
    outcome = story.send(gatekeeper("Inactive", "Error"))
    (entry,) = outcome.entries
    assert entry.before is not None and entry.after is not None
    assert (entry.before.status, entry.before.gatekeeper_status) == (
        StatusReason.RUNNING, GateKeeperStatus.ACTIVE)
    assert (entry.after.status, entry.after.gatekeeper_status) == (
        StatusReason.ERROR, GateKeeperStatus.INACTIVE)
    assert entry.at == story.clock
    assert story.current.modified_on == story.clock
