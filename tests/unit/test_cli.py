"""The console script: outputs, JSON shapes and exit codes of SPEC §5."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.factories import new_id, run_cli_on
from tests.factories import provision as provision_of
from worker.cli import console as cli
from worker.service import Service

FORMATTED = "@OData.Community.Display.V1.FormattedValue"


@pytest.fixture
def run(memory_service: Service, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> Any:
    run_cli_on(monkeypatch, memory_service)

    def invoke(*argv: str) -> tuple[int, str, str]:
        try:
            code = cli.main(list(argv))
        except SystemExit as exc:  # argparse usage errors
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


def write_events(path: Path, *events: Any) -> str:
    path.write_text("".join((e if isinstance(e, str) else json.dumps(e)) + "\n"
                            for e in events), encoding="utf-8")
    return str(path)




def provision(record_id: str, **data: Any) -> dict[str, Any]:
    """A voice channel with a phone number, so that a calling test may be requested;
    ``data`` replaces fields of the event's data."""
    event = provision_of(record_id, kind="voice", links={"msdyn_phonenumberid": new_id()},
                         source="cli-test")
    event["data"].update(data)
    return event


def test_submit_accepts_good_lines_and_names_each_bad_one(run: Any, tmp_path: Path,
                                                          memory_service: Service) -> None:
    good = str(uuid.uuid4())
    bad = provision(str(uuid.uuid4()))
    bad["data"]["channel"]["kind"] = "fax"
    del bad["source"]
    path = write_events(tmp_path / "events.jsonl", provision(good), bad, "{not json", "")
    code, out, err = run("submit", path)
    assert code == 1
    assert out.strip() == "accepted 1, refused 2"
    assert err.splitlines() == [
        "line 2: source: is required",
        "line 2: data.channel.kind: must be one of facebook, line, teams, whatsapp, voice, "
        "phonenumber",
        "line 3: not valid JSON (Expecting property name enclosed in double quotes at "
        "column 2)",
    ]
    assert memory_service.store.inbox_size(good) == 1


def test_submit_refuses_a_line_that_is_not_utf8_or_nests_too_deep_by_its_number(
    run: Any, tmp_path: Path, memory_service: Service,
) -> None:
    good = str(uuid.uuid4())
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join([
        json.dumps(provision(good)).encode(), b'{"id": "\xff\xfe"}',
        b"[" * 100_000 + b"]" * 100_000, b""]))
    code, out, err = run("submit", str(path))
    assert code == 1
    assert out.strip() == "accepted 1, refused 2"
    assert err.splitlines() == ["line 2: not UTF-8 (byte 9)",
                                "line 3: not valid JSON (nested too deep)"]
    assert memory_service.store.inbox_size(good) == 1


def test_submit_of_a_missing_file_is_a_usage_error(run: Any, tmp_path: Path) -> None:
    code, _, err = run("submit", str(tmp_path / "nope.jsonl"))
    assert code == 2
    assert "no such file" in err


def test_show_rejects_an_id_that_is_not_a_uuid(run: Any) -> None:
    code, _, err = run("show", "42")
    assert code == 2
    assert "not a UUID" in err


def test_show_of_an_unknown_record_exits_1_with_one_line(run: Any) -> None:
    record_id = str(uuid.uuid4())
    code, out, err = run("show", record_id)
    assert code == 1
    assert out == ""
    assert err == f"provisioning: record {record_id} not found\n"


def test_show_json_is_the_dataverse_shape(run: Any, memory_service: Service) -> None:
    record_id = str(uuid.uuid4())
    memory_service.handle_message(provision(record_id))
    code, out, _ = run("show", record_id, "--json")
    assert code == 0
    row = json.loads(out)
    assert row["@odata.etag"] == 'W/"3"'
    assert row["msdyn_ocprovisioningstateid"] == record_id
    assert row["statuscode"] == 192350003
    assert row[f"statuscode{FORMATTED}"] == "Running"
    assert row["statecode"] == 0
    assert row["msdyn_gatekeeperstatus"] == 715240000
    assert row[f"msdyn_gatekeeperstatusreason{FORMATTED}"] == "Running"
    assert row["versionnumber"] == 3
    assert sum(1 for key in row if key.startswith("_") and key.endswith("_value")) == 8


def test_list_filters_by_status_and_kind(run: Any, memory_service: Service) -> None:
    running = str(uuid.uuid4())
    memory_service.handle_message(provision(running))
    code, out, _ = run("list", "--status", "running", "--kind", "voice", "--json")
    assert code == 0
    assert [r["msdyn_ocprovisioningstateid"] for r in json.loads(out)] == [running]
    code, out, _ = run("list", "--status", "Error", "--json")
    assert json.loads(out) == []
    code, _, err = run("list", "--status", "Sleeping")
    assert code == 2
    assert "not a status reason" in err


def test_history_json_lists_entries_oldest_first(run: Any, memory_service: Service) -> None:
    record_id = str(uuid.uuid4())
    memory_service.handle_message(provision(record_id))
    code, out, _ = run("history", record_id, "--json")
    assert code == 0
    entries = json.loads(out)
    assert [e["trigger"] for e in entries] == ["create", "provision", "provisioned"]
    assert set(entries[0]) >= {"version", "event_id", "event_type", "trigger", "outcome",
                               "reason", "from", "to", "at", "task_id"}
    assert entries[0]["from"] is None
    assert entries[2]["to"]["statuscode"] == 192350003
    code, out, _ = run("history", record_id)
    assert "provisioned" in out


