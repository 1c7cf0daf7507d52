"""The operator's failed-task workflow: list, replay, discard, audit; and beat's sweeps."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from statemachine import BackendStep, StatusReason, format_time
from tests.factories import deprovision, new_id, run_cli_on
from tests.factories import provision as provision_of
from worker.cli import console as cli
from worker.cli import operate
from worker.cli.common import parse_moment
from worker.cli.progress import Progress
from worker.cli.render import format_failed
from worker.emulators import Emulator
from worker.ops.operate import act, choose
from worker.service import Service
from worker.store.failed import FailedTask
from worker.store.failed_filter import FailedFilter, select


def provision(record_id: str, channel: str | None = None) -> dict[str, Any]:
    return provision_of(record_id, channel, kind="teams")


@pytest.fixture
def run(memory_service: Service, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> Any:
    """Run the CLI on the in-memory service; a replayed message is handled at once, as a
    worker would."""
    run_cli_on(monkeypatch, memory_service)

    def invoke(*argv: str) -> tuple[int, str, str]:
        try:
            code = cli.main(list(argv))
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


def failed_ids(service: Service) -> list[str]:
    return [entry.id for entry in service.failed.all()]


def test_replay_of_an_event_for_a_record_that_now_exists_applies_it_once(
    run: Any, memory_service: Service
) -> None:
    record_id = new_id()
    early = deprovision(record_id)
    memory_service.handle_message(early)
    [entry] = memory_service.failed.all()
    memory_service.handle_message(provision(record_id))
    code, out, _ = run("failed", "replay", entry.id, "--operator", "ana")
    assert code == 0
    assert out.startswith(f"{entry.id}  sent deprovision.requested")
    record = memory_service.store.load(record_id)
    assert record is not None
    assert record.status is StatusReason.DEPROVISIONED
    assert failed_ids(memory_service) == []  # resolved once processed
    actions = [(line["operator"], line["action"]) for line in memory_service.failed.audit()]
    assert actions == [("cli:ana", "replay"), ("worker", "resolved")]
    # Replaying the same event again (as a replay does: past the accepted-event dedupe)
    # changes nothing: it was applied.
    version = record.version
    memory_service.store.forget_accepted(record_id, early["id"])
    memory_service.handle_message(early, replay_of="again")
    record = memory_service.store.load(record_id)
    assert record is not None
    assert record.version == version
    assert memory_service.store.history(record_id)[-1].outcome.value == "duplicate"


def test_replay_of_an_event_still_invalid_keeps_it_and_says_why(
    run: Any, memory_service: Service
) -> None:
    memory_service.handle_message({"specversion": "1.0", "id": "x", "type": "nope"})
    [entry] = memory_service.failed.all()
    code, out, _ = run("failed", "replay", entry.id)
    assert code == 1
    assert "still invalid: source: is required" in out
    assert failed_ids(memory_service) == [entry.id]


def test_bulk_replay_acts_on_a_snapshot_and_leaves_other_entries_alone(
    run: Any, memory_service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    unknown = [new_id(), new_id()]
    for record_id in unknown:
        memory_service.handle_message(deprovision(record_id))
    memory_service.handle_message({"specversion": "1.0", "id": "bad", "type": "nope"})
    invalid = [e.id for e in memory_service.failed.all() if e.exception == "InvalidEvent"]
    for record_id in unknown:
        memory_service.handle_message(provision(record_id))
    arrived: list[str] = []

    def send(event: Any, entry_id: str) -> None:
        # An entry that arrives during the bulk action must not be picked up by it.
        if not arrived:
            late = deprovision(new_id())
            memory_service.handle_message(late)
            arrived.append(late["id"])
        memory_service.handle_message(dict(event), replay_of=entry_id)

    monkeypatch.setattr(operate, "_send_replay", send)
    code, out, _ = run("failed", "replay", "--all", "--exception", "UnknownRecord", "--yes")
    assert code == 0
    assert out.count("sent deprovision.requested") == 2
    left = memory_service.failed.all()
    assert sorted(e.event_id or "" for e in left) == sorted([arrived[0], "bad"])
    assert invalid[0] in [e.id for e in left]


def test_bulk_action_without_yes_off_a_terminal_changes_nothing(
    run: Any, memory_service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory_service.handle_message(deprovision(new_id()))
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    code, _, err = run("failed", "discard", "--all", "--reason", "cleanup")
    assert code == 2
    assert "needs --yes" in err
    assert len(memory_service.failed.all()) == 1
    assert memory_service.failed.audit() == []


def test_discard_needs_a_reason_and_is_audited(run: Any, memory_service: Service) -> None:
    memory_service.handle_message(deprovision(new_id()))
    [entry] = memory_service.failed.all()
    code, _, err = run("failed", "discard", entry.id)
    assert code == 2
    assert "--reason" in err
    assert failed_ids(memory_service) == [entry.id]
    code, out, _ = run("failed", "discard", entry.id, "--reason", "test channel, never real",
                       "--operator", "ana")
    assert code == 0
    assert failed_ids(memory_service) == []
    code, out, _ = run("failed", "audit", "--json")
    [line] = json.loads(out)
    assert line["operator"] == "cli:ana"
    assert line["action"] == "discard"
    assert line["reason"] == "test channel, never real"
    assert line["entry"] == entry.id


def test_a_blank_discard_reason_is_a_usage_error(run: Any, memory_service: Service) -> None:
    memory_service.handle_message(deprovision(new_id()))
    [entry] = memory_service.failed.all()
    code, _, err = run("failed", "discard", entry.id, "--reason", "   ")
    assert code == 2
    assert "--reason must not be blank" in err
    assert failed_ids(memory_service) == [entry.id]
    assert memory_service.failed.audit() == []


def test_the_shared_rule_chooses_named_ids_once_and_reports_the_missing(
    memory_service: Service,
) -> None:
    """worker.ops.operate's choose and act: the rule the CLI and the HTTP API follow."""
    for _ in range(2):
        memory_service.handle_message(deprovision(new_id()))
    first, second = memory_service.failed.all()
    chosen, missing = choose(memory_service.failed, ids=[second.id, "gone", second.id,
                                                         first.id])
    assert [entry.id for entry in chosen] == [second.id, first.id]
    assert missing == ["gone"]
    everything, none_missing = choose(memory_service.failed, flt=FailedFilter())
    assert ({entry.id for entry in everything}, none_missing) == ({first.id, second.id}, [])
    for wrong in ({}, {"ids": [first.id], "flt": FailedFilter()}):
        with pytest.raises(ValueError, match="not both and not neither"):
            choose(memory_service.failed, **wrong)
    with pytest.raises(ValueError, match="needs a reason"):
        act(memory_service, "discard", chosen, operator="api", send_event=lambda *_: None)
    assert len(memory_service.failed.all()) == 2  # refused before anything was done
    seen: list[tuple[str, bool, str]] = []
    report = act(memory_service, "discard", chosen, operator="api", reason="noise",
                 send_event=lambda *_: None, on_result=lambda *args: seen.append(args))
    assert report.done == report.snapshot == [second.id, first.id]
    assert seen == [(second.id, True, "discarded"), (first.id, True, "discarded")]
    assert [line["operator"] for line in memory_service.failed.audit()] == ["api", "api"]


