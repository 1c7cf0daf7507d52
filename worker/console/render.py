"""How the console writes things: Jinja2 templates shipped in the package (autoescaped),
times in UTC with the zone written and how long ago, and the response headers every page
carries."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup, escape
from starlette.responses import HTMLResponse

from statemachine import parse_time

HERE = Path(__file__).parent


def ago(seconds: float) -> str:
    """``4 min ago``, ``in 3 s``: a duration in the largest whole unit, rounded down."""
    future = seconds < 0
    size = abs(seconds)
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if size >= length:
            text = f"{int(size // length)} {unit}"
            break
    else:
        text = f"{int(size)} s"
    return f"in {text}" if future else f"{text} ago"


def duration(seconds: float | None) -> str:
    """A length of time, as ``ago`` writes it, without "ago"; an em dash for None."""
    if seconds is None:
        return "—"
    return ago(seconds).removesuffix(" ago")


def moment(value: datetime | str | float | None, now: datetime | None = None) -> Markup:
    """A ``<time>`` element: ``2026-12-07 11:23:57 UTC`` and ``(4 min ago)``."""
    if value is None or value == "":
        return Markup("—")
    if isinstance(value, str):
        try:
            when = parse_time(value)
        except (TypeError, ValueError):
            return escape(value)
    elif isinstance(value, float | int):
        when = datetime.fromtimestamp(value, UTC)
    else:
        when = value.astimezone(UTC)
    now = now or datetime.now(UTC)
    stamp = when.strftime("%Y-%m-%d %H:%M:%S UTC")
    relative = ago((now - when).total_seconds())
    return Markup('<time datetime="{}" title="{}">{} <span class="ago">({})</span></time>'
                  ).format(when.isoformat().replace("+00:00", "Z"), stamp, stamp, relative)


def templates() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"),
                      autoescape=select_autoescape(["html"]), trim_blocks=True,
                      lstrip_blocks=True)
    env.filters["moment"] = moment
    env.filters["duration"] = duration
    return env


def page(env: Environment, name: str, context: Mapping[str, Any],
         status_code: int = 200) -> HTMLResponse:
    """The template ``name`` rendered with ``context`` (the security headers are the
    middleware's, worker/console/security.py)."""
    return HTMLResponse(env.get_template(name).render(**context), status_code=status_code)
