"""The operator console (``/ui/`` of ``provisioning serve``): server-rendered pages over the
same service functions as the HTTP API and the CLI (docs/console.md).

    app.py       the ASGI app, its routes and its wiring (``console_mount``)
    context.py   what pages share: the session of a request, CSRF, roles, errors
    session.py   signed, expiring session cookies;  security.py  the response headers
    login.py     token login and logout;  oidc.py  Entra ID (authorization code + PKCE)
    once.py      one-time login links (``provisioning demo --console``)
    overview.py  the overview tiles and the Dataverse mirror page
    records.py   records and one record;  diagram.py  the machines as SVG
    failed.py    failed tasks: filters, confirm, replay, discard; the audit log
    render.py    templates, times in UTC and "4 min ago"
    templates/ static/   the pages, the stylesheet and the one script (no CDN)
"""

from __future__ import annotations

from worker.console.app import build_console, console_mount, create_console
from worker.console.context import Console
from worker.console.once import OneTimeLogins

__all__ = ["Console", "OneTimeLogins", "build_console", "console_mount", "create_console"]
