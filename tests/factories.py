"""Builders the tests share: raw events as producers send them (CloudEvents 1.0 structured
form, SPEC §3), and the seam that runs the CLI on a test's own Service.

Ids are uuid-based like producers' (``evt-<32 hex>``); every builder takes an explicit
``event_id`` where a test needs to resend the same event.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from worker.service import Service


def new_id() -> str:
    return str(uuid.uuid4())


def event(kind: str, subject: str | None, data: Any = None, *, event_id: str | None = None,
          source: str = "tests", time: str | None = None) -> dict[str, Any]:
    """A raw event of type ``kind`` for record ``subject`` (None: no subject)."""
    body: dict[str, Any] = {"specversion": "1.0", "id": event_id or f"evt-{uuid.uuid4().hex}",
                            "source": source, "type": kind}
    if subject is not None:
        body["subject"] = subject
    if time is not None:
        body["time"] = time
    if data is not None:
        body["data"] = data
    return body


def provision(record_id: str, channel_id: str | None = None, *, kind: str = "whatsapp",
              name: str = "Contoso", links: Mapping[str, str | None] | None = None,
              event_id: str | None = None, **options: Any) -> dict[str, Any]:
    """``provision.requested`` for a channel of ``kind`` (a new channel id unless given)."""
    data: dict[str, Any] = {"name": name, "channel": {"kind": kind,
                                                      "id": channel_id or new_id()}}
    if links is not None:
        data["links"] = dict(links)
    return event("provision.requested", record_id, data, event_id=event_id, **options)


def deprovision(record_id: str, *, event_id: str | None = None) -> dict[str, Any]:
    return event("deprovision.requested", record_id, event_id=event_id)


def gatekeeper(record_id: str, status: str, reason: str, details: str | None = None, *,
               event_id: str | None = None) -> dict[str, Any]:
    """``gatekeeper.reported`` with the (status, reason) pair."""
    data = {"status": status, "reason": reason}
    if details is not None:
        data["details"] = details
    return event("gatekeeper.reported", record_id, data, event_id=event_id)


def run_cli_on(monkeypatch: pytest.MonkeyPatch, service: Service,
               send_replay: Callable[[Mapping[str, Any], str], None] | None = None) -> None:
    """Point every CLI command at ``service`` (its store, failed store and kicks) instead of
    the environment's Redis and broker. A replay is handled at once by ``service`` (as a
    worker would) unless ``send_replay`` says otherwise."""
    from worker.cli import dataverse, failed, operate, records, submit

    monkeypatch.setattr(records, "_store", lambda: service.store)
    monkeypatch.setattr(failed, "_failed", lambda: service.failed)
    monkeypatch.setattr(submit, "_service", lambda: service)
    monkeypatch.setattr(operate, "_service", lambda: service)
    monkeypatch.setattr(dataverse, "_store", lambda: service.store)
    monkeypatch.setattr(dataverse, "_failed", lambda: service.failed)
    monkeypatch.setattr(operate, "_send_replay", send_replay or (
        lambda raw, entry_id: service.handle_message(dict(raw), replay_of=entry_id)))
