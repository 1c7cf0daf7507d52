"""What ``provisioning dataverse status`` shows: the outbox lag, the last success and the
last error (with its Dataverse code), the pause, and the counters."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from statemachine import format_time, parse_time
from worker.dataverse.errors import UnreadableEntry
from worker.dataverse.outbox import OutboxEntry
from worker.dataverse.settings import MirrorSettings
from worker.dataverse.state import MirrorState
from worker.store.protocol import StateStore


def mirror_status(store: StateStore, state: MirrorState | None,
                  settings: MirrorSettings | None, now: datetime,
                  outbox_max: int | None = None) -> dict[str, Any]:
    """The status as JSON. ``failing`` is true when entries wait and the last attempt
    failed (the last error is newer than the last success). ``outbox.full``: the outbox
    holds ``outbox_max`` (PROVISIONING_OUTBOX_MAX_ENTRIES) entries or more."""
    size = store.outbox_size()
    head = store.outbox_peek(1)
    oldest: OutboxEntry | None = None
    if head:
        try:
            oldest = OutboxEntry.decode(head[0])
        except UnreadableEntry:
            oldest = None
    status = state.status() if state is not None else {}
    last_success_at = status.get("last_success_at")
    last_error_at = status.get("last_error_at")
    paused = float(status.get("paused_until") or 0)
    failing = bool(size) and last_error_at is not None and (
        last_success_at is None or parse_time(last_error_at) >= parse_time(last_success_at))
    return {
        "mirror": "on" if settings is not None else "off",
        "url": settings.url if settings is not None else None,
        "outbox": {
            "entries": size,
            "oldest_at": format_time(oldest.at) if oldest and oldest.at else None,
            "lag_seconds": round((now - oldest.at).total_seconds(), 3)
            if oldest and oldest.at else None,
            "next": oldest.describe() if oldest else None,
            "max_entries": outbox_max,
            "full": outbox_max is not None and size >= outbox_max,
        },
        "last_success_at": last_success_at,
        "last_success": _json(status.get("last_success")),
        "last_error_at": last_error_at,
        "last_error": _json(status.get("last_error")),
        "paused_until": format_time(datetime.fromtimestamp(paused, UTC))
        if paused > now.timestamp() else None,
        "pause_reason": status.get("pause_reason") if paused > now.timestamp() else None,
        "failures": int(status.get("failures") or 0),
        "sent": int(status.get("sent") or 0),
        "conflicts": int(status.get("conflicts") or 0),
        "failing": failing,
    }


def format_status(report: dict[str, Any]) -> str:
    """The status as aligned lines for a terminal."""
    rows: list[tuple[str, str]] = []
    if report["mirror"] == "off":
        rows.append(("mirror", "off (PROVISIONING_DATAVERSE_URL is not set)"))
    else:
        rows.append(("mirror", f"on, to {report['url']}"))
    outbox = report["outbox"]
    off = report["mirror"] == "off"
    if outbox["entries"]:
        lag = (f", oldest committed {outbox['oldest_at']} ({outbox['lag_seconds']:.1f} s ago)"
               if outbox["oldest_at"] else "")
        sent_when = " (sent once the mirror is on)" if off else ""
        full = f", FULL (cap {outbox['max_entries']})" if outbox.get("full") else ""
        rows.append(("outbox", f"{outbox['entries']} entries waiting{lag}{full}{sent_when}"))
        if outbox["next"]:
            rows.append(("next", _entry(outbox["next"])))
    else:
        # With the mirror off nothing is written to the outbox: an empty one says nothing
        # about Dataverse.
        rows.append(("outbox", "empty" if off else "empty (Dataverse is up to date)"))
    if report["last_success_at"]:
        rows.append(("last success", f"{report['last_success_at']}  "
                                     f"{_entry(report['last_success'] or {})}"))
    else:
        rows.append(("last success", "never"))
    error = report["last_error"]
    if report["last_error_at"] and error:
        where = f" (HTTP {error['status']})" if error.get("status") else ""
        about = f"  [{_entry(error)}]" if error.get("op") else ""
        rows.append(("last error", f"{report['last_error_at']}  {error.get('code')}{where} "
                                   f"{error.get('kind', '')}: {error.get('message', '')}{about}"))
    else:
        rows.append(("last error", "none"))
    if report["paused_until"]:
        rows.append(("paused until", f"{report['paused_until']} ({report['pause_reason']})"))
    rows.append(("sent", f"{report['sent']} entries; conflicts reconciled: "
                         f"{report['conflicts']}"))
    return "\n".join(f"{label:<13} {value}" for label, value in rows)


def _entry(data: dict[str, Any]) -> str:
    version = f" v{data['version']}" if data.get("version") is not None else ""
    return f"{data.get('op', '?')} {data.get('record_id', '?')}{version}"


def _json(text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {"message": text}
