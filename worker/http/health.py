"""Probes and health: ``/healthz`` (the process is up), ``/readyz`` (the store answers),
``/api/v1/health`` (what ``provisioning health --json`` prints)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from worker.http.auth import Role
from worker.http.context import authorize, call, context
from worker.http.problems import ApiProblem


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    store = context(request).service.store
    try:
        answered = await call(request, store.ping)
    except ApiProblem:  # the store failed (call turns its StoreError into a 503)
        answered = False
    if not answered:
        raise ApiProblem(503, "the record store does not answer")
    return JSONResponse({"status": "ok"})


async def health(request: Request) -> JSONResponse:
    await authorize(request, Role.READER)
    return JSONResponse(await call(request, context(request).health))
