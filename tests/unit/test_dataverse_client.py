"""The mirror's settings, token cache, pacer and Web API client (errors translated)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from statemachine import ENTITY_SET, PRIMARY_KEY
from tests.factories import new_id
from tests.unit.test_dataverse_support import (
    AUTHORITY,
    CLIENT,
    ORG,
    SECRET,
    TENANT,
    Clock,
    settings,
)
from worker.dataverse import (
    DataverseAuthError,
    DataverseClient,
    DataverseConflict,
    DataverseNotFound,
    DataverseRejected,
    DataverseThrottled,
    DataverseUnavailable,
    MirrorSettings,
    Pacer,
    TokenCache,
)
from worker.dataverse.client import DEFAULT_RETRY_AFTER, retry_after, translate
from worker.dataverse.settings import TUNABLE_VARIABLES
from worker.emulators import DataverseEmulator, Emulator
from worker.errors import ConfigurationError

DATAVERSE_DOC = (Path(__file__).parents[2] / "docs" / "dataverse.md").read_text(encoding="utf-8")


def mirror_settings(**environ: str) -> MirrorSettings:
    return MirrorSettings.from_env(settings(), environ)


class Connected:
    def __init__(self, clock: Clock, **options: Any) -> None:
        self.clock = clock
        self.dataverse = DataverseEmulator(tenant_id=TENANT, client_id=CLIENT,
                                           client_secret=SECRET, clock=clock, **options)
        self.http = httpx.Client(transport=Emulator(dataverse=self.dataverse).transport())
        self.settings = mirror_settings()
        self.tokens = TokenCache(self.settings, self.http, clock=clock)
        self.pacer = Pacer(1000, 300, 1000, clock=clock, sleep=clock.sleep)
        self.client = DataverseClient(self.settings, self.http, self.tokens, self.pacer)


@pytest.fixture
def connected() -> Connected:
    return Connected(Clock())


# -- settings ----------------------------------------------------------------------------


def test_mirror_settings_come_from_settings_and_their_own_variables() -> None:
    config = mirror_settings(PROVISIONING_DATAVERSE_INTERVAL="0.5",
                             PROVISIONING_DATAVERSE_PAGE_SIZE="50",
                             PROVISIONING_DATAVERSE_QUEUE="dataverse")
    assert config.interval == 0.5
    assert config.page_size == 50
    assert config.queue == "dataverse"
    assert config.scope == f"{ORG}/.default"
    assert config.token_url == f"{AUTHORITY}/{TENANT}/oauth2/v2.0/token"
    assert config.api_url == f"{ORG}/api/data/v9.2"
    assert SECRET not in repr(config)
    assert config.describe()["client_secret"] == "***"


def test_a_trailing_slash_on_the_environment_url_is_dropped() -> None:
    config = MirrorSettings.from_env(settings(dataverse_url=ORG + "/"), {})
    assert config.scope == f"{ORG}/.default"


def test_mirror_settings_name_every_missing_or_bad_variable() -> None:
    with pytest.raises(ConfigurationError) as caught:
        MirrorSettings.from_env(
            settings(dataverse_client_secret=None, dataverse_tenant_id=None),
            {"PROVISIONING_DATAVERSE_BURST": "lots", "PROVISIONING_DATAVERSE_PAGE_SIZE": "0"})
    message = str(caught.value)
    for name in ("PROVISIONING_DATAVERSE_TENANT_ID", "PROVISIONING_DATAVERSE_CLIENT_SECRET",
                 "PROVISIONING_DATAVERSE_BURST", "PROVISIONING_DATAVERSE_PAGE_SIZE"):
        assert name in message
    with pytest.raises(ConfigurationError, match="mirror is off"):
        MirrorSettings.from_env(settings(dataverse_url=None), {})
    with pytest.raises(ConfigurationError, match="must be an http"):
        MirrorSettings.from_env(settings(dataverse_url="contoso"), {})


@pytest.mark.parametrize("variable", TUNABLE_VARIABLES)
def test_every_mirror_variable_is_in_the_dataverse_doc(variable: str) -> None:
    assert f"| `{variable}` |" in DATAVERSE_DOC


# -- tokens --------------------------------------------------------------------------------


def test_a_token_is_fetched_once_and_reused(connected: Connected) -> None:
    first = connected.tokens.token()
    assert connected.tokens.token() == first
    assert connected.dataverse.tokens_issued == 1
    [call] = connected.dataverse.calls
    assert call.path == f"/{TENANT}/oauth2/v2.0/token"


def test_a_token_is_refreshed_before_it_expires(connected: Connected) -> None:
    first = connected.tokens.token()
    connected.clock.advance(3599 - 300 - 1)  # just before the 5-minute margin
    assert connected.tokens.token() == first
    connected.clock.advance(1)
    assert connected.tokens.token() != first
    assert connected.dataverse.tokens_issued == 2


def test_a_short_lived_token_is_refreshed_at_90_percent_of_its_life() -> None:
    connected = Connected(Clock(), token_seconds=10)
    first = connected.tokens.token()
    connected.clock.advance(8.9)
    assert connected.tokens.token() == first
    connected.clock.advance(0.2)
    assert connected.tokens.token() != first


def test_a_401_fetches_a_fresh_token_and_sends_the_request_once_more(
        connected: Connected) -> None:
    assert connected.client.get(new_id()) is None
    connected.dataverse.revoke_tokens()
    assert connected.client.get(new_id()) is None
    assert connected.dataverse.tokens_issued == 2
    assert [c.status for c in connected.dataverse.calls if "/oauth2/" not in c.path] == [
        404, 401, 404]


def test_a_401_with_a_fresh_token_is_an_auth_error(connected: Connected) -> None:
    fetched: list[str] = []

    def refuse_every_token(request: httpx.Request) -> httpx.Response:
        if "/oauth2/" in request.url.path:
            fetched.append(request.url.path)
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
        return httpx.Response(401)

    http = httpx.Client(transport=httpx.MockTransport(refuse_every_token))
    client = DataverseClient(connected.settings, http, TokenCache(connected.settings, http),
                             connected.pacer)
    with pytest.raises(DataverseAuthError) as caught:
        client.get(new_id())
    assert caught.value.status == 401
    assert len(fetched) == 2  # the cached token, then one fresh one


def test_a_refused_sign_in_keeps_the_identity_platforms_error_code() -> None:
    clock = Clock()
    dataverse = DataverseEmulator(client_secret="the-real-one", clock=clock)
    http = httpx.Client(transport=Emulator(dataverse=dataverse).transport())
    tokens = TokenCache(mirror_settings(), http, clock=clock)
    with pytest.raises(DataverseAuthError) as caught:
        tokens.token()
    assert caught.value.code == "invalid_client"
    assert caught.value.message.startswith("AADSTS7000215")
    assert SECRET not in str(caught.value)


def test_an_unreachable_token_endpoint_is_unavailable_not_an_auth_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    tokens = TokenCache(mirror_settings(), httpx.Client(transport=httpx.MockTransport(refuse)))
    with pytest.raises(DataverseUnavailable) as caught:
        tokens.token()
    assert caught.value.code == "ConnectError"
    assert caught.value.transient


@pytest.mark.parametrize("answer", [
    httpx.Response(200, json={"token_type": "Bearer"}),
    httpx.Response(200, json={"access_token": "x", "expires_in": "soon"}),
    httpx.Response(200, text="<html>"),
])
def test_a_token_answer_without_token_and_lifetime_is_refused(answer: httpx.Response) -> None:
    http = httpx.Client(transport=httpx.MockTransport(lambda request: answer))
    with pytest.raises(DataverseAuthError):
        TokenCache(mirror_settings(), http).token()


def test_a_5xx_from_the_token_endpoint_is_unavailable() -> None:
    http = httpx.Client(transport=httpx.MockTransport(
        lambda request: httpx.Response(503, json={"error": "temporarily_unavailable"})))
    with pytest.raises(DataverseUnavailable, match="temporarily_unavailable"):
        TokenCache(mirror_settings(), http).token()


# -- errors --------------------------------------------------------------------------------


def answer(status: int, body: Any = None, **headers: str) -> httpx.Response:
    if isinstance(body, str):
        return httpx.Response(status, text=body, headers=headers)
    return httpx.Response(status, json=body, headers=headers)


def web_api_error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


@pytest.mark.parametrize(("response", "kind", "code"), [
    (answer(400, web_api_error("0x80040203", "bad")), DataverseRejected, "0x80040203"),
    (answer(403, web_api_error("0x80040220", "no privilege")), DataverseRejected, "0x80040220"),
    (answer(404, web_api_error("0x80040217", "gone")), DataverseNotFound, "0x80040217"),
    (answer(412, web_api_error("0x80060882", "stale")), DataverseConflict, "0x80060882"),
    (answer(429, web_api_error("0x80072322", "slow down"), **{"Retry-After": "7"}),
     DataverseThrottled, "0x80072322"),
    (answer(503, "<html>busy</html>"), DataverseUnavailable, "HTTP 503"),
    (answer(401), DataverseAuthError, "HTTP 401"),
])
def test_a_failed_answer_becomes_its_error_with_the_web_api_code(
        response: httpx.Response, kind: type[Exception], code: str) -> None:
    error = translate(response)
    assert isinstance(error, kind)
    assert error.code == code
    assert error.status == response.status_code


def test_a_throttled_answer_carries_its_retry_after() -> None:
    error = translate(answer(429, web_api_error("0x80072322", "x"), **{"Retry-After": "7"}))
    assert isinstance(error, DataverseThrottled)
    assert error.retry_after == 7.0
    assert "0x80072322" in str(error)


def test_retry_after_reads_seconds_and_dates_and_has_a_default() -> None:
    assert retry_after(httpx.Headers({"Retry-After": "12"})) == 12.0
    later = datetime.now(UTC) + timedelta(seconds=30)
    seconds = retry_after(httpx.Headers({"Retry-After": format_datetime(later, usegmt=True)}))
    assert 25 <= seconds <= 30
    assert retry_after(httpx.Headers()) == DEFAULT_RETRY_AFTER
    assert retry_after(httpx.Headers({"Retry-After": "soon"})) == DEFAULT_RETRY_AFTER


def test_no_answer_at_all_is_unavailable(connected: Connected) -> None:
    def hang_up(request: httpx.Request) -> httpx.Response:
        if "/oauth2/" in request.url.path:
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
        raise httpx.ReadTimeout("timed out", request=request)

    http = httpx.Client(transport=httpx.MockTransport(hang_up))
    client = DataverseClient(connected.settings, http, TokenCache(connected.settings, http),
                             connected.pacer)
    with pytest.raises(DataverseUnavailable) as caught:
        client.get(new_id())
    assert caught.value.code == "ReadTimeout"


# -- the entity set ------------------------------------------------------------------------


def test_create_update_get_and_delete_a_row(connected: Connected) -> None:
    record_id = new_id()
    client = connected.client
    etag = client.create({PRIMARY_KEY: record_id, "msdyn_name": "Contoso"})
    assert re.fullmatch(r'W/"\d+"', etag)
    newer = client.update(record_id, {"msdyn_name": "Renamed"}, etag=etag)
    assert newer != etag
    with pytest.raises(DataverseConflict):
        client.update(record_id, {"msdyn_name": "Stale"}, etag=etag)
    row = client.get(record_id)
    assert row is not None
    assert row["msdyn_name"] == "Renamed"
    assert row["@odata.etag"] == newer
    client.delete(record_id)
    assert client.get(record_id) is None
    with pytest.raises(DataverseNotFound):
        client.delete(record_id)
    with pytest.raises(DataverseNotFound):
        client.update(record_id, {"msdyn_name": "x"}, etag=None)  # If-Match: * never creates


def test_requests_carry_the_odata_headers_and_an_if_match(connected: Connected) -> None:
    seen: list[httpx.Request] = []
    transport = Emulator(dataverse=connected.dataverse).transport()

    def spy(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return transport.handle_request(request)

    http = httpx.Client(transport=httpx.MockTransport(spy))
    client = DataverseClient(connected.settings, http, connected.tokens, connected.pacer)
    record_id = new_id()
    etag = client.create({PRIMARY_KEY: record_id, "msdyn_name": "Contoso"})
    client.update(record_id, {"msdyn_name": "x"}, etag=etag)
    post, patch = seen
    assert post.url.path == f"/api/data/v9.2/{ENTITY_SET}"
    assert post.headers["OData-Version"] == "4.0"
    assert post.headers["Prefer"] == "return=representation"
    assert post.headers["Authorization"].startswith("Bearer ")
    assert patch.headers["If-Match"] == etag
    assert patch.url.path == f"/api/data/v9.2/{ENTITY_SET}({record_id})"


def test_pages_follow_next_links_with_the_page_size(connected: Connected) -> None:
    connected.dataverse.seed({PRIMARY_KEY: new_id(), "msdyn_name": f"row {n}"}
                             for n in range(5))
    pages = list(connected.client.pages(2))
    assert [len(page) for page in pages] == [2, 2, 1]
    assert all("versionnumber" in row for page in pages for row in page)


def test_a_next_link_to_another_host_is_never_followed(connected: Connected) -> None:
    def elsewhere(request: httpx.Request) -> httpx.Response:
        if "/oauth2/" in request.url.path:
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
        return httpx.Response(200, json={"value": [], "@odata.nextLink":
                                         "https://evil.example/steal?$skiptoken=2"})

    http = httpx.Client(transport=httpx.MockTransport(elsewhere))
    client = DataverseClient(connected.settings, http, TokenCache(connected.settings, http),
                             connected.pacer)
    rows, link = client.page(10)
    assert rows == []
    with pytest.raises(DataverseRejected, match="foreign_next_link"):
        client.page(10, link)


# -- pacing --------------------------------------------------------------------------------


def test_the_pacer_lets_a_burst_go_then_spaces_requests() -> None:
    clock = Clock()
    pacer = Pacer(6000, 300.0, 3, clock=clock, sleep=clock.sleep)
    waits = [pacer.wait() for _ in range(6)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3:] == pytest.approx([0.05, 0.05, 0.05])
    clock.advance(10)
    assert pacer.delay() == 0.0


def test_the_pacer_refuses_nonsense_limits() -> None:
    with pytest.raises(ValueError, match="positive"):
        Pacer(0, 300.0, 1)
