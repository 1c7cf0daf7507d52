"""``provisioning failed replay|discard``: acting on failed-task entries.

Bulk actions work on a snapshot of ids taken first (see ``worker.ops.operate``); every
replay and discard is audited as ``cli:<operator>``. A replay goes through the normal
path: a ``provisioning.handle_event`` message sent through the Celery app.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from typing import Any

from worker import bootstrap
from worker.app import app, process_service
from worker.cli.common import FAILED, OK, CommandFailed, UsageError, confirm, operator_name
from worker.cli.failed import filter_of
from worker.cli.logs import quiet_logs
from worker.cli.progress import Progress
from worker.dispatch import Dispatch
from worker.ops.operate import act, choose
from worker.service import Service


def _service() -> Service:
    return process_service()


def _send_replay(event: Mapping[str, Any], entry_id: str) -> None:
    """A ``provisioning.handle_event`` message with the replayed entry's id."""
    Dispatch(app, bootstrap.current_settings().batch_records).replay(event, entry_id)


def cmd_act(args: argparse.Namespace) -> int:
    """replay / discard: named entries, or --all matching the filters (a snapshot); the
    rule is ``worker.ops.operate``'s (the HTTP API's too), audited as ``cli:<operator>``."""
    quiet_logs()
    verb = args.failed_command
    if bool(args.entries) == bool(args.all):
        raise UsageError(f"failed {verb}: name ENTRY ids or give --all (with filters)")
    reason = getattr(args, "reason", "")
    if verb == "discard" and not reason.strip():
        raise UsageError("failed discard: --reason must not be blank (it is audited)")
    service = _service()
    chosen, missing = (choose(service.failed, flt=filter_of(args)) if args.all
                       else choose(service.failed, ids=args.entries))
    for entry_id in missing:
        print(f"provisioning: failed-task entry {entry_id} not found", file=sys.stderr)
    if not chosen:
        print("[]" if args.json else f"nothing to {verb}")
        return FAILED if missing else OK
    if args.all and not (args.yes or args.dry_run) and not confirm(
            f"{verb} {len(chosen)} failed-task entr{'y' if len(chosen) == 1 else 'ies'}?"):
        raise CommandFailed(f"{verb} cancelled; nothing was changed (use --yes to skip asking)")
    results: list[dict[str, Any]] = []
    progress = Progress(f"{verb}: entries", len(chosen)) if args.all else None

    def show(entry_id: str, done: bool, result: str) -> None:
        if args.json:  # printed at the end, one array
            results.append({"entry": entry_id, "ok": done, "dry_run": args.dry_run,
                            "result": result})
        else:
            if progress is not None:
                progress.done()
            print(f"{entry_id}  {result}", flush=progress is not None)
        if progress is not None:
            progress.advance()

    report = act(service, verb, chosen, operator=f"cli:{operator_name(args.operator)}",
                 send_event=_send_replay, reason=reason, dry_run=args.dry_run,
                 on_result=show)
    if progress is not None:
        progress.done()
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False))
    return FAILED if (missing or report.refused) else OK
