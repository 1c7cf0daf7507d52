"""Events in: the CloudEvents 1.0 structured form of SPEC §3, parsed and validated.

``parse_event`` reports every problem at once, each with its field path
(``data.channel.kind: must be one of facebook, line, ...``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from statemachine.attributes import Extensions, parse_extensions
from statemachine.errors import InvalidEvent, Problem
from statemachine.record import canonical_uuid, format_time, parse_time
from statemachine.table import (
    CHANNEL_LOOKUP,
    LOOKUP_BY_COLUMN,
    LOOKUP_BY_PARENT,
    NAME_MAX,
    AutomatedCallingStatus,
    ChannelKind,
    GateKeeperReason,
    GateKeeperStatus,
)
from statemachine.text import utf16_length

SPECVERSION = "1.0"
ID_MAX = 256
DETAILS_MAX = 8192


class EventType(StrEnum):
    PROVISION_REQUESTED = "provision.requested"
    DEPROVISION_REQUESTED = "deprovision.requested"
    GATEKEEPER_REPORTED = "gatekeeper.reported"
    CALLING_TEST_REQUESTED = "calling_test.requested"
    CALLING_TEST_COMPLETED = "calling_test.completed"
    PARENT_DELETED = "parent.deleted"


@dataclass(frozen=True, slots=True)
class ProvisionRequested:
    name: str
    kind: ChannelKind
    channel_id: str
    links: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class GateKeeperReported:
    status: GateKeeperStatus
    reason: GateKeeperReason
    details: str | None = None


@dataclass(frozen=True, slots=True)
class CallingTestCompleted:
    result: AutomatedCallingStatus  # SUCCESS or FAILURE
    test_id: str | None = None
    details: str | None = None


@dataclass(frozen=True, slots=True)
class ParentDeleted:
    table: str
    parent_id: str


Payload = ProvisionRequested | GateKeeperReported | CallingTestCompleted | ParentDeleted | None


@dataclass(frozen=True, slots=True)
class Event:
    """A validated event. ``id`` is the idempotency key; ``subject`` the record id;
    ``extensions`` every other attribute, as it arrived (``traceparent`` among them)."""

    id: str
    source: str
    type: EventType
    subject: str | None
    data: Payload = None
    time: datetime | None = None
    extensions: Extensions = field(default_factory=dict, hash=False)

    def to_cloudevent(self) -> dict[str, Any]:
        """The structured JSON form, as accepted by ``parse_event`` (round trip)."""
        event: dict[str, Any] = {
            "specversion": SPECVERSION,
            "id": self.id,
            "source": self.source,
            "type": self.type.value,
        }
        if self.subject is not None:
            event["subject"] = self.subject
        if self.time is not None:
            event["time"] = format_time(self.time)
        event.update(self.extensions)
        data = _data_to_json(self.data)
        if data is not None:
            event["data"] = data
        return event


def _data_to_json(data: Payload) -> dict[str, Any] | None:
    match data:
        case ProvisionRequested():
            return {
                "name": data.name,
                "channel": {"kind": data.kind.value, "id": data.channel_id},
                "links": dict(data.links),
            }
        case GateKeeperReported():
            body: dict[str, Any] = {"status": data.status.label, "reason": data.reason.label}
            if data.details is not None:
                body["details"] = data.details
            return body
        case CallingTestCompleted():
            body = {"result": data.result.label}
            if data.test_id is not None:
                body["test_id"] = data.test_id
            if data.details is not None:
                body["details"] = data.details
            return body
        case ParentDeleted():
            return {"table": data.table, "id": data.parent_id}
        case None:
            return None


def _one_of(values: list[str]) -> str:
    return "must be one of " + ", ".join(values)


class _Reader:
    """Collects problems while reading fields of a JSON object."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def problem(self, path: str, reason: str) -> None:
        self.problems.append(Problem(path, reason))

    def text(
        self, obj: Mapping[str, Any], key: str, path: str, *,
        required: bool = True, max_length: int | None = None,
    ) -> str | None:
        if key not in obj or obj[key] is None:
            if required:
                self.problem(path, "is required")
            return None
        value = obj[key]
        if not isinstance(value, str):
            self.problem(path, f"must be a string, not {_json_type(value)}")
            return None
        if required and not value.strip():
            self.problem(path, "must not be empty")
            return None
        if not _is_unicode(value):
            self.problem(path, "must be Unicode text, not hold a lone surrogate")
            return None
        if max_length is not None and utf16_length(value) > max_length:
            # Dataverse counts UTF-16 code units; a longer name would stall the mirror.
            self.problem(path, f"must be at most {max_length} UTF-16 code units (as "
                         "Dataverse counts: a character outside the Basic Multilingual "
                         f"Plane, such as most emoji, counts 2), not {utf16_length(value)}")
            return None
        return value

    def uuid(
        self, obj: Mapping[str, Any], key: str, path: str, *, required: bool = True
    ) -> str | None:
        if key not in obj or obj[key] is None:
            if required:
                self.problem(path, "is required")
            return None
        try:
            return canonical_uuid(obj[key])
        except ValueError:
            self.problem(path, f"must be a UUID, not {_show(obj[key])}")
            return None

    def obj(self, value: Any, path: str) -> Mapping[str, Any] | None:
        if not isinstance(value, Mapping):
            self.problem(path, f"must be an object, not {_json_type(value)}")
            return None
        return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_event(raw: Any) -> Event:
    """Validate a CloudEvents structured-form object; raise InvalidEvent listing every problem."""
    read = _Reader()
    if not isinstance(raw, Mapping):
        raise InvalidEvent([Problem("", f"an event must be a JSON object, not {_json_type(raw)}")])
    specversion = raw.get("specversion")
    if specversion is None:
        read.problem("specversion", "is required")
    elif specversion != SPECVERSION:
        read.problem("specversion", f'must be "{SPECVERSION}", not {_show(specversion)}')
    event_id = read.text(raw, "id", "id", max_length=ID_MAX)
    source = read.text(raw, "source", "source", max_length=ID_MAX)
    type_text = read.text(raw, "type", "type")
    event_type: EventType | None = None
    if type_text is not None:
        try:
            event_type = EventType(type_text)
        except ValueError:
            read.problem("type", _one_of([t.value for t in EventType]))
    subject: str | None = None
    if event_type is EventType.PARENT_DELETED:
        if raw.get("subject") is not None:
            subject = read.uuid(raw, "subject", "subject")
    else:
        subject = read.uuid(raw, "subject", "subject")
    moment: datetime | None = None
    if raw.get("time") is not None:
        try:
            if not isinstance(raw["time"], str):
                raise TypeError
            moment = parse_time(raw["time"])
        except (TypeError, ValueError):
            read.problem("time", f"must be an RFC 3339 timestamp, not {_show(raw['time'])}")
    data = _parse_data(read, event_type, raw.get("data"))
    extensions = parse_extensions(raw, read.problem, _show)
    if read.problems:
        raise InvalidEvent(read.problems)
    assert event_id is not None and source is not None and event_type is not None
    return Event(id=event_id, source=source, type=event_type, subject=subject,
                 data=data, time=moment, extensions=extensions)


