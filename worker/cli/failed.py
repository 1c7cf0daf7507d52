"""``provisioning failed list|show|audit``: reading the failed-task store (store-only
wiring; ``replay`` and ``discard`` are ``worker.cli.operate``)."""

from __future__ import annotations

import argparse
import json

from worker import bootstrap
from worker.cli.common import OK, CommandFailed
from worker.cli.render import format_audit, format_failed
from worker.store.failed import FailedStore
from worker.store.failed_filter import FailedFilter, select


def _failed() -> FailedStore:
    return bootstrap.build_failed(bootstrap.current_settings())


def filter_of(args: argparse.Namespace) -> FailedFilter:
    return FailedFilter(event_type=args.event_type, record_id=args.record,
                        exception=args.exception, task=args.task, since=args.since,
                        older_than=args.older_than)


def cmd_failed(args: argparse.Namespace) -> int:
    failed = _failed()
    action = args.failed_command
    if action == "show":
        return _failed_show(failed, args)
    if action == "audit":
        return _failed_audit(failed, args)
    entries = select(failed.all(), filter_of(args))
    if args.json:
        print(json.dumps([e.summary_json() for e in entries], indent=2, ensure_ascii=False))
        return OK
    print(format_failed(entries) if entries else "no failed tasks")
    return OK


def _failed_show(failed: FailedStore, args: argparse.Namespace) -> int:
    entry = failed.get(args.entry)
    if entry is None:
        raise CommandFailed(f"failed-task entry {args.entry} not found")
    if args.json:
        print(json.dumps(entry.to_json(), indent=2, ensure_ascii=False))
        return OK
    for key, value in entry.to_json().items():
        if key in ("traceback", "body", "reasons"):
            continue
        print(f"{key:<16} {value}")
    for reason in entry.reasons:
        print(f"{'reason':<16} {reason}")
    print(f"{'message body':<16} {json.dumps(entry.body, ensure_ascii=False)}")
    print("traceback:\n" + entry.traceback.rstrip())
    return OK


def _failed_audit(failed: FailedStore, args: argparse.Namespace) -> int:
    lines = failed.audit(args.limit)
    if args.json:
        print(json.dumps(lines, indent=2, ensure_ascii=False))
        return OK
    print(format_audit(lines) if lines else "no operator actions yet")
    return OK