def test_dry_run_says_what_it_would_do_and_changes_nothing(
    run: Any, memory_service: Service
) -> None:
    memory_service.handle_message(deprovision(new_id()))
    code, out, _ = run("failed", "discard", "--all", "--reason", "x", "--dry-run")
    assert code == 0
    assert "would discard" in out
    assert len(memory_service.failed.all()) == 1
    assert memory_service.failed.audit() == []


def test_unknown_entry_ids_are_reported_and_exit_1(run: Any) -> None:
    code, _, err = run("failed", "replay", "nosuchentry")
    assert code == 1
    assert "nosuchentry not found" in err


def test_replaying_a_record_that_used_up_its_retries_brings_it_back(
    run: Any, memory_service: Service, emulator: Emulator
) -> None:
    record_id, channel = new_id(), new_id()
    emulator.fail_permanently(channel, BackendStep.PROVISION_CHANNEL, 400)
    memory_service.handle_message(provision(record_id, channel))
    for _ in range(3):
        memory_service.sweep_retries()
        memory_service.drain(record_id)
    [entry] = [e for e in memory_service.failed.all() if e.exception == "RetriesExhausted"]
    emulator.clear_scripts(channel)  # the operator fixed the backend
    code, out, _ = run("failed", "replay", entry.id)
    assert code == 0, out
    memory_service.drain(record_id)
    record = memory_service.store.load(record_id)
    assert record is not None
    assert record.status is StatusReason.RUNNING
    assert entry.id not in failed_ids(memory_service)


def test_list_filters_by_age(run: Any, memory_service: Service) -> None:
    memory_service.handle_message(deprovision(new_id()))
    code, out, _ = run("failed", "list", "--since", "1h", "--json")
    assert len(json.loads(out)) == 1
    code, out, _ = run("failed", "list", "--older-than", "1h", "--json")
    assert json.loads(out) == []
    code, _, err = run("failed", "list", "--since", "yesterday")
    assert code == 2
    assert "not a duration" in err


def test_filters_match_every_condition() -> None:
    now = datetime(2026, 11, 27, 12, tzinfo=UTC)
    entry = FailedTask(id="a", task="provisioning.handle_event", event_id="e",
                       event_type="deprovision.requested", record_id="r",
                       exception="UnknownRecord", message="m",
                       last_failed_at=format_time(now - timedelta(hours=2)))
    assert select([entry], FailedFilter(exception="UnknownRecord",
                                        since=parse_moment("3h", now))) == [entry]
    assert select([entry], FailedFilter(since=parse_moment("1h", now))) == []
    assert select([entry], FailedFilter(older_than=parse_moment("1h", now))) == [entry]
    assert select([entry], FailedFilter(task="provisioning.retry")) == []


