"""The HTTP API in-process for unit tests: the app over the in-memory Service (the
emulator as backends), API tokens on fakeredis, driven through ``httpx.ASGITransport``."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import anyio
import fakeredis
import httpx
from starlette.applications import Starlette

from worker.http import ApiContext, create_app
from worker.http.auth import Authenticator, OidcVerifier, RedisTokenStore, Role
from worker.keys import Keys
from worker.logs import configure
from worker.ops.health import Check, summary
from worker.service import Service
from worker.settings import Settings

BASE = "http://api.test"


class Api:
    """A synchronous client of the app (one event loop per request: simple, and enough)."""

    def __init__(self, app: Starlette, service: Service, tokens: RedisTokenStore) -> None:
        self.app = app
        self.service = service
        self.tokens = tokens
        self.replays: list[tuple[dict[str, Any], str]] = []

    def request(self, method: str, url: str, *, token: str | None = None,
                **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}) or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"

        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
                return await client.request(method, url, headers=headers, **kwargs)

        return anyio.run(go)

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def token(self, role: Role, name: str | None = None, **kwargs: Any) -> str:
        created = self.tokens.create(name or f"{role.label}-{uuid.uuid4().hex[:6]}", role,
                                     **kwargs)
        return created.token


def make_api(service: Service, *, oidc: OidcVerifier | None = None,
             clock: Callable[[], float] | None = None,
             health: dict[str, Any] | None = None) -> Api:
    """The app over ``service``; a replay is handled at once, as a worker would. Logs are
    set to INFO on the console (a CLI test before may have quietened them to warnings),
    so tests can read the request lines."""
    configure(Settings(log_format="console", log_level="INFO"))
    client = fakeredis.FakeRedis(decode_responses=True)
    tokens = (RedisTokenStore(client, Keys("test")) if clock is None
              else RedisTokenStore(client, Keys("test"), clock=clock))
    api_holder: list[Api] = []

    def send_replay(event: Any, entry_id: str) -> None:
        api_holder[0].replays.append((dict(event), entry_id))
        service.handle_message(dict(event), replay_of=entry_id)

    checks = health or summary([Check("store", True, "PING 0.1 ms")])
    context = ApiContext(settings=service.settings, service=service,
                         auth=Authenticator(tokens, oidc), send_replay=send_replay,
                         health=lambda: checks)
    api = Api(create_app(context), service, tokens)
    api_holder.append(api)
    return api
