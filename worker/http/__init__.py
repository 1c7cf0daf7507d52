"""The HTTP API, ``provisioning serve`` (SPEC §8): Starlette on uvicorn, thin routes over
the same service functions as the CLI.

    app.py       the application and its wiring
    context.py   what routes share: authorization, the service off the event loop, bodies
    events.py    POST /api/v1/events (CloudEvents: structured, batch, binary)
    records.py   records and history; failed.py  failed tasks, replay, discard, audit
    health.py    /healthz, /readyz, /api/v1/health
    auth/        API tokens, OIDC JWTs, roles
    problems.py  RFC 9457 errors;  observe.py  request ids, request logs, metrics
    openapi.py   GET /openapi.json  (the token and serve commands: worker/cli/http.py)
"""

from __future__ import annotations

from worker.http.app import build_context, create_app
from worker.http.context import ApiContext

__all__ = ["ApiContext", "build_context", "create_app"]
