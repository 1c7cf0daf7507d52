"""Garbage at every way in (SPEC §3): ``provisioning submit FILE``, ``worker.submit`` from
Python, and raw Celery messages to ``provisioning.handle_event`` on real worker processes.

Bad input never crashes a worker and is never lost: each invalid input is refused at
submit with its line number and the field path of the problem, or kept in the failed-task
store with the same reasons; the valid events mixed in are applied, once each.
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import kombu
import pytest

import worker
from tests.faults.conftest import Figures, Scale
from tests.faults.garbage import (
    EITHER,
    INVALID,
    UNKNOWN,
    VALID,
    Garbage,
    Input,
    deeply_nested_lines,
    lone_surrogates,
    non_utf8_lines,
    not_json_lines,
)
from tests.integration.workers import Cluster, running_cluster
from worker.emulators import Emulator
from worker.store.failed import FailedTask
from worker.task_names import HANDLE_EVENT

pytestmark = pytest.mark.integration

INPUTS = 10_000  # at ci scale; times scale.factor for long
SHARES = {"cli": 0.4, "python": 0.3, "celery": 0.3}
PATH = re.compile(r"^([A-Za-z0-9_.]+): ")
CLI_LINES = 10_000  # lines per file: one `provisioning submit` stays well within its timeout
LINE = re.compile(r"^line (\d+): (.*)$")


@pytest.fixture
def cluster(redis_url: str, tmp_path: Path, request: pytest.FixtureRequest,
            ) -> Iterator[Cluster]:
    with running_cluster(redis_url, tmp_path, request, emulator=Emulator()) as running:
        yield running


# -- bookkeeping -----------------------------------------------------------------------


@dataclass
class Ledger:
    """What happened to every input, by entry; ``fate`` is filled in at the end."""

    entries: dict[str, list[Input]] = field(default_factory=dict)
    problems: dict[tuple[str, int], list[str]] = field(default_factory=dict)  # refusals
    task_ids: dict[str, tuple[str, Input]] = field(default_factory=dict)  # celery task id
    misreported: list[str] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    either_kept: int = 0  # valid-or-refused inputs a worker refused into the failed store

    def all(self) -> Iterator[tuple[str, Input]]:
        for entry, inputs in self.entries.items():
            for item in inputs:
                yield entry, item


def paths_of(problems: Iterable[str]) -> set[str]:
    found = set()
    for text in problems:
        match = PATH.match(text)
        found.add(match.group(1) if match else "")
    return found


def names(item: Input, problems: Sequence[str]) -> bool:
    """Whether the refusal names the problem the input was built with."""
    if not problems:
        return False
    if item.path == "":
        return True
    return any(p == item.path or p.startswith(item.path + ".") for p in paths_of(problems))


def renumber(inputs: Sequence[Input], rng: random.Random) -> list[Input]:
    shuffled = list(inputs)
    rng.shuffle(shuffled)
    return [replace(item, number=n) for n, item in enumerate(shuffled, start=1)]


# -- the three ways in -----------------------------------------------------------------


def through_cli(cluster: Cluster, inputs: list[Input], ledger: Ledger, workdir: Path) -> None:
    """``provisioning submit FILE``, one file per CLI_LINES inputs (numbered 1, 2, ...)."""
    ledger.entries["cli"] = inputs
    for first in range(0, len(inputs), CLI_LINES):
        lines = inputs[first:first + CLI_LINES]
        path = workdir / f"garbage-{first // CLI_LINES}.jsonl"
        path.write_bytes(b"\n".join(item.jsonl() for item in lines) + b"\n")
        result = cluster.provisioning("submit", str(path))
        if (result.returncode not in (0, 1) or "Traceback" in result.stderr
                or "provisioning: unexpected" in result.stderr):
            ledger.crashes.append(f"submit exited {result.returncode}: {result.stderr[-500:]}")
        for text in result.stderr.splitlines():
            match = LINE.match(text)
            if match is None:
                ledger.misreported.append(f"cli: a line without its line number: {text[:200]}")
                continue
            if not 1 <= int(match.group(1)) <= len(lines):
                ledger.misreported.append(f"cli: a line number out of the file: {text[:200]}")
                continue
            number = lines[int(match.group(1)) - 1].number
            ledger.problems.setdefault(("cli", number), []).append(match.group(2))


def through_python(cluster: Cluster, inputs: list[Input], ledger: Ledger) -> None:
    """``worker.submit(event)`` for the first few, then lists of up to 500."""
    alone = 20
    chunks = [inputs[i:i + 1] for i in range(min(alone, len(inputs)))]
    chunks += [inputs[i:i + 500] for i in range(alone, len(inputs), 500)]
    for chunk in chunks:
        try:
            if len(chunk) == 1 and isinstance(chunk[0].value, dict):
                report = worker.submit(chunk[0].value, service=cluster.service)
            else:
                report = worker.submit([item.value for item in chunk], service=cluster.service)
        except Exception as exc:  # noqa: BLE001 - counted: submit must never raise on input
            ledger.crashes.append(f"worker.submit raised {type(exc).__name__}: {exc}")
            continue
        for refusal in report.refused:
            item = chunk[refusal.line - 1]
            ledger.problems[("python", item.number)] = [str(p) for p in refusal.problems]
    ledger.entries["python"] = inputs


def argument_shapes(garbage: Garbage, start: int) -> list[tuple[Input, list[Any], dict[str, Any]]]:
    """Messages to handle_event whose arguments are not exactly [event]."""
    shapes: list[tuple[list[Any], dict[str, Any]]] = [
        ([], {}), (["EVENT", "extra"], {}), ([], {"event": "EVENT"}),
        (["EVENT"], {"priority": 1}), (["EVENT", "EVENT"], {}), ([None, None, None], {}),
    ]
    out = []
    for offset, (args, kwargs) in enumerate(shapes * 3):
        event = garbage.provision()
        out.append((Input(start + offset, "wrong arguments", INVALID, event, "args"),
                    [event if a == "EVENT" else a for a in args],
                    {k: event if v == "EVENT" else v for k, v in kwargs.items()}))
    return out


RAW_BODIES: list[tuple[str, bytes, str, bool]] = [
    # (label, body, content type, with the task header)
    ("body not json", b"{not json", "application/json", True),
    ("body not utf-8", b'[["\xff\xfe"], {}, {}]', "application/json", True),
    ("body truncated", b'[[{"specversion": "1.0"', "application/json", True),
    ("no task header", b'{"hello": "world"}', "application/json", False),
    ("content type text", b"provision please", "text/plain", True),
    ("body nested too deep", b"[" * 100_000 + b"]" * 100_000, "application/json", True),
]


def through_celery(cluster: Cluster, inputs: list[Input], ledger: Ledger, garbage: Garbage,
                   prefix: str, *, extras: bool = True) -> int:
    """Send every input as a raw message; plus wrong argument shapes and undecodable
    bodies. Returns how many extra inputs that added."""
    sent: list[Input] = []
    for item in inputs:
        task_id = f"{prefix}-task-{item.number}"
        cluster.send(item.value, task_id=task_id)
        ledger.task_ids[task_id] = ("celery", item)
        sent.append(item)
    if not extras:
        ledger.entries["celery"] = sent
        return 0
    start = len(inputs) + 1
    for item, args, kwargs in argument_shapes(garbage, start):
        task_id = f"{prefix}-task-{item.number}"
        cluster.client.send_task(HANDLE_EVENT, args=args, kwargs=kwargs, task_id=task_id)
        ledger.task_ids[task_id] = ("celery", item)
        sent.append(item)
    start += len(sent) - len(inputs)
    with kombu.Connection(cluster.redis_url) as connection:
        producer = connection.Producer()
        for offset, (label, body, content_type, with_task) in enumerate(RAW_BODIES * 2):
            item = Input(start + offset, label, INVALID, None, "")
            task_id = f"{prefix}-task-{item.number}"
            headers = {"id": task_id, "lang": "py", "argsrepr": "", "kwargsrepr": ""}
            if with_task:
                headers["task"] = HANDLE_EVENT
            producer.publish(body, exchange="", routing_key="celery", serializer=None,
                             content_type=content_type, content_encoding="utf-8",
                             headers=headers)
            ledger.task_ids[task_id] = ("celery", item)
            sent.append(item)
    ledger.entries["celery"] = sent
    return len(sent) - len(inputs)


# -- accounting ------------------------------------------------------------------------


def failed_owner(entry: FailedTask, ledger: Ledger, by_event: dict[str, tuple[str, Input]],
                 ) -> tuple[str, Input] | None:
    body = entry.body
    for task_id in (body.get("id"), (body.get("headers") or {}).get("id")):
        if isinstance(task_id, str) and task_id in ledger.task_ids:
            return ledger.task_ids[task_id]
    if entry.event_id is not None:
        return by_event.get(entry.event_id)
    return None


def applied_counts(cluster: Cluster, items: Iterable[Input]) -> dict[str, int]:
    """For each event id: how many entries of its own its record holds (``create`` apart),
    duplicates included."""
    by_record: dict[str, list[str]] = defaultdict(list)
    for item in items:
        if item.subject and item.event_id:
            by_record[item.subject].append(item.event_id)
    counts: dict[str, int] = {}
    for record_id, event_ids in by_record.items():
        seen = Counter(e.event_id for e in cluster.history(record_id)
                       if e.trigger != "create" and not e.event_type.startswith("step."))
        for event_id in event_ids:
            counts[event_id] = seen[event_id]
    return counts


def expected_failed(ledger: Ledger) -> int:
    """Failed-task entries due: every invalid input that reached a worker, every event for
    a record that does not exist (whatever its way in)."""
    return ledger.either_kept + sum(
        1 for entry, item in ledger.all()
        if item.expect == UNKNOWN or (entry == "celery" and item.expect == INVALID))


def settle(cluster: Cluster, ledger: Ledger, timeout: float) -> None:
    due = expected_failed(ledger)
    valid = [item for _, item in ledger.all() if item.expect == VALID]

    def done() -> bool:
        if cluster.failed_count() < due or not cluster.settled():
            return False
        counts = applied_counts(cluster, valid)
        return all(counts.get(item.event_id or "", 0) for item in valid)

    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        if not all(p.alive() for p in cluster.processes):
            break
        time.sleep(0.5)


def account(cluster: Cluster, ledger: Ledger, figures: Figures) -> dict[str, Counter[str]]:
    """Fill ``figures`` from the store, the refusals and the failed-task entries."""
    by_event = {item.event_id: (entry, item) for entry, item in ledger.all() if item.event_id}
    owned: dict[tuple[str, int], list[FailedTask]] = defaultdict(list)
    strangers = []
    for entry in cluster.failed():
        owner = failed_owner(entry, ledger, by_event)
        if owner is None:
            strangers.append(entry)
        else:
            owned[(owner[0], owner[1].number)].append(entry)
    applied = applied_counts(cluster, (i for _, i in ledger.all() if i.expect in (VALID, EITHER)))
    fates: dict[str, Counter[str]] = defaultdict(Counter)
    for entry_name, item in ledger.all():
        key = (entry_name, item.number)
        refused = ledger.problems.get(key, [])
        kept = owned.get(key, [])
        times = applied.get(item.event_id or "", 0)
        figures.accepted += 1
        if len(kept) > 1:
            ledger.misreported.append(f"{entry_name} #{item.number}: {len(kept)} entries")
        if item.expect == VALID:
            fate = "applied" if times == 1 and not refused and not kept else (
                "doubled" if times > 1 else "lost")
        elif item.expect == UNKNOWN:
            ok = len(kept) == 1 and kept[0].exception == "UnknownRecord"
            fate = "kept" if ok and not refused else "lost"
        elif item.expect == EITHER:
            fate = "doubled" if times > 1 else (
                "applied" if times == 1 else "refused" if refused or kept else "lost")
            ledger.either_kept += fate == "refused" and bool(kept)
        else:
            reasons = refused or [r for e in kept for r in e.reasons]
            fate = "refused" if (refused or kept) and not times else (
                "applied although invalid" if times else "lost")
            if fate == "refused" and not names(item, reasons):
                ledger.misreported.append(
                    f"{entry_name} #{item.number} ({item.label}): expected {item.path!r} "
                    f"among {sorted(paths_of(reasons))}: {reasons[:3]}")
        fates[entry_name][fate] += 1
        if fate in ("applied", "kept", "refused"):
            figures.applied += 1
        elif fate == "doubled":
            figures.doubled += 1
        else:
            figures.lost += 1
    if strangers:
        ledger.misreported.append(f"{len(strangers)} failed-task entries of no input, e.g. "
                                  f"{strangers[0].to_json()}")
    return fates


def crashes(cluster: Cluster, children: dict[int, set[int]], ledger: Ledger) -> int:
    count = len(ledger.crashes)
    for process in cluster.processes:
        if not process.alive():
            count += 1
            ledger.crashes.append(f"{process.name} died with {process.process.returncode}")
            continue
        lost_children = children[process.pid] - process.pool_children()
        count += len(lost_children)
        lines = process.error_lines()
        count += len(lines)
        ledger.crashes.extend(lines[:5])
        if lost_children:
            ledger.crashes.append(f"{process.name}: pool children {lost_children} gone")
    return count


def report(figures: Figures, fates: dict[str, Counter[str]], ledger: Ledger) -> str:
    lines = [figures.line()]
    for entry, counter in fates.items():
        lines.append(f"  {entry}: {dict(counter)}")
    lines.extend(f"  misreported: {text}" for text in ledger.misreported[:15])
    lines.extend(f"  crash: {text}" for text in ledger.crashes[:15])
    return "\n".join(lines)


# -- the scenarios ---------------------------------------------------------------------


def run(cluster: Cluster, figures: Figures, ledger: Ledger, *, cli: list[Input],
        python: list[Input], celery: list[Input], garbage: Garbage, workdir: Path,
        timeout: float, prefix: str, extras: bool = True) -> dict[str, Counter[str]]:
    """Send the inputs through the three ways in to one worker, wait, account."""
    started = time.monotonic()
    process = cluster.start_worker(concurrency=2)
    cluster.wait_for(lambda: len(process.pool_children()) == 2, "the worker's pool")
    children = {process.pid: process.pool_children()}
    through_celery(cluster, celery, ledger, garbage, prefix=prefix, extras=extras)
    through_python(cluster, python, ledger)
    through_cli(cluster, cli, ledger, workdir)
    figures.notes["send_s"] = round(time.monotonic() - started, 1)
    settle(cluster, ledger, timeout=timeout)
    fates = account(cluster, ledger, figures)
    figures.crashes = crashes(cluster, children, ledger)
    figures.notes.update({entry: len(inputs) for entry, inputs in ledger.entries.items()})
    figures.notes["valid"] = sum(1 for _, i in ledger.all() if i.expect == VALID)
    figures.notes["failed_entries"] = cluster.failed_count()
    return fates


def check(cluster: Cluster, figures: Figures, ledger: Ledger,
          fates: dict[str, Counter[str]]) -> None:
    text = report(figures, fates, ledger)
    assert not ledger.misreported, text
    # Every invalid input that reached a worker, and every event for a record that does
    # not exist, has exactly one failed-task entry; nothing else has one.
    assert cluster.failed_count() == expected_failed(ledger), text
    assert (figures.lost, figures.doubled, figures.crashes) == (0, 0, 0), text
    figures.check()


# ci scale takes about 30 s; long (100,000 inputs) about 10 minutes on two shared cores.
@pytest.mark.timeout(1800)
def test_ten_thousand_malformed_events_at_every_way_in_are_refused_or_kept(
    cluster: Cluster, figures: Figures, scale: Scale, tmp_path: Path,
) -> None:
    """CLI 40 %, worker.submit 30 %, raw Celery messages 30 % (all of them sent to the one
    worker); 5 % of each are valid provisions, 1 % valid events for unknown records."""
    figures.scenario = "inputs: malformed events"
    started = time.monotonic()
    total = INPUTS * scale.factor
    rng = random.Random(20261127)
    garbage = Garbage(seed=6, prefix=f"garbage-{scale.name}")
    cli_count = int(total * SHARES["cli"])
    python_count = int(total * SHARES["python"])
    not_json = cli_count // 20
    cli = renumber(garbage.make(cli_count - not_json) + not_json_lines(rng, not_json, 1), rng)
    python = garbage.make(python_count)
    extra = len(argument_shapes(garbage, 0)) + len(RAW_BODIES) * 2
    celery = garbage.make(total - cli_count - python_count - extra)
    figures.notes["generate_s"] = round(time.monotonic() - started, 1)
    ledger = Ledger()

    fates = run(cluster, figures, ledger, cli=cli, python=python, celery=celery,
                garbage=garbage, workdir=tmp_path, timeout=120.0 * scale.factor,
                prefix=f"{scale.name}-{rng.getrandbits(32):08x}")
    figures.notes["seconds"] = round(time.monotonic() - started, 1)

    assert figures.accepted == total, figures.line()
    check(cluster, figures, ledger, fates)


# -- what the garbage run found (fixed: worker/cli.py, worker/keys.py, statemachine/events.py) --


def test_a_line_that_is_not_utf8_or_nests_too_deep_is_refused_by_its_number(
    cluster: Cluster, figures: Figures, tmp_path: Path,
) -> None:
    figures.scenario = "inputs: non-UTF-8, deep lines"
    rng = random.Random(8)
    garbage = Garbage(seed=8, prefix="bytes", pool_size=20)
    valid = garbage.make(20, valid_share=1.0)
    cli = renumber(valid + non_utf8_lines(rng, 10, 1) + deeply_nested_lines(2, 1), rng)
    ledger = Ledger()

    fates = run(cluster, figures, ledger, cli=cli, python=[], celery=[], garbage=garbage,
                workdir=tmp_path, timeout=8.0, prefix="bytes", extras=False)

    check(cluster, figures, ledger, fates)


def test_an_event_with_a_lone_surrogate_is_refused_or_applied_at_every_way_in(
    cluster: Cluster, figures: Figures, tmp_path: Path,
) -> None:
    figures.scenario = "inputs: lone surrogates"
    garbage = Garbage(seed=9, prefix="surrogate", pool_size=20)

    def mix() -> list[Input]:
        return renumber(garbage.make(10, valid_share=1.0) + lone_surrogates(garbage, 6, 1),
                        random.Random(9))

    ledger = Ledger()
    fates = run(cluster, figures, ledger, cli=mix(), python=mix(), celery=mix(),
                garbage=garbage, workdir=tmp_path, timeout=8.0, prefix="surrogate",
                extras=False)

    check(cluster, figures, ledger, fates)
