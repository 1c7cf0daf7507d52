"""``provisioning show|list|history``: records and their history, read from the store.

Read-only: the store-only wiring (``worker.bootstrap``), no Celery, no httpx.
"""

from __future__ import annotations

import argparse
import json
import sys

from statemachine import HistoryEntry, ProvisioningState, format_time
from worker import bootstrap
from worker.cli.common import OK, CommandFailed
from worker.cli.render import (
    describe_deletion,
    describe_record,
    format_history,
    format_records,
)
from worker.store.redis import RedisStateStore


def _store() -> RedisStateStore:
    store = bootstrap.build_store(bootstrap.current_settings())
    store.ensure_format(stamp=False)  # a v1 store would read as empty: say so
    return store


def _load(record_id: str) -> ProvisioningState:
    store = _store()
    record: ProvisioningState | None = store.load(record_id)
    if record is None:
        history = store.history(record_id)
        if history and history[-1].trigger == "delete":  # SPEC §7: history outlives it
            raise CommandFailed(
                f"record {record_id} not found: it was deleted at "
                f"{format_time(history[-1].at)} ({history[-1].reason}); `provisioning "
                f"history {record_id}` still shows its changes")
        raise CommandFailed(f"record {record_id} not found")
    return record


def cmd_show(args: argparse.Namespace) -> int:
    record = _load(args.record_id)
    if args.json:
        print(json.dumps(record.to_dataverse(), indent=2, ensure_ascii=False))
        return OK
    print(describe_record(record))
    return OK


def cmd_list(args: argparse.Namespace) -> int:
    records = _store().list_records(
        status=args.status, kind=args.kind.value if args.kind else None)
    if args.json:
        print(json.dumps([r.to_dataverse() for r in records], indent=2, ensure_ascii=False))
        return OK
    print(format_records(records) if records else "no records")
    return OK


def cmd_history(args: argparse.Namespace) -> int:
    store = _store()
    entries: list[HistoryEntry] = store.history(args.record_id)
    deletion = store.deletion(args.record_id)
    note = describe_deletion(deletion.deleted_at, deletion.purged_at,
                             bootstrap.current_settings().deleted_retention_seconds)
    if not entries:
        raise CommandFailed(f"record {args.record_id} has no history "
                            f"({note or 'unknown id'})")
    if args.json:
        print(json.dumps([e.to_json() for e in entries], indent=2, ensure_ascii=False))
        if note:  # stdout stays the SPEC §5.2 array
            print(f"provisioning: history: {note}", file=sys.stderr)
        return OK
    print(format_history(entries))
    if note:
        print(note)
    return OK