def _parse_data(read: _Reader, event_type: EventType | None, raw: Any) -> Payload:
    if event_type in (EventType.DEPROVISION_REQUESTED, EventType.CALLING_TEST_REQUESTED):
        if raw not in (None, {}):
            read.problem("data", "must be absent, null or {} for " + str(event_type))
        return None
    if event_type is None:
        return None
    data = read.obj(raw, "data")
    if data is None:
        return None
    if event_type is EventType.PROVISION_REQUESTED:
        return _parse_provision(read, data)
    if event_type is EventType.GATEKEEPER_REPORTED:
        return _parse_gatekeeper(read, data)
    if event_type is EventType.CALLING_TEST_COMPLETED:
        return _parse_calling_result(read, data)
    return _parse_parent_deleted(read, data)


def _parse_provision(read: _Reader, data: Mapping[str, Any]) -> ProvisionRequested | None:
    name = read.text(data, "name", "data.name", max_length=NAME_MAX)
    kind: ChannelKind | None = None
    channel_id: str | None = None
    if "channel" not in data or data["channel"] is None:
        read.problem("data.channel", "is required")
    else:
        channel = read.obj(data["channel"], "data.channel")
        if channel is not None:
            kind_text = read.text(channel, "kind", "data.channel.kind")
            if kind_text is not None:
                try:
                    kind = ChannelKind(kind_text)
                except ValueError:
                    read.problem("data.channel.kind", _one_of([k.value for k in ChannelKind]))
            channel_id = read.uuid(channel, "id", "data.channel.id")
    links: dict[str, str | None] = {}
    raw_links = data.get("links")
    if raw_links is not None:
        mapping = read.obj(raw_links, "data.links")
        for column, value in (mapping or {}).items():
            path = f"data.links.{column}"
            if column not in LOOKUP_BY_COLUMN:
                read.problem(path, _one_of(list(LOOKUP_BY_COLUMN)))
                continue
            if kind is not None and column == CHANNEL_LOOKUP[kind]:
                if value is not None and channel_id is not None and value != channel_id:
                    read.problem(path, "is the channel lookup; it must equal data.channel.id")
                continue
            links[column] = read.uuid(mapping or {}, column, path, required=False)
    if name is None or kind is None or channel_id is None:
        return None
    return ProvisionRequested(name=name, kind=kind, channel_id=channel_id, links=links)


