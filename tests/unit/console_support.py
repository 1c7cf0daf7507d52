"""The operator console in-process for unit tests: the API and the console over a Service
on fakeredis (the Redis stores, so the overview's counts are the real ones), driven by
a client that keeps cookies, over https so Secure cookies are sent."""

from __future__ import annotations

import re
import uuid
from typing import Any

import anyio
import fakeredis
import httpx
from starlette.applications import Starlette

from worker.backends import Backends
from worker.console import console_mount
from worker.emulators import Emulator
from worker.http import ApiContext, create_app
from worker.http.auth import Authenticator, OidcVerifier, RedisTokenStore, Role
from worker.keys import Keys
from worker.ops.health import Check, summary
from worker.service import Service
from worker.settings import BackendSettings, Settings
from worker.store.failed import RedisFailedStore
from worker.store.redis import RedisStateStore

BASE = "https://console.test"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class Client:
    """A synchronous client of the app that keeps its cookies between requests, as a
    browser does (one event loop per request: simple, and enough)."""

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.cookies = httpx.Cookies()

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url=BASE,
                                         cookies=self.cookies) as client:
                answer = await client.request(method, url, **kwargs)
                self.cookies = httpx.Cookies(client.cookies)
                return answer

        return anyio.run(go)

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)


class ConsoleHarness:
    def __init__(self, *, settings: Settings | None = None,
                 oidc: OidcVerifier | None = None) -> None:
        self.redis = fakeredis.FakeRedis(decode_responses=True)
        keys = Keys("test")
        self.emulator = Emulator(seed=7)
        self.settings = settings or Settings(
            key_prefix="test",
            backends=BackendSettings(
                provisioner_url="http://backends.test", gatekeeper_url="http://backends.test",
                calling_test_url="http://backends.test", backoff_base=0.0, backoff_cap=0.0),
            retry_base_seconds=0.0, retry_cap_seconds=0.0, max_retries=2)
        backends = Backends(self.settings.backends,
                            httpx.Client(transport=self.emulator.transport()),
                            sleep=lambda _: None)
        self.kicks: list[str] = []
        self.service = Service(self.settings, RedisStateStore(self.redis, keys=keys),
                               RedisFailedStore(self.redis, keys), backends,
                               kick=self.kicks.append)
        self.tokens = RedisTokenStore(self.redis, keys)
        self.replays: list[tuple[dict[str, Any], str]] = []

        def send_replay(event: Any, entry_id: str) -> None:
            self.replays.append((dict(event), entry_id))
            self.service.handle_message(dict(event), replay_of=entry_id)

        self.api = ApiContext(settings=self.settings, service=self.service,
                              auth=Authenticator(self.tokens, oidc), send_replay=send_replay,
                              health=lambda: summary([Check("store", True, "ok")]))
        self.app = create_app(self.api, mounts=[console_mount(self.api, self.redis)])

    def client(self) -> Client:
        return Client(self.app)

    def token(self, role: Role, name: str | None = None, **kwargs: Any) -> str:
        return self.tokens.create(name or f"{role.label}-{uuid.uuid4().hex[:6]}", role,
                                  **kwargs).token

    def login(self, client: Client, token: str) -> httpx.Response:
        form = client.get("/ui/login")
        csrf = CSRF.search(form.text)
        assert csrf is not None, form.text
        return client.post("/ui/login", data={"csrf": csrf.group(1), "token": token,
                                              "next": "/ui/"})

    def logged_in(self, role: Role, name: str | None = None) -> Client:
        client = self.client()
        answer = self.login(client, self.token(role, name))
        assert answer.status_code == 303, answer.text
        return client


def csrf_of(page: httpx.Response) -> str:
    found = CSRF.search(page.text)
    assert found is not None, page.text
    return found.group(1)
