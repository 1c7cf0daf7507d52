"""The operator console in-process (tests/unit/console_support.py): sessions, the login
form, CSRF, roles, the security headers, and each page's content over the Redis stores
on fakeredis. The browser tests (tests/browser) drive the same pages in Chromium."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from statemachine import ProvisioningState, StatusReason
from statemachine.machines import LIFECYCLE_MACHINE
from tests.factories import event, new_id, provision
from tests.unit.console_support import ConsoleHarness, csrf_of
from worker.console import OneTimeLogins
from worker.console.diagram import machine_svg
from worker.console.render import ago, duration, moment
from worker.console.session import COOKIE, Sessions, Signer
from worker.errors import ConfigurationError
from worker.http.auth import Identity, Role
from worker.keys import Keys
from worker.settings import Settings
from worker.store.codec import pack_record


@pytest.fixture
def console() -> ConsoleHarness:
    return ConsoleHarness()


def failed_unknown(h: ConsoleHarness, record_id: str | None = None) -> str:
    """The id of a failed-task entry: a deprovision for a record that does not exist."""
    record_id = record_id or new_id()
    h.service.handle_message(event("deprovision.requested", record_id))
    [entry] = [e.id for e in h.service.failed.all() if e.record_id == record_id]
    return entry


# -- sessions --------------------------------------------------------------------------


def test_a_session_cookie_round_trips_and_a_tampered_or_expired_one_is_nobody() -> None:
    now = [1000.0]
    sessions = Sessions(Signer("k" * 32), 60, clock=lambda: now[0])
    session, cookie = sessions.start(Identity("ana", Role.OPERATOR, "token"), "abc123")
    assert sessions.read(cookie) == session
    payload, mac = cookie.split(".")
    assert sessions.read(payload + "." + mac[:-2] + "AA") is None
    assert sessions.read(payload[:-3] + "xyz." + mac) is None
    assert sessions.read("garbage") is None
    assert sessions.read(None) is None
    other = Sessions(Signer("j" * 32), 60, clock=lambda: now[0])
    assert other.read(cookie) is None  # another key
    now[0] += 61
    assert sessions.read(cookie) is None  # expired


def test_a_session_ends_at_its_token_expiry_when_that_is_sooner() -> None:
    sessions = Sessions(Signer(None), 3600, clock=lambda: 100.0)
    session, _ = sessions.start(Identity("ana", Role.READER, "token"), "id", until=160.0)
    assert session.expires == 160.0
    assert sessions.signer.generated


def test_a_signed_payload_that_is_not_a_session_is_nobody() -> None:
    signer = Signer("s" * 32)
    sessions = Sessions(signer, 60)
    assert sessions.read(signer.sign({"n": "ana"})) is None  # fields missing
    assert sessions.read(signer.sign({"n": "a", "r": "boss", "v": "token", "c": "x",
                                      "i": 1, "e": 2})) is None  # no such role


def test_the_session_secret_must_be_long_enough_and_oidc_needs_an_issuer() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env({"PROVISIONING_CONSOLE_SESSION_SECRET": "short",
                           "PROVISIONING_CONSOLE_OIDC_CLIENT_ID": "app"})
    text = str(caught.value)
    assert "PROVISIONING_CONSOLE_SESSION_SECRET: must be at least 32 characters" in text
    assert "PROVISIONING_CONSOLE_OIDC_CLIENT_ID: needs PROVISIONING_OIDC_ISSUER" in text
    with pytest.raises(ConfigurationError, match="CONSOLE_SECURE_COOKIE: must be one of on"):
        Settings.from_env({"PROVISIONING_CONSOLE_SECURE_COOKIE": "maybe"})
    assert "console_session_secret" not in repr(Settings(console_session_secret="x" * 40))


# -- logging in ------------------------------------------------------------------------


def test_without_a_session_a_page_redirects_to_the_login_form(console: ConsoleHarness) -> None:
    client = console.client()
    answer = client.get("/ui/failed?since=1h")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/login?next=%2Fui%2Ffailed%3Fsince%3D1h"
    form = client.get(answer.headers["location"])
    assert form.status_code == 200
    assert 'name="next" value="/ui/failed?since=1h"' in form.text
    assert "Sign in with Microsoft" not in form.text  # OIDC is off


def test_a_token_login_sets_a_hardened_cookie_and_goes_where_it_was_asked(
    console: ConsoleHarness,
) -> None:
    client = console.client()
    csrf = csrf_of(client.get("/ui/login"))
    answer = client.post("/ui/login", data={"csrf": csrf, "next": "/ui/records",
                                            "token": console.token(Role.READER, "rita")})
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/records"
    cookie = next(v for k, v in answer.headers.multi_items()
                  if k == "set-cookie" and v.startswith(COOKIE + "="))
    for attribute in ("HttpOnly", "Secure", "SameSite=lax", "Path=/ui/", "Max-Age=28800"):
        assert attribute in cookie
    assert console.tokens.entries()[0].name == "rita"
    page = client.get("/ui/records")
    assert page.status_code == 200
    assert "rita" in page.text and "reader" in page.text


@pytest.mark.parametrize("target", ["https://evil.example/ui/", "//evil.example/ui/",
                                    "/api/v1/records", "/ui\\..\\x"])
def test_login_never_redirects_off_the_console(console: ConsoleHarness, target: str) -> None:
    client = console.client()
    csrf = csrf_of(client.get("/ui/login"))
    answer = client.post("/ui/login", data={"csrf": csrf, "next": target,
                                            "token": console.token(Role.READER)})
    assert answer.headers["location"] == "/ui/"


def test_a_bad_login_says_why(console: ConsoleHarness) -> None:
    client = console.client()
    csrf = csrf_of(client.get("/ui/login"))
    empty = client.post("/ui/login", data={"csrf": csrf, "token": " "})
    assert empty.status_code == 400 and "token: paste an API token" in empty.text
    csrf = csrf_of(empty)
    wrong = client.post("/ui/login", data={"csrf": csrf, "token": "pst_nope"})
    assert wrong.status_code == 401 and "not a valid API token" in wrong.text
    assert COOKIE not in client.cookies


def test_the_login_form_needs_its_csrf_token(console: ConsoleHarness) -> None:
    client = console.client()
    client.get("/ui/login")
    answer = client.post("/ui/login", data={"csrf": "forged", "token": console.token(
        Role.OPERATOR)})
    assert answer.status_code == 403
    assert "CSRF" in answer.text
    fresh = console.client()  # no login cookie at all
    answer = fresh.post("/ui/login", data={"csrf": "x", "token": "y"})
    assert answer.status_code == 403


def test_a_form_must_be_url_encoded(console: ConsoleHarness) -> None:
    client = console.logged_in(Role.OPERATOR)
    answer = client.post("/ui/failed/act", json={"action": "replay"})
    assert answer.status_code == 400
    assert "application/x-www-form-urlencoded" in answer.text


def test_revoking_the_token_ends_its_sessions(console: ConsoleHarness) -> None:
    client = console.logged_in(Role.READER, "kiosk")
    assert client.get("/ui/").status_code == 200
    assert console.tokens.revoke("kiosk")
    assert client.get("/ui/").status_code == 303


def test_logging_out_needs_the_csrf_token_and_drops_the_cookie(
    console: ConsoleHarness,
) -> None:
    client = console.logged_in(Role.READER)
    page = client.get("/ui/")
    assert client.post("/ui/logout", data={"csrf": ""}).status_code == 403
    answer = client.post("/ui/logout", data={"csrf": csrf_of(page)})
    assert answer.status_code == 303
    assert COOKIE not in client.cookies
    assert client.get("/ui/").status_code == 303


# -- headers ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/ui/login", "/ui/static/console.css", "/ui/nowhere"])
def test_every_response_carries_the_security_headers(
    console: ConsoleHarness, path: str,
) -> None:
    answer = console.client().get(path)
    csp = answer.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert answer.headers["x-content-type-options"] == "nosniff"
    if "static" not in path:
        assert answer.headers["cache-control"] == "no-store"


def test_an_unknown_page_is_a_404_page(console: ConsoleHarness) -> None:
    answer = console.client().get("/ui/nowhere")
    assert answer.status_code == 404
    assert "no such page: /ui/nowhere" in answer.text


# -- the overview ----------------------------------------------------------------------


def test_the_overview_counts_and_links(console: ConsoleHarness) -> None:
    record_id = new_id()
    console.service.handle_message(provision(record_id))
    failed_unknown(console)
    client = console.logged_in(Role.READER)
    page = client.get("/ui/").text
    assert re.search(r'href="/ui/failed">\s*<span class="value">1</span>', page)
    assert re.search(r'href="/ui/failed\?since=1h">\s*<span class="value">1</span>', page)
    assert re.search(r'href="/ui/records\?status=Running">\s*<span class="value">1</span>',
                     page)
    assert "beat heartbeat in the last 1 min" in page  # no beat runs here
    assert "Dataverse mirror (PROVISIONING_DATAVERSE_URL not set)" in page
    assert "Every backend's circuit is closed." in page


def _in_processing(h: ConsoleHarness, minutes_ago: float) -> str:
    """A record written straight into the store, in Processing since ``minutes_ago``."""
    record_id = new_id()
    when = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    record = ProvisioningState(id=record_id, name="Stuck", status=StatusReason.PROCESSING,
                               created_on=when, modified_on=when, version=2)
    keys = Keys("test")
    h.redis.rpush(keys.record(record_id), pack_record(record))
    for key in keys.index_keys(record):
        h.redis.sadd(key, record_id)
    return record_id


def test_the_overview_counts_records_stuck_in_processing(console: ConsoleHarness) -> None:
    _in_processing(console, 30)  # past the 5 min of PROVISIONING_STUCK_AFTER_SECONDS
    _in_processing(console, 1)
    page = console.logged_in(Role.READER).get("/ui/").text
    assert re.search(r'<span class="value">1</span><span class="label">stuck in Processing '
                     r'\(no change for 5 min; 2 in Processing\)', page)


def test_past_many_in_processing_the_overview_does_not_read_them(
    console: ConsoleHarness, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("worker.console.overview.STUCK_SCAN", 1)
    _in_processing(console, 30)
    _in_processing(console, 30)
    page = console.logged_in(Role.READER).get("/ui/").text
    assert re.search(r'<span class="value">2</span><span class="label">in Processing '
                     r'\(too many to check', page)


def test_the_mirror_page_shows_the_status_facts(console: ConsoleHarness) -> None:
    page = console.logged_in(Role.READER).get("/ui/mirror")
    assert page.status_code == 200
    assert "off (PROVISIONING_DATAVERSE_URL is not set)" in page.text
    assert "never" in page.text


# -- records ---------------------------------------------------------------------------


def test_records_filter_search_and_page(console: ConsoleHarness) -> None:
    ids = sorted(new_id() for _ in range(55))
    for index, record_id in enumerate(ids):
        console.service.handle_message(provision(record_id, name=f"Fabrikam {index}"))
    client = console.logged_in(Role.READER)
    first = client.get("/ui/records?status=Running&kind=whatsapp")
    assert first.status_code == 200
    assert first.text.count('<tr>\n  <td><a href="/ui/records/') == 50
    link = re.search(r'rel="next" href="([^"]+)"', first.text)
    assert link is not None
    second = client.get(link.group(1).replace("&amp;", "&"))
    assert second.text.count('<td><a href="/ui/records/') == 5
    by_id = client.get(f"/ui/records?q={ids[3]}")
    assert by_id.text.count('<td><a href="/ui/records/') == 1
    by_name = client.get("/ui/records?q=fabrikam 1")
    assert by_name.text.count('<td><a href="/ui/records/') == 11  # 1, 10..19
    nothing = client.get(f"/ui/records?q={new_id()}")
    assert "No record matches." in nothing.text


@pytest.mark.parametrize(("query", "field"), [("status=Lost", "status"), ("kind=fax", "kind"),
                                              ("after=nope", "after")])
def test_a_bad_records_filter_is_a_400_naming_it(console: ConsoleHarness, query: str,
                                                  field: str) -> None:
    answer = console.logged_in(Role.READER).get(f"/ui/records?{query}")
    assert answer.status_code == 400
    assert f"{field}: must be" in answer.text


def test_a_record_page_shows_columns_machines_history_and_failed_entries(
    console: ConsoleHarness,
) -> None:
    record_id = new_id()
    console.service.handle_message(provision(record_id, name="Contoso <b>"))
    console.service.handle_message(event("gatekeeper.reported", record_id,
                                         {"status": "Bogus", "reason": "x"}))
    client = console.logged_in(Role.READER)
    page = client.get(f"/ui/records/{record_id}").text
    assert "Contoso &lt;b&gt;" in page and "<b>" not in page
    assert page.count('<g class="state current">') == 3
    assert "msdyn_provisioningresponse" in page and "versionnumber" in page
    assert "provisioned" in page and "Idempotency-Key" in page
    assert "UTC" in page and "ago)" in page
    assert 'href="/ui/failed/' in page  # the invalid gatekeeper report failed
    assert client.get(f"/ui/records/{new_id()}").status_code == 404
    assert client.get("/ui/records/not-a-uuid").status_code == 400


def test_the_machine_svg_marks_the_current_state() -> None:
    svg = str(machine_svg(LIFECYCLE_MACHINE, StatusReason.ERROR, "Lifecycle"))
    assert svg.count("state current") == 1
    assert 'aria-label="Lifecycle state machine; current state: Error"' in svg
    assert "retry" in svg and "marker-end" in svg
    none = str(machine_svg(LIFECYCLE_MACHINE, None, "Lifecycle"))
    assert "state current" not in none and "no state (invalid pair)" in none


# -- failed tasks ----------------------------------------------------------------------


def test_an_operator_replays_the_confirmed_snapshot_audited_under_the_token_name(
    console: ConsoleHarness,
) -> None:
    record_id = new_id()
    entry = failed_unknown(console, record_id)
    console.service.handle_message(provision(record_id))
    other = failed_unknown(console)
    client = console.logged_in(Role.OPERATOR, "ana")
    listing = client.get("/ui/failed")
    assert 'id="select-all"' in listing.text
    csrf = csrf_of(listing)
    confirm = client.post("/ui/failed/confirm", data={
        "csrf": csrf, "action": "replay", "id": [entry, "gone00000000"]})
    assert confirm.status_code == 200
    assert "Replay 1 entry" in confirm.text and "gone00000000" in confirm.text
    assert other not in confirm.text
    done = client.post("/ui/failed/act", data={"csrf": csrf, "action": "replay",
                                               "id": entry,
                                               "operator": "mallory"})
    assert done.status_code == 200
    assert "Replayed 1 of 1" in done.text and "sent deprovision.requested" in done.text
    shown = console.service.store.load(record_id)
    assert shown is not None and shown.status is StatusReason.DEPROVISIONED
    audit = client.get("/ui/audit").text
    assert "<strong>ana</strong>" in audit and "mallory" not in audit


def test_a_discard_needs_a_reason_and_is_audited(console: ConsoleHarness) -> None:
    entry = failed_unknown(console)
    client = console.logged_in(Role.OPERATOR, "ana")
    csrf = csrf_of(client.get("/ui/failed"))
    refused = client.post("/ui/failed/act", data={"csrf": csrf, "action": "discard",
                                                  "id": entry, "reason": "  "})
    assert refused.status_code == 400
    assert "reason: a discard needs a reason" in refused.text
    assert console.service.failed.get(entry) is not None
    done = client.post("/ui/failed/act", data={"csrf": csrf, "action": "discard",
                                               "id": entry, "reason": "typo in the test"})
    assert "Discarded 1 of 1" in done.text
    assert console.service.failed.get(entry) is None
    [line] = console.service.failed.audit()
    assert (line["operator"], line["action"], line["reason"]) == (
        "ana", "discard", "typo in the test")


def test_a_reader_sees_no_controls_and_a_forged_post_is_refused(
    console: ConsoleHarness,
) -> None:
    entry = failed_unknown(console)
    client = console.logged_in(Role.READER, "rita")
    listing = client.get("/ui/failed")
    assert entry in listing.text
    assert "Replay selected" not in listing.text and 'type="checkbox"' not in listing.text
    detail = client.get(f"/ui/failed/{entry}")
    assert "Replay…" not in detail.text and "Traceback" in detail.text
    csrf = csrf_of(detail)  # the logout form's token: the session's
    for path in ("/ui/failed/confirm", "/ui/failed/act"):
        answer = client.post(path, data={"csrf": csrf, "action": "discard", "id": entry,
                                         "reason": "x"})
        assert answer.status_code == 403
        assert "rita is a reader; this needs the operator role" in answer.text
    assert console.service.failed.get(entry) is not None


def test_a_post_without_the_csrf_token_is_refused(console: ConsoleHarness) -> None:
    entry = failed_unknown(console)
    client = console.logged_in(Role.OPERATOR)
    for data in ({}, {"csrf": "forged"}):
        answer = client.post("/ui/failed/act", data={**data, "action": "discard",
                                                      "id": entry, "reason": "x"})
        assert answer.status_code == 403
        assert "CSRF" in answer.text
    nobody = console.client()
    assert nobody.post("/ui/failed/act", data={"csrf": "x"}).status_code == 403
    assert console.service.failed.get(entry) is not None


@pytest.mark.parametrize(("data", "why"), [
    ({"action": "explode", "id": "x"}, "action: must be replay or discard"),
    ({"action": "replay"}, "select at least one entry"),
    ({"action": "replay", "id": [f"e{i}" for i in range(1001)]}, "at most 1000"),
])
def test_a_bad_action_form_says_why(console: ConsoleHarness, data: dict[str, Any],
                                    why: str) -> None:
    client = console.logged_in(Role.OPERATOR)
    csrf = csrf_of(client.get("/ui/"))
    answer = client.post("/ui/failed/confirm", data={"csrf": csrf, **data})
    assert answer.status_code == 400
    assert why in answer.text


def test_the_failed_filters_are_the_clis(console: ConsoleHarness) -> None:
    entry = failed_unknown(console)
    client = console.logged_in(Role.READER)
    assert entry in client.get("/ui/failed?exception=UnknownRecord&since=1h").text
    assert entry not in client.get("/ui/failed?exception=Other").text
    bad = client.get("/ui/failed?since=yesterday&record=x")
    assert bad.status_code == 400
    assert "since: not a duration" in bad.text and "record: must be a UUID" in bad.text
    assert client.get("/ui/failed/000000000000").status_code == 404


# -- rendering -------------------------------------------------------------------------


def test_times_are_utc_with_the_zone_and_relative() -> None:
    now = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    shown = str(moment("2026-12-07T11:56:00Z", now))
    assert "2026-12-07 11:56:00 UTC" in shown and "(4 min ago)" in shown
    assert "(in 2 h)" in str(moment(now + timedelta(hours=2, minutes=5), now))
    assert str(moment(None)) == "—" and str(moment("not a time")) == "not a time"
    assert "UTC" in str(moment(time.time()))
    assert ago(5) == "5 s ago" and ago(90000) == "1 d ago"
    assert duration(None) == "—" and duration(300) == "5 min"


def test_a_one_time_login_link_works_once(console: ConsoleHarness) -> None:
    code = OneTimeLogins(console.redis, Keys("test")).issue("demo", Role.OPERATOR)
    assert not any(code in key for key in console.redis.keys("*"))  # only its hash is kept
    client = console.client()
    first = client.get(f"/ui/login/once?code={code}")
    assert first.status_code == 303 and first.headers["location"] == "/ui/"
    assert "demo" in client.get("/ui/").text
    again = console.client().get(f"/ui/login/once?code={code}")
    assert again.status_code == 401 and "used already or has expired" in again.text
    assert console.client().get("/ui/login/once?code=" + "x" * 300).status_code == 401
    assert console.client().get("/ui/login/once").status_code == 401


def test_past_many_failed_entries_a_record_page_links_instead_of_matching(
    console: ConsoleHarness, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("worker.console.records.FAILED_SCAN", 0)
    record_id = new_id()
    console.service.handle_message(provision(record_id))
    failed_unknown(console)
    page = console.logged_in(Role.READER).get(f"/ui/records/{record_id}").text
    assert f'href="/ui/failed?record={record_id}"' in page
    assert "more than 0 entries are stored" in page


def _with_mirror(**settings: Any) -> ConsoleHarness:
    return ConsoleHarness(settings=Settings(
        key_prefix="test", dataverse_url="https://contoso.crm.dynamics.com", **settings))


def test_the_mirror_page_shows_the_last_error_and_the_overview_its_lag() -> None:
    console = _with_mirror(dataverse_tenant_id="t", dataverse_client_id="c",
                           dataverse_client_secret="s")
    console.redis.hset(Keys("test").dataverse_status, mapping={
        "last_success_at": "2026-12-07T10:00:00Z",
        "last_error_at": "2026-12-07T11:00:00Z",
        "last_error": '{"code": "0x80040220", "status": 403, "kind": "permanent", '
                      '"message": "no privilege", "op": "upsert", "record_id": "r1"}'})
    client = console.logged_in(Role.READER)
    page = client.get("/ui/mirror").text
    assert "on, to <code>https://contoso.crm.dynamics.com</code>" in page
    assert "0x80040220" in page and "(HTTP 403)" in page and "no privilege" in page
    assert "2026-12-07 11:00:00 UTC" in page
    overview = client.get("/ui/").text
    assert "Dataverse mirror lag, 0 waiting; last error 0x80040220" in overview


def test_a_misconfigured_mirror_is_named_on_its_page() -> None:
    page = _with_mirror().logged_in(Role.READER).get("/ui/mirror").text
    assert "PROVISIONING_DATAVERSE_TENANT_ID: is required" in page
