"""The Provisioning State record and its Dataverse Web API JSON (SPEC §1, §5.1)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any

from statemachine.errors import InvalidRecord, Problem
from statemachine.table import (
    FORMATTED,
    LOOKUP_COLUMNS,
    LOOKUPS,
    NAME_MAX,
    PRIMARY_KEY,
    AutomatedCallingStatus,
    ChannelKind,
    GateKeeperReason,
    GateKeeperStatus,
    StateCode,
    StatusReason,
)
from statemachine.text import utf16_length

GateKeeperPair = tuple[GateKeeperStatus | None, GateKeeperReason | None]


def canonical_uuid(value: object) -> str:
    """Return ``value`` as a lowercase hyphenated UUID string; raise ValueError otherwise."""
    if not isinstance(value, str):
        raise ValueError("must be a UUID string")
    return str(uuid.UUID(value))


def format_time(moment: datetime) -> str:
    """ISO 8601 UTC with a ``Z``, as the Dataverse Web API writes datetimes."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    """Parse an ISO 8601 timestamp (naive means UTC) into UTC; ValueError when it is not
    one, or when it falls off the calendar once moved to UTC."""
    if not isinstance(text, str):
        raise TypeError("must be an ISO 8601 string")
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{text!r} is outside the calendar in UTC") from None


@dataclass(frozen=True, slots=True)
class Tracking:
    """The worker's own bookkeeping for a record; not a Dataverse column.

    ``step``/``step_version``/``step_event_id`` name the step in flight (its calls carry
    ``<id>:<step_version>:<call>`` as Idempotency-Key). ``retry_attempt`` counts the beat
    retries since the last success. ``calling_test_id`` is the test in progress.
    """

    channel_kind: ChannelKind | None = None
    step: str | None = None
    step_version: int | None = None
    step_event_id: str | None = None
    failed_call: str | None = None
    retry_attempt: int = 0
    calling_test_id: str | None = None
    calling_test_version: int | None = None
    calling_test_started_at: datetime | None = None
    step_trace: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "channel_kind": self.channel_kind.value if self.channel_kind else None,
            "step": self.step,
            "step_version": self.step_version,
            "step_event_id": self.step_event_id,
            "failed_call": self.failed_call,
            "retry_attempt": self.retry_attempt,
            "calling_test_id": self.calling_test_id,
            "calling_test_version": self.calling_test_version,
            "calling_test_started_at": (
                format_time(self.calling_test_started_at)
                if self.calling_test_started_at
                else None
            ),
            "step_trace": self.step_trace,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Tracking:
        kind = data.get("channel_kind")
        started = data.get("calling_test_started_at")
        return cls(
            channel_kind=ChannelKind(kind) if kind else None,
            step=data.get("step"),
            step_version=data.get("step_version"),
            step_event_id=data.get("step_event_id"),
            failed_call=data.get("failed_call"),
            retry_attempt=int(data.get("retry_attempt", 0)),
            calling_test_id=data.get("calling_test_id"),
            calling_test_version=data.get("calling_test_version"),
            calling_test_started_at=parse_time(started) if started else None,
            step_trace=data.get("step_trace"),
        )


def _no_links() -> dict[str, str | None]:
    return dict.fromkeys(LOOKUP_COLUMNS)


@dataclass(frozen=True, slots=True)
class ProvisioningState:
    """One ``msdyn_ocprovisioningstate`` row. Immutable: every change makes a new value.

    ``links`` maps every lookup column of SPEC §1.2 to a UUID string or None.
    statecode is derived from statuscode (SPEC §1.1) and never stored.
    """

    id: str
    name: str
    status: StatusReason
    created_on: datetime
    modified_on: datetime
    version: int
    gatekeeper_status: GateKeeperStatus | None = None
    gatekeeper_reason: GateKeeperReason | None = None
    calling_status: AutomatedCallingStatus = AutomatedCallingStatus.NOT_TESTED
    exception_details: str = ""
    error_message: str | None = None
    provisioning_response: str | None = None
    links: dict[str, str | None] = field(default_factory=_no_links)
    tracking: Tracking = field(default_factory=Tracking)

    @property
    def statecode(self) -> StateCode:
        return self.status.statecode

    @property
    def gatekeeper(self) -> GateKeeperPair:
        return (self.gatekeeper_status, self.gatekeeper_reason)

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'

    @property
    def channel_id(self) -> str | None:
        kind = self.tracking.channel_kind
        return self.links.get(kind.lookup.column) if kind else None

    def evolve(self, **changes: Any) -> ProvisioningState:
        return replace(self, **changes)

    # -- Dataverse Web API shapes -------------------------------------------------------

    def to_dataverse(self) -> dict[str, Any]:
        """The read form of SPEC §5.1: etag, every ``_<lookup>_value``, formatted labels."""
        row: dict[str, Any] = {
            "@odata.etag": self.etag,
            PRIMARY_KEY: self.id,
            "msdyn_name": self.name,
            "statecode": int(self.statecode),
            f"statecode{FORMATTED}": self.statecode.label,
            "statuscode": int(self.status),
            f"statuscode{FORMATTED}": self.status.label,
            "msdyn_gatekeeperstatus": _int_or_none(self.gatekeeper_status),
            "msdyn_gatekeeperstatusreason": _int_or_none(self.gatekeeper_reason),
            "msdyn_automatedcallingstatus": int(self.calling_status),
            f"msdyn_automatedcallingstatus{FORMATTED}": self.calling_status.label,
            "msdyn_exceptiondetails": self.exception_details,
            "msdyn_errormessage": self.error_message,
            "msdyn_provisioningresponse": self.provisioning_response,
        }
        if self.gatekeeper_status is not None:
            row[f"msdyn_gatekeeperstatus{FORMATTED}"] = self.gatekeeper_status.label
        if self.gatekeeper_reason is not None:
            row[f"msdyn_gatekeeperstatusreason{FORMATTED}"] = self.gatekeeper_reason.label
        for lookup in LOOKUPS:
            row[lookup.value_property] = self.links.get(lookup.column)
        row["createdon"] = format_time(self.created_on)
        row["modifiedon"] = format_time(self.modified_on)
        row["versionnumber"] = self.version
        return row

    def to_dataverse_write(self, *, only: frozenset[str] | None = None) -> dict[str, Any]:
        """The write form (POST/PATCH body): columns plus ``<nav>@odata.bind`` for lookups.

        A set lookup binds ``/<entity set>(<id>)``; a cleared one writes null (Dataverse
        disassociates a single-valued navigation property set to null). ``only`` limits the
        body to those logical column names (a PATCH of the changed columns).
        """
        body: dict[str, Any] = {
            "msdyn_name": self.name,
            "statecode": int(self.statecode),
            "statuscode": int(self.status),
            "msdyn_gatekeeperstatus": _int_or_none(self.gatekeeper_status),
            "msdyn_gatekeeperstatusreason": _int_or_none(self.gatekeeper_reason),
            "msdyn_automatedcallingstatus": int(self.calling_status),
            "msdyn_exceptiondetails": self.exception_details,
            "msdyn_errormessage": self.error_message,
            "msdyn_provisioningresponse": self.provisioning_response,
        }
        for lookup in LOOKUPS:
            value = self.links.get(lookup.column)
            body[lookup.bind_property] = (
                f"/{lookup.parent_entity_set}({value})" if value is not None else None
            )
        if only is None:
            return body
        wanted = (only - set(LOOKUP_COLUMNS)) | {
            lookup.bind_property for lookup in LOOKUPS if lookup.column in only
        }
        return {key: value for key, value in body.items() if key in wanted}

    def changed_columns(self, before: ProvisioningState) -> frozenset[str]:
        """Logical names of the Dataverse columns that differ from ``before``."""
        mine, theirs = self.to_dataverse(), before.to_dataverse()
        changed = {
            key for key in mine
            if "@" not in key and key not in _SYSTEM and mine[key] != theirs.get(key)
        }
        return frozenset(
            key[1:-len("_value")] if key.startswith("_") and key.endswith("_value") else key
            for key in changed
        )

    @classmethod
    def from_dataverse(
        cls, row: Mapping[str, Any], *, tracking: Tracking | None = None
    ) -> ProvisioningState:
        """Parse a Dataverse read-form row (as ``to_dataverse`` writes, or a real org returns).

        Raises InvalidRecord naming every bad field.
        """
        problems: list[Problem] = []

        def get(key: str, parse: Any, default: Any = None, *, required: bool = False) -> Any:
            if key not in row or row[key] is None:
                if required:
                    problems.append(Problem(key, "is required"))
                return default
            try:
                return parse(row[key])
            except (ValueError, TypeError, KeyError) as exc:
                problems.append(Problem(key, f"is not valid ({exc})"))
                return default

        def text(value: Any) -> str:
            if not isinstance(value, str):
                raise TypeError("must be a string")
            return value

        record_id = get(PRIMARY_KEY, canonical_uuid, required=True)
        name = get("msdyn_name", text, required=True)
        if isinstance(name, str) and utf16_length(name) > NAME_MAX:
            problems.append(Problem("msdyn_name", f"is longer than {NAME_MAX} UTF-16 code units"))
        status = get("statuscode", StatusReason, required=True)
        statecode = get("statecode", StateCode)
        if status is not None and statecode is not None and statecode != status.statecode:
            problems.append(
                Problem("statecode", f"must be {int(status.statecode)} for {status.label}"))
        links = {
            lookup.column: get(lookup.value_property, canonical_uuid) for lookup in LOOKUPS
        }
        values = {
            "gatekeeper_status": get("msdyn_gatekeeperstatus", GateKeeperStatus),
            "gatekeeper_reason": get("msdyn_gatekeeperstatusreason", GateKeeperReason),
            "calling_status": get(
                "msdyn_automatedcallingstatus", AutomatedCallingStatus,
                AutomatedCallingStatus.NOT_TESTED,
            ),
            "exception_details": get("msdyn_exceptiondetails", text, ""),
            "error_message": get("msdyn_errormessage", text),
            "provisioning_response": get("msdyn_provisioningresponse", text),
            "created_on": get("createdon", parse_time, required=True),
            "modified_on": get("modifiedon", parse_time, required=True),
            "version": get("versionnumber", int, required=True),
        }
        if problems:
            raise InvalidRecord(problems)
        return cls(
            id=record_id, name=name, status=status, links=links,
            tracking=tracking or Tracking(), **values,
        )

    # -- the store's own form ------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The stored form: the Dataverse read form plus the worker's tracking."""
        return {**self.to_dataverse(), "_worker": self.tracking.to_json()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProvisioningState:
        return cls.from_dataverse(data, tracking=Tracking.from_json(data.get("_worker") or {}))


_SYSTEM = frozenset({PRIMARY_KEY, "createdon", "modifiedon", "versionnumber", "statecode"})
RECORD_FIELDS = tuple(f.name for f in fields(ProvisioningState))


def _int_or_none(value: int | None) -> int | None:
    return None if value is None else int(value)
