"""The ASGI application (Starlette) and the wiring ``provisioning serve`` runs.

Starlette rather than FastAPI: the routes are thin and few, the ingest route reads raw
bodies in three content modes (no model binding would help), the errors are RFC 9457 and
not FastAPI's 422 shape, and the benchmark compares against a bare Starlette endpoint: a
layer less costs less. The OpenAPI document is written by hand (openapi.py) and checked
against the app by a schemathesis run.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from worker import bootstrap
from worker.app import app as celery_app
from worker.bootstrap.services import build_service
from worker.dispatch import Dispatch
from worker.http import events, failed, health, records
from worker.http.auth import Authenticator, OidcVerifier, RedisTokenStore
from worker.http.context import ApiContext
from worker.http.kicker import Kicker
from worker.http.observe import HttpMetrics, RequestObserver
from worker.http.openapi import document
from worker.http.problems import ApiProblem, problem_response, response_of
from worker.keys import Keys
from worker.ops.health import run_checks, summary
from worker.settings import Settings


def create_app(api: ApiContext, metrics: HttpMetrics | None = None, *,
               mounts: Sequence[BaseRoute] = ()) -> Starlette:
    """The API over ``api``'s service; ``metrics`` a registry of its own by default.
    ``mounts``: more routes after the API's (``provisioning serve`` mounts the operator
    console at ``/ui``, worker/console, which sits a layer above this package)."""
    metrics = metrics or HttpMetrics()
    spec = document()

    async def openapi(request: Request) -> JSONResponse:
        return JSONResponse(spec)

    async def prometheus(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    routes = [
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
        Route("/api/v1/events", events.post_events, methods=["POST"]),
        Route("/api/v1/records", records.list_records, methods=["GET"]),
        Route("/api/v1/records/{id}", records.get_record, methods=["GET"]),
        Route("/api/v1/records/{id}/history", records.get_history, methods=["GET"]),
        Route("/api/v1/failed", failed.list_failed, methods=["GET"]),
        Route("/api/v1/failed/replay", failed.replay_many, methods=["POST"]),
        Route("/api/v1/failed/{entry}", failed.get_failed, methods=["GET"]),
        Route("/api/v1/failed/{entry}/replay", failed.replay_one, methods=["POST"]),
        Route("/api/v1/failed/{entry}/discard", failed.discard_one, methods=["POST"]),
        Route("/api/v1/audit", failed.get_audit, methods=["GET"]),
        Route("/api/v1/health", health.health, methods=["GET"]),
        *mounts,
    ]
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        for close in api.on_close:  # uvicorn has finished the requests in flight
            close()

    app = Starlette(
        routes=routes,
        middleware=[Middleware(RequestObserver, metrics=metrics)],
        exception_handlers={ApiProblem: _api_problem, HTTPException: _http_exception},
        lifespan=lifespan,
    )
    app.state.api = api
    app.state.metrics = metrics
    return app


async def _api_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiProblem)
    return response_of(exc)


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 (no such route) and 405 (method) as problems."""
    assert isinstance(exc, HTTPException)
    detail = {404: f"no such path: {request.url.path}",
              405: f"{request.method} is not allowed on {request.url.path}"}.get(
        exc.status_code, str(exc.detail))
    return problem_response(exc.status_code, detail, headers=exc.headers)


def build_context(settings: Settings) -> ApiContext:
    """The real wiring: the Service on Redis (kicks and replays as Celery messages through
    ``worker.app.app``, the kicks coalesced on one thread), the API tokens on the same
    Redis, OIDC when configured, and the health checks."""
    dispatch = Dispatch(celery_app, settings.batch_records)
    kicker = Kicker(dispatch.kick_many)
    service = build_service(settings, app=celery_app, kick=dispatch.kick, kick_many=kicker)
    tokens = RedisTokenStore(bootstrap.redis_client(settings),
                             Keys(settings.key_prefix, settings.store_shards))
    oidc = None
    if settings.oidc_issuer and settings.oidc_audience:
        oidc = OidcVerifier(settings.oidc_issuer, settings.oidc_audience,
                            jwks_url=settings.oidc_jwks_url,
                            leeway=settings.oidc_leeway_seconds,
                            cache_seconds=settings.oidc_jwks_cache_seconds)

    def checks() -> dict[str, Any]:
        client = bootstrap.redis_client(settings, probe=True)
        try:
            return summary(run_checks(settings, client))
        finally:
            client.close()

    closing = [kicker.close, service.close, tokens.client.close]
    if oidc is not None:
        closing.append(oidc.close)
    return ApiContext(settings=settings, service=service, auth=Authenticator(tokens, oidc),
                      send_replay=dispatch.replay, health=checks, on_close=tuple(closing))
