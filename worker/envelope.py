"""What an inbox holds: an accepted event, or a command from beat's sweeps, with context.

The envelope keeps the event exactly as it arrived (so a failed one can be replayed),
the record it is for (``parent.deleted`` fans out to several), the log context set at
submit, and for Celery messages the original message body.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from statemachine import (
    CallingTestTimedOut,
    Command,
    RetryDue,
    parse_event,
)
from worker.keys import dumps

EVENT = "event"
RETRY = "retry"
CALLING_TIMEOUT = "calling_timeout"


@dataclass(frozen=True, slots=True)
class Envelope:
    kind: str
    record_id: str
    event_id: str
    event: dict[str, Any] | None = None
    version: int | None = None  # RETRY: expected version; CALLING_TIMEOUT: started version
    incarnation: str = ""  # RETRY, CALLING_TIMEOUT: the record's createdon
    accepted_at: str = ""
    context: dict[str, Any] = field(default_factory=dict)
    message: dict[str, Any] | None = None

    def encode(self) -> str:
        return dumps({
            "kind": self.kind, "record_id": self.record_id, "event_id": self.event_id,
            "event": self.event, "version": self.version, "incarnation": self.incarnation,
            "accepted_at": self.accepted_at,
            "context": self.context, "message": self.message,
        })

    @classmethod
    def internal(cls, command: RetryDue | CallingTestTimedOut, accepted_at: str) -> Envelope:
        """The envelope of a command from beat's sweeps; its id is the command's."""
        if isinstance(command, RetryDue):
            kind, version = RETRY, command.expected_version
        else:
            kind, version = CALLING_TIMEOUT, command.started_version
        return cls(kind=kind, record_id=command.record_id, event_id=command.event_id,
                   version=version, incarnation=command.incarnation, accepted_at=accepted_at)

    @classmethod
    def decode(cls, text: str) -> Envelope:
        data = json.loads(text)
        return cls(**data)

    def command(self) -> Command:
        """The core's command; raises InvalidEvent if the stored event no longer parses."""
        if self.kind == RETRY:
            assert self.version is not None
            return RetryDue(self.record_id, self.version, self.incarnation)
        if self.kind == CALLING_TIMEOUT:
            assert self.version is not None
            return CallingTestTimedOut(self.record_id, self.version, self.incarnation)
        event = parse_event(self.event)
        # parent.deleted fans out: each copy applies to the record it was accepted for.
        return replace(event, subject=self.record_id)
