"""``provisioning submit FILE``: validate JSON Lines of events and queue the valid ones.

Every line is decoded on its own, so one line that is not UTF-8 or not JSON is refused by
its number instead of ending the whole submit.
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


def cmd_submit(args: argparse.Namespace) -> int:
    quiet_logs()
    items: list[tuple[int, Any]] = []
    bad_json: list[Refusal] = []
    for number, line in _lines(args.file):
        if not line.strip():
            continue
        try:
            items.append((number, json.loads(line.decode("utf-8"))))
        except UnicodeDecodeError as exc:
            bad_json.append(Refusal(number, (Problem("", f"not UTF-8 (byte {exc.start + 1})"),)))
        except json.JSONDecodeError as exc:
            bad_json.append(Refusal(number, (Problem("", f"not valid JSON ({exc.msg} at "
                                                         f"column {exc.colno})"),)))
        except RecursionError:
            bad_json.append(Refusal(number, (Problem("", "not valid JSON (nested too "
                                                         "deep)"),)))
    report = submit_events(_service(), items)
    report.refused = sorted(bad_json + report.refused, key=lambda r: r.line)
    for refusal in report.refused:
        for text in refusal.lines():
            print(text, file=sys.stderr)
    if args.json:
        print(json.dumps({
            "accepted": report.accepted, "duplicates": report.duplicates,
            "refused": len(report.refused), "records": report.record_ids,
            "problems": [text for r in report.refused for text in r.lines()],
        }, indent=2))
    else:
        print(f"accepted {report.accepted}, refused {len(report.refused)}"
              + (f", already accepted {report.duplicates}" if report.duplicates else ""))
    return OK if report.ok else FAILED


