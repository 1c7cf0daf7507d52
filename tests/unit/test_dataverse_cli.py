"""``provisioning dataverse status|import|run|skip``: outputs and exit codes."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from statemachine import PRIMARY_KEY
from tests.factories import event, new_id
from tests.unit.test_dataverse_support import Rig, dataverse_cli, make_rig, provision
from worker.cli import dataverse as commands
from worker.cli.progress import Progress
from worker.emulators import Fault


class Terminal(io.StringIO):
    """A stream that says it is a terminal (where progress counters are drawn)."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def rig() -> Rig:
    return make_rig()


@pytest.fixture
def run(rig: Rig, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> Any:
    return dataverse_cli(rig, monkeypatch, capsys)


def test_status_of_a_mirror_up_to_date(run: Any, rig: Rig) -> None:
    rig.submit(provision(new_id()))
    rig.run()
    code, out, err = run("status")
    assert (code, err) == (0, "")
    assert "outbox        empty (Dataverse is up to date)" in out
    assert "sent          2 entries; conflicts reconciled: 0" in out


def test_status_of_a_failing_mirror_exits_1_with_one_line(run: Any, rig: Rig) -> None:
    rig.submit(provision(new_id()))
    rig.dataverse.start_outage(503)
    rig.run()
    code, out, err = run("status", "--json")
    assert code == 1
    report = json.loads(out)
    assert report["outbox"]["entries"] == 2
    assert report["last_error"]["status"] == 503
    assert report["pause_reason"] == "unavailable"
    line = err.splitlines()[-1]
    assert line.startswith("provisioning: dataverse: failing since ")
    assert "0x80040216" in line


def test_status_with_the_mirror_off(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(commands, "_mirror", lambda: None)
    code, out, _ = run("status")
    assert code == 0
    assert out.startswith("mirror        off")


def test_import_prints_counts_and_names_each_refused_row(run: Any, rig: Rig) -> None:
    good, bad = new_id(), new_id()
    rig.dataverse.seed([{PRIMARY_KEY: good, "msdyn_name": "Good"},
                        {PRIMARY_KEY: bad, "msdyn_name": "Bad", "statuscode": 7}])
    code, out, err = run("import", "--page-size", "1")
    assert code == 1
    assert out.strip() == ("imported 1, already known 0, refused 1 (2 rows in 2 pages from "
                           "https://contoso-sandbox.crm4.dynamics.com)")
    assert err.splitlines() == [f"row {bad}: statuscode: is not valid (7 is not a valid "
                                "StatusReason)"]
    assert rig.store.load(good) is not None


def test_import_dry_run_as_json(run: Any, rig: Rig) -> None:
    rig.dataverse.seed([{PRIMARY_KEY: new_id(), "msdyn_name": "Good"}])
    code, out, _ = run("import", "--dry-run", "--json")
    assert code == 0
    assert json.loads(out)["dry_run"] is True
    assert rig.store.list_records() == []


def test_import_when_dataverse_is_down_exits_1_with_one_line(run: Any, rig: Rig) -> None:
    rig.dataverse.start_outage(503)
    code, out, err = run("import")
    assert (code, out) == (1, "")
    assert err.startswith("provisioning: Dataverse HTTP 503 0x80040216:")
    assert len(err.splitlines()) == 1


def test_import_and_run_need_the_mirror_configured(run: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(commands, "_mirror", lambda: None)
    for action in ("import", "run"):
        code, _, err = run(action)
        assert code == 2  # a missing setting is a usage error
        assert err == ("provisioning: dataverse: PROVISIONING_DATAVERSE_URL is not set (the "
                       "mirror is off)\n")


def test_a_page_size_that_is_not_positive_is_a_usage_error(run: Any) -> None:
    code, _, err = run("import", "--page-size", "0")
    assert code == 2
    assert "must be at least 1" in err


def test_run_once_drains_the_outbox(run: Any, rig: Rig) -> None:
    record_id = new_id()
    rig.submit(provision(record_id), event("deprovision.requested", record_id))
    code, out, _ = run("run", "--once")
    assert code == 0
    assert "sent 3, 0 waiting (empty)" in out
    assert rig.store.outbox_size() == 0


def test_run_once_stops_with_exit_1_when_sending_fails(run: Any, rig: Rig) -> None:
    rig.submit(provision(new_id()))
    rig.dataverse.fail_next(Fault(400, "0x80040203", "Invalid argument.", method="POST"))
    code, _, err = run("run", "--once", "--budget", "5")
    assert code == 1
    assert err.splitlines()[-1] == ("provisioning: dataverse: stopped (rejected): Dataverse "
                                    "HTTP 400 0x80040203: Invalid argument.")


def test_skip_needs_a_reason_and_drops_the_head_with_an_audit_line(run: Any, rig: Rig) -> None:
    record_id = new_id()
    rig.submit(provision(record_id))
    code, _, err = run("skip")
    assert code == 2
    assert "--reason" in err
    code, out, _ = run("skip", "--reason", "refused by a plug-in", "--yes",
                       "--operator", "ana")
    assert code == 0
    assert out.startswith(f"dropped create {record_id} v2")
    [line] = rig.service.failed.audit()
    assert (line["operator"], line["action"], line["record_id"]) == (
        "cli:ana", "dataverse-skip", record_id)
    assert line["reason"] == "refused by a plug-in"
    assert rig.store.outbox_size() == 1


def test_skip_asks_first_and_off_a_terminal_needs_yes(run: Any, rig: Rig) -> None:
    rig.submit(provision(new_id()))
    code, _, err = run("skip", "--reason", "x")
    assert code == 2
    assert "needs --yes" in err
    assert rig.store.outbox_size() == 2


def test_skip_on_an_empty_outbox(run: Any) -> None:
    code, out, _ = run("skip", "--reason", "x", "--yes")
    assert (code, out) == (0, "the outbox is empty: nothing to skip\n")


def test_status_with_the_mirror_off_does_not_claim_dataverse_is_up_to_date(
    run: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(commands, "_mirror", lambda: None)
    code, out, _ = run("status")
    assert code == 0
    assert "up to date" not in out
    assert out.splitlines()[1] == "outbox        empty"


def test_run_json_prints_each_run_as_one_json_line(run: Any, rig: Rig) -> None:
    record_id = new_id()
    rig.submit(provision(record_id), event("deprovision.requested", record_id))
    code, out, _ = run("run", "--once", "--json")
    assert code == 0
    [report] = [json.loads(line) for line in out.splitlines()]
    assert (report["sent"], report["remaining"], report["stopped"]) == (3, 0, "empty")
    assert report["at"].endswith("Z")


def test_skip_json_names_what_was_dropped(run: Any, rig: Rig) -> None:
    record_id = new_id()
    rig.submit(provision(record_id))
    code, out, _ = run("skip", "--reason", "refused by a plug-in", "--yes", "--json")
    assert code == 0
    assert json.loads(out)["dropped"] == f"create {record_id} v2"
    run("skip", "--reason", "x", "--yes")  # the record's second entry
    code, out, _ = run("skip", "--reason", "x", "--yes", "--json")
    assert json.loads(out) == {"dropped": None,
                               "result": "the outbox is empty: nothing to skip"}


def test_import_reports_progress_per_page_on_a_terminal(
    run: Any, rig: Rig, monkeypatch: pytest.MonkeyPatch,
) -> None:
    terminal = Terminal()
    monkeypatch.setattr(commands, "Progress",
                        lambda what: Progress(what, stream=terminal, every=0))
    rig.dataverse.seed([{PRIMARY_KEY: new_id(), "msdyn_name": f"Row {n}"} for n in range(3)])
    code, out, err = run("import", "--page-size", "1")
    assert code == 0
    assert "\r" not in out + err  # the counter went to the terminal only
    shown = [part.strip() for part in terminal.getvalue().split("\r") if part.strip()]
    assert shown == ["import: rows read: 1", "import: rows read: 2", "import: rows read: 3"]
    assert terminal.getvalue().endswith("\r")  # cleared before the report