def test_two_beats_sweeping_at_once_queue_each_retry_once(
    memory_service: Service, emulator: Emulator
) -> None:
    record_id, channel = new_id(), new_id()
    emulator.script(channel, BackendStep.PROVISION_CHANNEL, [503] * 4)
    memory_service.handle_message(provision(record_id, channel))
    first, second = memory_service.sweep_retries(), memory_service.sweep_retries()
    assert (first, second) == ([record_id], [])
    assert memory_service.store.inbox_size(record_id) == 1


def test_age_out_drops_old_entries_then_the_oldest_past_the_cap(
    memory_service: Service,
) -> None:
    now = datetime.now(UTC)
    for age_days, name in ((30, "ancient"), (3, "old"), (2, "middle"), (1, "new")):
        stamp = format_time(now - timedelta(days=age_days))
        memory_service.failed.record(FailedTask(
            id=name, task="t", event_id=name, event_type=None, record_id=None,
            exception="X", message="m", first_failed_at=stamp, last_failed_at=stamp))
    memory_service.settings = type(memory_service.settings)(
        failed_retention_seconds=14 * 86400, failed_max_entries=2)
    assert memory_service.expire_failed() == ["ancient", "old"]
    assert failed_ids(memory_service) == ["middle", "new"]
    reasons = [line["reason"] for line in memory_service.failed.audit()]
    assert reasons == ["past retention", "over the size cap"]


def test_stuck_sweep_kicks_a_processing_record_nobody_holds(
    memory_service: Service, kicks: Any
) -> None:
    record_id = new_id()
    memory_service.accept(memory_service_event(provision(record_id)))
    owner = "crashed-worker"
    store = memory_service.store
    assert store.acquire_lease(record_id, owner, 30)
    item = store.head(record_id)
    assert item is not None
    crash_after_commit(memory_service, item.event_id, item.payload, owner)
    store.release_lease(record_id, owner, hand_over=True)
    assert memory_service.sweep_stuck() == []  # not old enough yet
    later = datetime.now(UTC) + timedelta(hours=1)
    memory_service.now = lambda: later
    assert memory_service.sweep_stuck() == [record_id]
    assert kicks.records[-1] == record_id


def memory_service_event(raw: dict[str, Any]) -> Any:
    from statemachine import parse_event

    return parse_event(raw)


def crash_after_commit(service: Service, event_id: str, payload: str, owner: str) -> None:
    """What a worker killed between a commit and its step leaves: the event applied and
    popped, the record Processing, no backend call made."""
    from statemachine import apply, dedupe_key
    from worker.envelope import Envelope
    from worker.store.protocol import Commit, CommitStatus

    command = Envelope.decode(payload).command()
    outcome = apply(None, command, now=datetime.now(UTC))
    assert outcome.record is not None
    status = service.store.commit(Commit(
        record_id=outcome.record.id, expected_version=0, before=None, after=outcome.record,
        entries=outcome.entries, dedupe_key=dedupe_key(command), pop_event_id=event_id,
        lease_owner=owner))
    assert status is CommitStatus.OK


class Terminal(io.StringIO):
    """A stream that says it is a terminal (where progress counters are drawn)."""

    def isatty(self) -> bool:
        return True


def test_a_bulk_discard_counts_entries_on_a_terminal_and_prints_results_apart(
    run: Any, memory_service: Service, monkeypatch: pytest.MonkeyPatch,
) -> None:
    for _ in range(3):
        memory_service.handle_message(deprovision(new_id()))
    terminal = Terminal()
    monkeypatch.setattr(operate, "Progress",
                        lambda what, total: Progress(what, total, stream=terminal, every=0))
    code, out, err = run("failed", "discard", "--all", "--yes", "--reason", "cleanup")
    assert code == 0
    assert out.count("  discarded\n") == 3
    assert "\r" not in out + err
    frames = [f.strip() for f in terminal.getvalue().split("\r") if f.strip()]
    assert frames == ["discard: entries: 1/3", "discard: entries: 2/3", "discard: entries: 3/3"]


def test_failed_list_columns_line_up_under_their_headers_with_full_times() -> None:
    entry = FailedTask(id="447de79ac467", task="provisioning.handle_event", event_id="e",
                       event_type="deprovision.requested", record_id=new_id(),
                       exception="UnknownRecord", message="record does not exist",
                       last_failed_at="2026-12-07T11:39:35.386295Z")
    header, row = format_failed([entry]).splitlines()
    tries = header.index("TRIES")
    assert row[tries + len("TRIES") - 1] == "1"  # right-aligned under its header
    for column, value in (("LAST FAILED", entry.last_failed_at),
                          ("EXCEPTION", "UnknownRecord"), ("RECORD", str(entry.record_id))):
        assert row[header.index(column):].startswith(value), column
