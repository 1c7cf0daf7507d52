"""What the worker must carry out after an outcome (the core never does I/O itself)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from statemachine.table import ChannelKind


class BackendStep(StrEnum):
    """One HTTP call of SPEC §4; its value is the ``<step>`` of the Idempotency-Key."""

    PROVISION_CHANNEL = "provision_channel"
    ACTIVATE_GATE = "activate_gate"
    DEACTIVATE_GATE = "deactivate_gate"
    DEPROVISION_CHANNEL = "deprovision_channel"
    START_CALLING_TEST = "start_calling_test"


class StepKind(StrEnum):
    """A sequence of backend calls that together make one lifecycle step."""

    PROVISION = "provision"  # provisioner PUT, then gate activation
    DEPROVISION = "deprovision"  # gate deactivation, then provisioner DELETE
    CALLING_TEST = "calling_test"  # start a calling test

    @property
    def calls(self) -> tuple[BackendStep, ...]:
        return _STEP_CALLS[self]


_STEP_CALLS: dict[StepKind, tuple[BackendStep, ...]] = {
    StepKind.PROVISION: (BackendStep.PROVISION_CHANNEL, BackendStep.ACTIVATE_GATE),
    StepKind.DEPROVISION: (BackendStep.DEACTIVATE_GATE, BackendStep.DEPROVISION_CHANNEL),
    StepKind.CALLING_TEST: (BackendStep.START_CALLING_TEST,),
}


@dataclass(frozen=True, slots=True)
class BackendCall:
    """Everything one backend call needs; built by the core from the record."""

    step: BackendStep
    record_id: str
    idempotency_key: str
    kind: ChannelKind | None = None
    channel_id: str | None = None
    name: str | None = None
    links: dict[str, str | None] = field(default_factory=dict)
    phone_number_id: str | None = None


def idempotency_key(record_id: str, version: int, step: BackendStep) -> str:
    """SPEC §4: ``<record id>:<versionnumber when the step started>:<step>``."""
    return f"{record_id}:{version}:{step.value}"


@dataclass(frozen=True, slots=True)
class RunStep:
    """Run ``calls`` in order, stopping at the first failure, then report a StepResult."""

    kind: StepKind
    record_id: str
    event_id: str
    started_version: int
    calls: tuple[BackendCall, ...]


@dataclass(frozen=True, slots=True)
class ScheduleRetry:
    """The record failed; schedule retry number ``attempt`` (1-based) for the beat sweep."""

    record_id: str
    attempt: int


@dataclass(frozen=True, slots=True)
class CancelRetry:
    """The record left the failing state; drop any scheduled retry."""

    record_id: str


@dataclass(frozen=True, slots=True)
class DeleteRecord:
    """A Cascade rule deleted the record: remove it (its history stays)."""

    record_id: str


Effect = RunStep | ScheduleRetry | CancelRetry | DeleteRecord
