"""Operator actions on failed-task entries: one rule for every entry point (CLI and HTTP).

``choose`` takes the snapshot (named ids, or every entry the filters match, chosen once:
entries that arrive meanwhile are left alone); ``act`` replays or discards each entry of
it through ``worker.operate.Operator``, audited under the identity the entry point vouches
for: ``cli:<login>`` (or ``cli:<--operator>``) from the CLI, the token's name or the JWT's
user from the HTTP API, never a name the HTTP request declares.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from worker.failed import FailedStore, FailedTask
from worker.operate import FailedFilter, Operator, SendEvent, select
from worker.service import HANDLE_EVENT, Service

Verb = Literal["replay", "discard"]


@dataclass
class ActionReport:
    """What ``act`` did: ``done`` holds the entries replayed or discarded (none on a dry
    run), ``refused`` those a replay could not send, each with why; ``results`` one line
    per entry of the snapshot, in order."""

    verb: Verb
    dry_run: bool
    snapshot: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    results: list[tuple[str, str]] = field(default_factory=list)


def choose(failed: FailedStore, *, ids: Sequence[str] | None = None,
           flt: FailedFilter | None = None) -> tuple[list[FailedTask], list[str]]:
    """The snapshot to act on, and the named ids that were not found. Exactly one of
    ``ids`` (named entries, in the order given, each once) and ``flt`` (every entry it
    matches, oldest last failure first) is given."""
    if (ids is None) == (flt is None):
        raise ValueError("name entry ids or give filters, not both and not neither")
    if flt is not None:
        return select(failed.all(), flt), []
    assert ids is not None
    found = {entry_id: failed.get(entry_id) for entry_id in dict.fromkeys(ids)}
    missing = [entry_id for entry_id, entry in found.items() if entry is None]
    return [entry for entry in found.values() if entry is not None], missing


def act(service: Service, verb: Verb, entries: Sequence[FailedTask], *, operator: str,
        send_event: SendEvent, reason: str = "", dry_run: bool = False) -> ActionReport:
    """Replay or discard every entry of the snapshot, audited under ``operator``. A
    discard needs a reason (ValueError without one, before anything is done)."""
    if verb == "discard" and not reason.strip():
        raise ValueError("a discard needs a reason (it is audited)")
    acting = Operator(service, send_event, operator)
    report = ActionReport(verb=verb, dry_run=dry_run,
                          snapshot=[entry.id for entry in entries])
    for entry in entries:
        if verb == "replay":
            sent, result = acting.replay(entry, dry_run=dry_run)
            if not sent:
                report.refused.append((entry.id, result))
            elif not dry_run:
                report.done.append(entry.id)
        else:
            result = acting.discard(entry, reason, dry_run=dry_run)
            if not dry_run:
                report.done.append(entry.id)
        report.results.append((entry.id, result))
    return report


def send_replay(event: Mapping[str, Any], entry_id: str) -> None:
    """Send a replayed event through the normal path: a ``provisioning.handle_event``
    message on the broker, marked as the replay of ``entry_id``."""
    from worker.app import app

    app.send_task(HANDLE_EVENT, args=[dict(event)], kwargs={"replay_of": entry_id})
