"""The operator console end to end: a real ``provisioning serve``, a real ``celery worker``
and beat, Redis, and a headless Chromium.

An operator logs in with a token; the overview shows the failed entries; they open the
record's entry, replay it and see the record reach Running on its page; they discard
another with a reason; the audit page lists both under the token's name. A reader sees no
replay control and a forged POST is refused with 403; a POST without the CSRF token is
refused; no page logs a console error or fails to load an asset.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from statemachine import BackendStep
from tests.browser.watch import Watched
from tests.factories import event, new_id, provision
from tests.integration.http_server import serving
from tests.integration.test_http_serve import create_token
from tests.integration.workers import running_cluster
from worker.emulators import Emulator
from worker.emulators.backends_scripts import Answer

DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


def log_in(page: Any, url: str, token: str) -> None:
    page.goto(f"{url}/ui/")
    assert "/ui/login" in page.url  # no session: the login form
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{url}/ui/")


def wait_text(page: Any, selector: str, text: str, timeout: float = 60.0) -> None:
    """Reload until ``selector`` shows ``text`` (the console renders on the server)."""
    deadline = time.monotonic() + timeout
    while True:
        shown = page.locator(selector).inner_text()
        if text in shown:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{selector} still shows {shown!r}, not {text!r}")
        time.sleep(0.5)
        page.reload()


def test_an_operator_replays_and_discards_from_the_browser(
    redis_url: str, tmp_path: Path, request: pytest.FixtureRequest, browser: Any,
    screenshots: Any,
) -> None:
    emulator = Emulator()
    record_id, channel_id, stray = new_id(), new_id(), new_id()
    # Every provision_channel call for this channel fails: in-task tries, then beat's one
    # retry, then the retries are exhausted and a failed-task entry waits for an operator.
    emulator.script(channel_id, BackendStep.PROVISION_CHANNEL, [], then=Answer(503))
    with running_cluster(redis_url, tmp_path, request, emulator=emulator,
                         settings={"PROVISIONING_MAX_RETRIES": "1",
                                   "PROVISIONING_CONSOLE_SECURE_COOKIE": "off"}) as cluster:
        cluster.start_worker()
        cluster.start_beat()
        cluster.submit([provision(record_id, channel_id)])
        cluster.send(event("deprovision.requested", stray))  # no such record: failed at once
        cluster.wait_for(lambda: len(cluster.failed()) == 2 or None, "two failed entries",
                         timeout=60)
        [retry] = [e for e in cluster.failed() if e.record_id == record_id]
        [unknown] = [e for e in cluster.failed() if e.record_id == stray]
        operator = create_token(cluster, "ana", "operator")
        reader = create_token(cluster, "rita", "reader")
        with serving(cluster.env, tmp_path) as api:
            context = browser.new_context(viewport=DESKTOP)
            page = context.new_page()
            watched = Watched(page)
            log_in(page, api.url, operator)

            # The overview: two failed entries, both new in the last hour.
            tile = page.locator("a.tile", has_text="failed-task entries")
            assert tile.locator(".value").inner_text() == "2"
            assert page.locator("a.tile", has_text="failed in the last hour").locator(
                ".value").inner_text() == "2"
            assert "UTC" in page.locator("h1 time").inner_text()
            screenshots(page, "overview")

            # The failed list, then the record's entry.
            tile.click()
            page.wait_for_url(re.compile(r"/ui/failed$"))
            assert page.locator("table.failed tbody tr").count() == 2
            # The package's stylesheet and script are applied: "select all" (console.js)
            # ticks every box, and ticking one back leaves it indeterminate.
            assert page.locator("a.tile").count() == 0
            page.get_by_label("Select every entry shown").check()
            assert page.locator("input[name=id]:checked").count() == 2
            page.get_by_label(f"Select entry {unknown.id}").uncheck()
            assert page.locator("#select-all").evaluate("box => box.indeterminate")
            page.get_by_label(f"Select entry {retry.id}").uncheck()
            assert page.locator("thead th").first.evaluate(
                "cell => getComputedStyle(cell).fontWeight") == "600"
            screenshots(page, "failed")
            page.get_by_role("link", name=retry.id).click()
            page.wait_for_url(re.compile(f"/ui/failed/{retry.id}$"))
            assert "RetriesExhausted" in page.locator("dl.facts").inner_text()

            # The backend works again: replay; the confirmation lists exactly that entry.
            emulator.clear_scripts(channel_id)
            page.get_by_role("button", name="Replay…").click()
            page.wait_for_url(re.compile(r"/ui/failed/confirm$"))
            snapshot = page.locator("table.snapshot tbody tr td:first-child code")
            assert [cell.inner_text() for cell in snapshot.all()] == [retry.id]
            screenshots(page, "confirm")
            page.get_by_role("button", name="Replay 1 entry").click()
            page.wait_for_url(re.compile(r"/ui/failed/act$"))
            assert "Replayed 1 of 1" in page.locator("h1").inner_text()
            assert "retry queued" in page.locator("table.results").inner_text()

            # The record reaches Running, on its page.
            page.goto(f"{api.url}/ui/records/{record_id}")
            wait_text(page, "#record-status", "Running")
            assert page.locator("svg.machine .state.current").count() == 3
            assert "retry" in page.locator("ol.timeline").inner_text()
            screenshots(page, "record")

            # Discard the other one, from the list; a reason is required.
            page.goto(f"{api.url}/ui/failed")
            wait_text(page, "main h1", "1 matching")  # the replayed entry was resolved
            page.get_by_label(f"Select entry {unknown.id}").check()
            page.get_by_role("button", name="Discard selected…").click()
            page.wait_for_url(re.compile(r"/ui/failed/confirm$"))
            assert page.locator("table.snapshot tbody tr").count() == 1
            page.get_by_label("Reason (required; it is audited)").fill(
                "a deprovision for a record that never existed")
            page.get_by_role("button", name="Discard 1 entry").click()
            page.wait_for_url(re.compile(r"/ui/failed/act$"))
            assert "Discarded 1 of 1" in page.locator("h1").inner_text()

            # Both in the audit log, under the token's name.
            page.get_by_role("link", name="Audit", exact=True).click()
            page.wait_for_url(re.compile(r"/ui/audit$"))
            rows = page.locator("table.audit tbody tr")
            actions = [(rows.nth(i).locator("td").nth(1).inner_text(),
                        rows.nth(i).locator("td").nth(2).inner_text())
                       for i in range(rows.count())]
            assert ("ana", "replay") in actions and ("ana", "discard") in actions
            assert "never existed" in page.locator("table.audit").inner_text()
            screenshots(page, "audit")
            page.get_by_role("link", name="Records", exact=True).click()
            page.wait_for_url(re.compile(r"/ui/records$"))
            screenshots(page, "records")
            page.get_by_role("link", name="Dataverse").click()
            page.wait_for_url(re.compile(r"/ui/mirror$"))
            screenshots(page, "mirror")

            # A POST without the session's CSRF token is refused.
            csrf_less = context.request.post(f"{api.url}/ui/failed/act", form={
                "action": "discard", "id": retry.id, "reason": "x"})
            assert csrf_less.status == 403
            assert "CSRF" in csrf_less.text()

            # At 390 px the overview still reads (no horizontal scroll of the page).
            phone = browser.new_context(viewport=PHONE, storage_state=context.storage_state())
            small = phone.new_page()
            small_watch = Watched(small)
            small.goto(f"{api.url}/ui/")
            assert small.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
            screenshots(small, "overview-phone")
            small_watch.assert_clean()
            phone.close()
            watched.assert_clean()
            context.close()

            # A reader sees no replay control, and a forged POST gets 403.
            cluster.send(event("deprovision.requested", new_id()))
            cluster.wait_for(lambda: len(cluster.failed()) == 1 or None, "a new entry")
            [entry] = cluster.failed()
            readers = browser.new_context(viewport=DESKTOP)
            page = readers.new_page()
            watched = Watched(page)
            log_in(page, api.url, reader)
            page.goto(f"{api.url}/ui/failed/{entry.id}")
            assert page.get_by_role("button", name="Replay…").count() == 0
            page.goto(f"{api.url}/ui/failed")
            assert page.locator("table.failed tbody tr").count() == 1
            assert page.get_by_role("button", name="Replay selected…").count() == 0
            assert page.locator("input[type=checkbox]").count() == 0
            csrf = page.locator("form.who input[name=csrf]").get_attribute("value")
            forged = readers.request.post(f"{api.url}/ui/failed/act", form={
                "csrf": csrf, "action": "replay", "id": entry.id})
            assert forged.status == 403
            assert "rita is a reader" in forged.text()
            watched.assert_clean()
            readers.close()
        assert [e.id for e in cluster.failed()] == [entry.id]  # the forged replay did nothing
