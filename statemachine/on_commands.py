"""How the worker's own commands change a record: the result of a step it ran, a retry
that fell due, a calling test that timed out (beat's sweeps). A result for a step the
record has left is stale and changes nothing.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from statemachine.commands import CallingTestTimedOut, RetryDue, StepResult
from statemachine.effects import BackendStep, CancelRetry, ScheduleRetry, StepKind
from statemachine.history import Result
from statemachine.machines import Trigger
from statemachine.outcome import Change, Outcome, trigger_of
from statemachine.steps import (
    finish_test,
    fire_gate,
    fire_lifecycle,
    kept_trace,
    run_step,
    start_step,
)
from statemachine.table import (
    ERROR_MESSAGE_MAX,
    EXCEPTION_DETAILS_MAX,
    PROVISIONING_RESPONSE_MAX,
    AutomatedCallingStatus,
    StatusReason,
)
from statemachine.text import truncate

__all__ = ["calling_timeout", "retry", "step_result"]


_STEP_STATUS = {
    StepKind.PROVISION: StatusReason.PROCESSING,
    StepKind.DEPROVISION: StatusReason.DEPROVISIONING,
}


def step_result(change: Change, result: StepResult) -> Outcome:
    record = change.record
    assert record is not None
    trigger = trigger_of(result) if result.ok else (
        Trigger.TEST_FAILED if result.kind is StepKind.CALLING_TEST else Trigger.FAIL)
    tracking = record.tracking
    in_step = tracking.step == result.kind.value and tracking.step_version == result.started_version
    expected = _STEP_STATUS.get(result.kind)
    if result.kind is StepKind.CALLING_TEST:
        in_step = in_step and record.calling_status is AutomatedCallingStatus.IN_PROGRESS
    elif record.status is not expected:
        in_step = False
    if not in_step:
        return change.nothing(
            Result.STALE, trigger,
            f"the record left the {result.kind.value} step started at version "
            f"{result.started_version} (now {record.status.label}, version {record.version})",
        )
    if result.kind is StepKind.CALLING_TEST:
        if result.ok:
            change.apply(Trigger.TEST_STARTED, f"calling test {result.test_id} started",
                         tracking=replace(tracking, step=None, calling_test_id=result.test_id))
            return change.done()
        return finish_test(change, Trigger.TEST_FAILED, result.details)
    if not result.ok:
        return _step_failed(change, result)
    settled = replace(tracking, step=None, retry_attempt=0, failed_call=None)
    settled = replace(settled, step_trace=kept_trace(settled))
    if result.kind is StepKind.PROVISION:
        response = result.response if result.response is not None else record.provisioning_response
        change.apply(
            Trigger.PROVISIONED, "provisioner and GateKeeper succeeded",
            status=StatusReason.RUNNING, exception_details="", error_message=None,
            provisioning_response=None if response is None
            else truncate(response, PROVISIONING_RESPONSE_MAX),
            tracking=settled, **fire_gate(record, Trigger.ACTIVATE),
        )
    else:
        change.apply(
            Trigger.DEPROVISIONED, "GateKeeper deactivated and channel deleted",
            status=StatusReason.DEPROVISIONED, exception_details="", error_message=None,
            tracking=settled, **fire_gate(record, Trigger.CLOSE_GATE),
        )
    change.effects.append(CancelRetry(record.id))
    return change.done()


def _step_failed(change: Change, result: StepResult) -> Outcome:
    record = change.record
    assert record is not None
    target = fire_lifecycle(change, Trigger.FAIL)
    assert target is not None
    failed = result.failed_call.value if result.failed_call else result.kind.value
    attempt = record.tracking.retry_attempt + 1
    changes: dict[str, Any] = {
        "status": target,
        "exception_details": truncate(result.details or f"{failed} failed",
                                      EXCEPTION_DETAILS_MAX),
        "error_message": truncate((result.summary or f"{failed} failed").splitlines()[0],
                                  ERROR_MESSAGE_MAX),
        "tracking": replace(record.tracking, step=None, retry_attempt=attempt,
                            failed_call=failed),
    }
    if result.failed_call is BackendStep.ACTIVATE_GATE:
        changes.update(fire_gate(record, Trigger.REPORT_ERROR))
    if result.response is not None:
        changes["provisioning_response"] = truncate(result.response, PROVISIONING_RESPONSE_MAX)
    change.apply(Trigger.FAIL, changes["error_message"], **changes)
    change.effects.append(ScheduleRetry(record.id, attempt))
    return change.done()


def retry(change: Change, command: RetryDue) -> Outcome:
    record = change.record
    assert record is not None
    if record.version != command.expected_version:
        return change.nothing(Result.STALE, Trigger.RETRY,
                              f"the record changed since the retry was scheduled at version "
                              f"{command.expected_version} (now {record.version})")
    target = fire_lifecycle(change, Trigger.RETRY)
    lifecycle_step = record.tracking.step in (StepKind.PROVISION.value, StepKind.DEPROVISION.value)
    if target is None or lifecycle_step:
        return change.nothing(Result.STALE, Trigger.RETRY,
                              f"nothing to retry: the record is {record.status.label}")
    kind = StepKind.PROVISION if target is StatusReason.PROCESSING else StepKind.DEPROVISION
    change.apply(Trigger.RETRY, f"retry {record.tracking.retry_attempt} of {kind.value}",
                 status=target, tracking=start_step(change, kind))
    # This retry is under way: drop it from the schedule (a new failure schedules the next).
    change.effects.append(CancelRetry(record.id))
    run_step(change, kind)
    return change.done()


def calling_timeout(change: Change, command: CallingTestTimedOut) -> Outcome:
    record = change.record
    assert record is not None
    if (
        record.calling_status is not AutomatedCallingStatus.IN_PROGRESS
        or record.tracking.calling_test_version != command.started_version
    ):
        return change.nothing(Result.STALE, Trigger.TEST_FAILED,
                              f"the calling test started at version {command.started_version} "
                              "is no longer InProgress")
    return finish_test(change, Trigger.TEST_FAILED, "timed out")