def test_failed_list_json_has_the_spec_fields(run: Any, memory_service: Service) -> None:
    memory_service.handle_message({"specversion": "1.0", "id": "bad-1", "type": "nope"})
    code, out, _ = run("failed", "list", "--json")
    assert code == 0
    [entry] = json.loads(out)
    assert set(entry) >= {"id", "task", "event_id", "event_type", "record_id", "exception",
                          "message", "attempts", "first_failed_at", "last_failed_at"}
    code, out, _ = run("failed", "show", entry["id"])
    assert code == 0
    assert "traceback:" in out
    code, _, err = run("failed", "show", "doesnotexist")
    assert code == 1
    assert err.count("\n") == 1


def test_diagram_prints_mermaid(run: Any) -> None:
    code, out, _ = run("diagram")
    assert code == 0
    assert "mermaid" in out


def test_an_unreachable_store_is_one_line_naming_it_without_its_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    from worker import bootstrap

    monkeypatch.setenv("PROVISIONING_REDIS_URL", "redis://:s3cret@127.0.0.1:1/0")
    bootstrap.reset()
    try:
        code = cli.main(["list"])
    finally:
        bootstrap.reset()
    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    assert err.startswith("provisioning: the record store at redis://:***@127.0.0.1:1/0 failed:")
    assert err.count("\n") == 1
    assert "s3cret" not in err


# -- what a newcomer meets first (issue 16) -------------------------------------------------


def test_submit_json_gives_each_problem_as_line_path_and_reason(run: Any, tmp_path: Path) -> None:
    bad = provision(str(uuid.uuid4()))
    del bad["source"]
    path = write_events(tmp_path / "events.jsonl", provision(str(uuid.uuid4())), bad, "{,")
    code, out, _ = run("submit", path, "--json")
    assert code == 1
    report = json.loads(out)
    assert (report["accepted"], report["refused"]) == (1, 2)
    assert report["problems"] == [
        {"line": 2, "path": "source", "reason": "is required"},
        {"line": 3, "path": "",
         "reason": "not valid JSON (Expecting property name enclosed in double quotes at "
                   "column 2)"}]


def test_submit_streams_the_file_in_batches_keeping_line_order(
    run: Any, tmp_path: Path, memory_service: Service, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker.cli import submit

    monkeypatch.setattr(submit, "BATCH_LINES", 3)
    batches: list[int] = []
    real = submit.submit_events

    def counting(service: Any, items: Any) -> Any:
        batches.append(len(items))
        return real(service, items)

    monkeypatch.setattr(submit, "submit_events", counting)
    ids = [str(uuid.uuid4()) for _ in range(7)]
    lines: list[Any] = [provision(i) for i in ids]
    lines[1] = "nope"
    lines[5] = "[1"
    code, out, err = run("submit", write_events(tmp_path / "e.jsonl", *lines))
    assert batches == [2, 2, 1]  # 3 lines per batch, a bad line refused before validation
    assert out.strip() == "accepted 5, refused 2"
    assert [line.split(":")[0] for line in err.splitlines()] == ["line 2", "line 6"]
    assert code == 1
    assert sum(memory_service.store.inbox_size(i) for i in ids) == 5


def test_history_and_failed_list_print_full_times_with_their_zone(
    run: Any, memory_service: Service,
) -> None:
    record_id = str(uuid.uuid4())
    memory_service.handle_message(provision(record_id))
    memory_service.handle_message({"specversion": "1.0", "id": "bad-1", "type": "nope"})
    _, out, _ = run("history", record_id)
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z"
    assert all(re.search(rf"^\s+v\d+  {stamp}  ", line) for line in out.splitlines()), out
    _, out, _ = run("failed", "list")
    [row] = out.splitlines()[1:]
    assert re.search(rf"^\w+  {stamp} ", row), row
    _, out, _ = run("show", record_id)
    assert re.search(rf"^modified\s+{stamp}$", out, re.MULTILINE), out


def test_show_of_a_record_deleted_by_a_cascade_points_at_its_history(
    run: Any, memory_service: Service,
) -> None:
    record_id, account = str(uuid.uuid4()), str(uuid.uuid4())
    event = provision(record_id, channel={"kind": "whatsapp", "id": account}, links={})
    memory_service.handle_message(event)
    memory_service.handle_message({
        "specversion": "1.0", "id": str(uuid.uuid4()), "source": "cli-test",
        "type": "parent.deleted",
        "data": {"table": "msdyn_ocwhatsappchannelaccount", "id": account}})
    code, out, err = run("show", record_id)
    assert (code, out) == (1, "")
    assert err.startswith(f"provisioning: record {record_id} not found: it was deleted at ")
    assert err.rstrip().endswith(f"`provisioning history {record_id}` still shows its changes")
    assert err.count("\n") == 1


def test_replay_and_discard_json_report_each_entry(run: Any, memory_service: Service) -> None:
    memory_service.handle_message(
        {"specversion": "1.0", "id": "evt-x", "source": "cli-test",
         "type": "deprovision.requested", "subject": str(uuid.uuid4())})
    [entry] = memory_service.failed.all()
    code, out, _ = run("failed", "replay", entry.id, "--dry-run", "--json")
    assert code == 0
    [result] = json.loads(out)
    assert (result["entry"], result["ok"], result["dry_run"]) == (entry.id, True, True)
    code, out, _ = run("failed", "discard", "--all", "--yes", "--reason", "test", "--json")
    assert code == 0
    assert json.loads(out) == [{"entry": entry.id, "ok": True, "dry_run": False,
                                "result": "discarded"}]
    code, out, _ = run("failed", "discard", "--all", "--yes", "--reason", "test", "--json")
    assert (code, json.loads(out)) == (0, [])
