"""What ``apply`` takes besides events: results of the worker's own steps and beat's sweeps."""

from __future__ import annotations

from dataclasses import dataclass

from statemachine.effects import BackendStep, StepKind
from statemachine.events import Event


@dataclass(frozen=True, slots=True)
class StepResult:
    """How a ``RunStep`` ended. ``event_id`` is the id of the event that started the step."""

    record_id: str
    event_id: str
    kind: StepKind
    started_version: int
    ok: bool
    failed_call: BackendStep | None = None
    details: str = ""
    summary: str | None = None
    response: str | None = None
    test_id: str | None = None

    @property
    def event_type(self) -> str:
        return f"step.{self.kind.value}"


@dataclass(frozen=True, slots=True)
class RetryDue:
    """Beat's retry sweep found the record's retry due; it was scheduled at ``expected_version``."""

    record_id: str
    expected_version: int
    incarnation: str = ""  # the record's createdon: a re-created id never reuses a key

    @property
    def event_id(self) -> str:
        return f"retry:{self.record_id}:{self.incarnation}:{self.expected_version}"

    event_type = "retry.due"


@dataclass(frozen=True, slots=True)
class CallingTestTimedOut:
    """Beat's sweep found the calling test started at ``started_version`` past its limit."""

    record_id: str
    started_version: int
    incarnation: str = ""  # the record's createdon: a re-created id never reuses a key

    @property
    def event_id(self) -> str:
        return f"calling-timeout:{self.record_id}:{self.incarnation}:{self.started_version}"

    event_type = "calling_test.timed_out"


Command = Event | StepResult | RetryDue | CallingTestTimedOut


def dedupe_key(command: Command) -> str:
    """The key that marks ``command`` as processed for its record (invariant 8).

    A step result is keyed by its step and start version, so each step's outcome is
    applied at most once even though it carries the id of the event that started it.
    """
    if isinstance(command, StepResult):
        return f"{command.event_id}|{command.kind.value}|{command.started_version}"
    if isinstance(command, Event):
        return command.id
    return command.event_id


def event_type_of(command: Command) -> str:
    if isinstance(command, Event):
        return command.type.value
    return command.event_type


def record_id_of(command: Command) -> str | None:
    if isinstance(command, Event):
        return command.subject
    return command.record_id
