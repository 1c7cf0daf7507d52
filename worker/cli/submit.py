"""``provisioning submit FILE``: validate JSON Lines of events and queue the valid ones.

Every line is decoded on its own, so one line that is not UTF-8 or not JSON is refused by
its number instead of ending the whole submit. The file is streamed in batches, so a file
of any length is submitted in constant memory (with a counter on a terminal's stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from typing import Any, BinaryIO

from statemachine import Problem
from worker.app import process_service
from worker.cli.common import FAILED, OK
from worker.cli.logs import quiet_logs
from worker.cli.progress import Progress
from worker.service import Refusal, Service, submit_events


def _service() -> Service:
    return process_service()


def _lines(path: str) -> Iterator[tuple[int, bytes]]:
    """The file's lines as bytes: each is decoded on its own, so one line that is not
    UTF-8 is refused by its number instead of ending the whole submit."""
    stream: BinaryIO
    if path == "-":
        yield from enumerate(sys.stdin.buffer, start=1)
        return
    with open(path, "rb") as stream:
        yield from enumerate(stream, start=1)


BATCH_LINES = 1000  # lines validated and accepted per round trip: memory stays constant


def _decoded(number: int, line: bytes) -> tuple[int, Any] | Refusal:
    """One line's event, or its refusal when it is not UTF-8 or not JSON."""
    try:
        return number, json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return Refusal(number, (Problem("", f"not UTF-8 (byte {exc.start + 1})"),))
    except json.JSONDecodeError as exc:
        return Refusal(number, (Problem("", f"not valid JSON ({exc.msg} at "
                                            f"column {exc.colno})"),))
    except RecursionError:
        return Refusal(number, (Problem("", "not valid JSON (nested too deep)"),))


def _batches(path: str) -> Iterator[tuple[list[tuple[int, Any]], list[Refusal], int]]:
    """The file in batches of BATCH_LINES lines: (decoded events, refusals, lines read)."""
    items: list[tuple[int, Any]] = []
    refused: list[Refusal] = []
    read = 0
    for number, line in _lines(path):
        read += 1
        if line.strip():
            decoded = _decoded(number, line)
            if isinstance(decoded, Refusal):
                refused.append(decoded)
            else:
                items.append(decoded)
        if read == BATCH_LINES:
            yield items, refused, read
            items, refused, read = [], [], 0
    if read:
        yield items, refused, read


def cmd_submit(args: argparse.Namespace) -> int:
    """Stream the file in batches: each batch is validated, accepted and kicked before the
    next is read, each problem printed as its batch is done (in line order). Only
    ``--json`` keeps the touched record ids and the problems for its report."""
    quiet_logs()
    service = _service()
    accepted = duplicates = refused_lines = 0
    touched: dict[str, None] = {}
    problems: list[dict[str, Any]] = []
    progress = Progress("submit: lines read")
    try:
        for items, bad_lines, read in _batches(args.file):
            report = submit_events(service, items)
            accepted += report.accepted
            duplicates += report.duplicates
            refused = sorted(bad_lines + report.refused, key=lambda r: r.line)
            refused_lines += len(refused)
            progress.done()
            for refusal in refused:
                for text in refusal.lines():
                    print(text, file=sys.stderr)
            if args.json:
                touched.update(dict.fromkeys(report.record_ids))
                problems.extend({"line": r.line, "path": p.path, "reason": p.reason}
                                for r in refused for p in r.problems)
            progress.advance(read)
    finally:
        progress.done()
    if args.json:
        print(json.dumps({
            "accepted": accepted, "duplicates": duplicates, "refused": refused_lines,
            "records": list(touched), "problems": problems,
        }, indent=2))
    else:
        print(f"accepted {accepted}, refused {refused_lines}"
              + (f", already accepted {duplicates}" if duplicates else ""))
    return FAILED if refused_lines else OK
