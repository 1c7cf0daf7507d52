"""CloudEvents extension attributes (SPEC §3): validated, kept as they arrived through
storage, ``failed show`` and replay."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from statemachine import InvalidEvent, parse_event
from statemachine.attributes import is_traceparent
from tests.factories import deprovision, new_id, provision, run_cli_on
from worker.cli import console as cli
from worker.logs import configure
from worker.service import Service, submit_events
from worker.settings import Settings

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
EXTENSIONS = {"traceparent": TRACEPARENT, "tracestate": "congo=t61rcWkgMzE",
              "partition": 7, "sampled": True, "tenant": "contoso",
              "datacontenttype": "application/json"}


def problems(raw: Any) -> dict[str, str]:
    with pytest.raises(InvalidEvent) as caught:
        parse_event(raw)
    return {problem.path: problem.reason for problem in caught.value.problems}


def test_extension_attributes_round_trip_in_order_and_null_means_absent() -> None:
    raw = {**provision(new_id()), **EXTENSIONS, "gone": None}
    event = parse_event(raw)
    assert event.extensions == EXTENSIONS
    out = event.to_cloudevent()
    assert {k: v for k, v in out.items() if k in EXTENSIONS} == EXTENSIONS
    assert "gone" not in out
    assert parse_event(out) == event


@pytest.mark.parametrize(("name", "value", "reason"), [
    ("Tenant", "x", "lowercase letters a-z and digits 0-9"),
    ("ten-ant", "x", "lowercase letters a-z and digits 0-9"),
    ("a" * 21, "x", "at most 20 characters (CloudEvents), not 21"),
    ("weight", 1.5, "must be a string, an integer or a boolean, not a number"),
    ("tags", ["a"], "must be a string, an integer or a boolean, not an array"),
    ("meta", {"a": 1}, "must be a string, an integer or a boolean, not an object"),
    ("big", 2**31, "must be an integer from -2147483648 to 2147483647"),
    ("note", "x" * 2049, "must be at most 2048 characters, not 2049"),
    ("note", "bad \ud800", "must be Unicode text"),
    ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
     "must be a W3C traceparent"),
    ("traceparent", 5, "must be a string"),
    ("data_base64", "AAAA", "data is JSON, in data"),
])
def test_a_bad_extension_attribute_is_refused_naming_it(name: str, value: Any,
                                                         reason: str) -> None:
    raw = {**provision(new_id()), name: value}
    found = problems(raw)
    path = name if len(name) <= 60 else name[:57] + "..."
    assert reason in found[path], found


def test_tracestate_needs_a_traceparent_and_the_count_is_capped() -> None:
    assert "goes with a traceparent" in problems(
        {**provision(new_id()), "tracestate": "a=b"})["tracestate"]
    many = {f"x{number}": number for number in range(33)}
    assert "at most 32 extension attributes, not 33" in problems(
        {**provision(new_id()), **many})[""]


@pytest.mark.parametrize(("value", "valid"), [
    (TRACEPARENT, True),
    ("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-later", True),
    ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-later", False),
    ("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", False),
    ("00-00000000000000000000000000000000-b7ad6b7169203331-01", False),
    ("00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", False),
    ("00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01", False),
])
def test_traceparent_follows_w3c_trace_context(value: str, valid: bool) -> None:
    assert is_traceparent(value) is valid


@pytest.fixture
def logs_restored() -> Iterator[None]:
    """The CLI quietens logs to warnings; put them back for the tests after this one."""
    yield
    configure(Settings())


@pytest.mark.usefixtures("logs_restored")
def test_extensions_survive_submit_store_failed_show_and_replay(
    memory_service: Service, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    record_id = new_id()
    early = {**deprovision(record_id), **EXTENSIONS}
    # Submitted: stored in the inbox with its extension attributes.
    report = submit_events(memory_service, [(1, early)], kick=lambda _: None)
    assert report.accepted == 1
    head = memory_service.store.head(record_id)
    assert head is not None
    stored = json.loads(head.payload)["event"]
    assert {k: stored[k] for k in EXTENSIONS} == EXTENSIONS
    # Drained: no such record, so it goes to the failed-task store, as it was.
    memory_service.drain(record_id)
    [entry] = memory_service.failed.all()
    sent: list[Mapping[str, Any]] = []
    run_cli_on(monkeypatch, memory_service,
               send_replay=lambda raw, entry_id: sent.append(raw))
    assert cli.main(["failed", "show", entry.id, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert {k: shown["body"]["args"][0][k] for k in EXTENSIONS} == EXTENSIONS
    # Replayed: the message sent carries them too, and the worker accepts them again.
    memory_service.handle_message(provision(record_id), drain=True)
    assert cli.main(["failed", "replay", entry.id]) == 0
    [replayed] = sent
    assert {k: replayed[k] for k in EXTENSIONS} == EXTENSIONS
    memory_service.handle_message(dict(replayed), replay_of=entry.id)
    record = memory_service.store.load(record_id)
    assert record is not None
    assert memory_service.store.history(record_id)[-1].event_id == early["id"]
