"""The pure core: the msdyn_ocprovisioningstate table, its three machines, and ``apply``.

No I/O happens in this package: ``apply(record, command, now=...)`` turns a record and an
event (or a step result) into an ``Outcome``: the new record, its history entries and the
effects the worker must carry out.
"""

from statemachine.apply import apply
from statemachine.commands import (
    CallingTestTimedOut,
    Command,
    RetryDue,
    StepResult,
    dedupe_key,
    event_type_of,
    record_id_of,
)
from statemachine.effects import (
    BackendCall,
    BackendStep,
    CancelRetry,
    DeleteRecord,
    Effect,
    RunStep,
    ScheduleRetry,
    StepKind,
    idempotency_key,
)
from statemachine.errors import (
    InvalidEvent,
    InvalidRecord,
    InvariantViolation,
    Problem,
    ProvisioningError,
    UnknownRecord,
)
from statemachine.events import (
    CallingTestCompleted,
    Event,
    EventType,
    GateKeeperReported,
    ParentDeleted,
    ProvisionRequested,
    parse_event,
)
from statemachine.history import HistoryEntry, Result, Snapshot
from statemachine.invariants import check as check_invariants
from statemachine.invariants import violations
from statemachine.machines import MACHINES, GateKeeper, Trigger
from statemachine.outcome import Outcome, trigger_of
from statemachine.record import ProvisioningState, Tracking, canonical_uuid, format_time, parse_time
from statemachine.steps import pending_step
from statemachine.table import (
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
    PRIMARY_KEY,
    PROVISIONING_RESPONSE_MAX,
    AutomatedCallingStatus,
    ChannelKind,
    Column,
    DeleteRule,
    GateKeeperReason,
    GateKeeperStatus,
    Lookup,
    StateCode,
    StatusReason,
)
from statemachine.text import cut_to_units, truncate, utf16_length

__all__ = [
    "CHANNEL_LOOKUP",
    "COLUMNS",
    "ENTITY",
    "ENTITY_SET",
    "ERROR_MESSAGE_MAX",
    "EXCEPTION_DETAILS_MAX",
    "LOOKUPS",
    "LOOKUP_BY_COLUMN",
    "LOOKUP_BY_PARENT",
    "MACHINES",
    "NAME_MAX",
    "PRIMARY_KEY",
    "PROVISIONING_RESPONSE_MAX",
    "AutomatedCallingStatus",
    "BackendCall",
    "BackendStep",
    "CallingTestCompleted",
    "CallingTestTimedOut",
    "CancelRetry",
    "ChannelKind",
    "Column",
    "Command",
    "DeleteRecord",
    "DeleteRule",
    "Effect",
    "Event",
    "EventType",
    "GateKeeper",
    "GateKeeperReason",
    "GateKeeperReported",
    "GateKeeperStatus",
    "HistoryEntry",
    "InvalidEvent",
    "InvalidRecord",
    "InvariantViolation",
    "Lookup",
    "Outcome",
    "ParentDeleted",
    "Problem",
    "ProvisionRequested",
    "ProvisioningError",
    "ProvisioningState",
    "Result",
    "RetryDue",
    "RunStep",
    "ScheduleRetry",
    "Snapshot",
    "StateCode",
    "StatusReason",
    "StepKind",
    "StepResult",
    "Tracking",
    "Trigger",
    "UnknownRecord",
    "apply",
    "canonical_uuid",
    "check_invariants",
    "cut_to_units",
    "dedupe_key",
    "event_type_of",
    "format_time",
    "idempotency_key",
    "parse_event",
    "parse_time",
    "pending_step",
    "record_id_of",
    "trigger_of",
    "truncate",
    "utf16_length",
    "violations",
]