def _parse_gatekeeper(read: _Reader, data: Mapping[str, Any]) -> GateKeeperReported | None:
    status_text = read.text(data, "status", "data.status")
    reason_text = read.text(data, "reason", "data.reason")
    details = read.text(data, "details", "data.details", required=False, max_length=DETAILS_MAX)
    status = reason = None
    if status_text is not None:
        try:
            status = GateKeeperStatus[status_text.upper()]
        except KeyError:
            read.problem("data.status", _one_of([s.label for s in GateKeeperStatus]))
    if reason_text is not None:
        try:
            reason = GateKeeperReason[reason_text.upper()]
        except KeyError:
            read.problem("data.reason", _one_of([r.label for r in GateKeeperReason]))
    if status is None or reason is None:
        return None
    valid = {(GateKeeperStatus.ACTIVE, GateKeeperReason.RUNNING),
             (GateKeeperStatus.INACTIVE, GateKeeperReason.ERROR),
             (GateKeeperStatus.INACTIVE, GateKeeperReason.DEPROVISIONED)}
    if (status, reason) not in valid:
        read.problem("data.reason", f"{reason.label} does not go with status {status.label}")
        return None
    return GateKeeperReported(status=status, reason=reason, details=details)


def _parse_calling_result(read: _Reader, data: Mapping[str, Any]) -> CallingTestCompleted | None:
    result_text = read.text(data, "result", "data.result")
    test_id = read.text(data, "test_id", "data.test_id", required=False, max_length=ID_MAX)
    details = read.text(data, "details", "data.details", required=False, max_length=DETAILS_MAX)
    result: AutomatedCallingStatus | None = None
    if result_text is not None:
        if result_text in ("Success", "Failure"):
            result = AutomatedCallingStatus.from_label(result_text)
        else:
            read.problem("data.result", _one_of(["Success", "Failure"]))
    if result is None:
        return None
    return CallingTestCompleted(result=result, test_id=test_id, details=details)


def _parse_parent_deleted(read: _Reader, data: Mapping[str, Any]) -> ParentDeleted | None:
    table = read.text(data, "table", "data.table")
    if table is not None and table not in LOOKUP_BY_PARENT:
        read.problem("data.table", _one_of(list(LOOKUP_BY_PARENT)))
        table = None
    parent_id = read.uuid(data, "id", "data.id")
    if table is None or parent_id is None:
        return None
    return ParentDeleted(table=table, parent_id=parent_id)


def _is_unicode(text: str) -> bool:
    """False for a string holding a lone surrogate (legal as a JSON escape, not UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
