"""``provisioning dataverse status|import|run|skip`` (wired into worker/cli.py).

Exit codes as the rest of the CLI: 0 success; 1 the command ran but something failed or
was refused (a refused row, a failing mirror, Dataverse unreachable); 2 a usage error.
Errors print one line each on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

from statemachine import format_time
from worker.dataverse.importer import Importer
from worker.dataverse.mirror import Mirror
from worker.dataverse.outbox import OutboxEntry
from worker.dataverse.status import format_status, mirror_status
from worker.errors import ConfigurationError

OK, FAILED = 0, 1


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def add_parser(commands: Any) -> None:
    """Add ``dataverse`` and its actions to the CLI's subparsers."""
    dataverse = commands.add_parser(
        "dataverse", help="the mirror to Dataverse: status, import, run, skip",
        description="Mirror the records to a Dataverse organization "
                    "(PROVISIONING_DATAVERSE_URL and its credentials).")
    actions = dataverse.add_subparsers(dest="dataverse_command", required=True,
                                       metavar="ACTION")
    status = actions.add_parser("status", help="outbox lag, last success, last error",
                                description="Exit 1 when entries wait and the last attempt "
                                            "failed.")
    status.add_argument("--json", action="store_true")
    importing = actions.add_parser(
        "import", help="load the organization's existing rows into the store",
        description="Rows whose id the store knows are skipped; refused rows are named on "
                    "stderr (exit 1).")
    importing.add_argument("--page-size", type=_positive_int, metavar="N",
                           help="rows per page (Prefer: odata.maxpagesize; default "
                                "PROVISIONING_DATAVERSE_PAGE_SIZE)")
    importing.add_argument("--dry-run", action="store_true",
                           help="read and check every row, write nothing")
    importing.add_argument("--json", action="store_true")
    run = actions.add_parser("run", help="send the outbox in the foreground (Ctrl-C stops)",
                             description="The consumer beat's provisioning.mirror_outbox "
                                         "runs, in a loop; safe next to it (one lock).")
    run.add_argument("--once", action="store_true",
                     help="stop when the outbox is empty (exit 0) or sending fails (exit 1)")
    run.add_argument("--budget", type=_seconds, metavar="SECONDS",
                     help="seconds per run (default PROVISIONING_DATAVERSE_RUN_BUDGET)")
    skip = actions.add_parser(
        "skip", help="drop the outbox head Dataverse keeps refusing (audited)",
        description="The record's next change re-reads its row and sends every column "
                    "that differs.")
    skip.add_argument("--reason", required=True, metavar="TEXT", help="why (audited)")
    skip.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    skip.add_argument("--operator", metavar="NAME",
                      help="who acts, for the audit log (default: the login name)")


def _mirror() -> Mirror | None:
    from worker import bootstrap

    return bootstrap.build_mirror(bootstrap.current_settings())


def _required() -> Mirror:
    mirror = _mirror()
    if mirror is None:
        raise ConfigurationError("dataverse: PROVISIONING_DATAVERSE_URL is not set (the "
                                 "mirror is off)")
    return mirror


def run(args: argparse.Namespace) -> int:
    """The ``dataverse`` handler."""
    action = args.dataverse_command
    if action == "status":
        return cmd_status(args)
    if action == "import":
        return cmd_import(args)
    if action == "run":
        return cmd_run(args)
    return cmd_skip(args)


def cmd_status(args: argparse.Namespace) -> int:
    mirror = _mirror()
    if mirror is None:
        from worker import cli

        report = mirror_status(cli._service().store, None, None, datetime.now(UTC))
    else:
        report = mirror_status(mirror.store, mirror.state, mirror.settings, datetime.now(UTC))
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print(format_status(report))
    sys.stdout.flush()
    if report["failing"]:
        error = report["last_error"] or {}
        print(f"provisioning: dataverse: failing since {report['last_error_at']}: "
              f"{error.get('code')}: {error.get('message')}", file=sys.stderr)
        return FAILED
    return OK


def cmd_import(args: argparse.Namespace) -> int:
    mirror = _required()
    importer = Importer(mirror.client, mirror.store, mirror.state)
    report = importer.run(args.page_size or mirror.settings.page_size, dry_run=args.dry_run)
    for refused in report.refused:
        for problem in refused.problems:
            print(f"row {refused.record_id or '?'}: {problem}", file=sys.stderr)
    if args.json:
        print(json.dumps({**report.to_json(), "dry_run": args.dry_run}, indent=2))
    else:
        verb = "would import" if args.dry_run else "imported"
        print(f"{verb} {len(report.imported)}, already known {len(report.existing)}, "
              f"refused {len(report.refused)} ({report.rows} rows in {report.pages} "
              f"page{'' if report.pages == 1 else 's'} from {mirror.settings.url})")
    return OK if report.ok else FAILED


def cmd_run(args: argparse.Namespace) -> int:
    mirror = _required()
    while True:
        report = mirror.run(args.budget)
        if report.sent or report.stopped not in ("empty", "paused", "locked"):
            print(f"{format_time(datetime.now(UTC))}  sent {report.sent}, "
                  f"{report.remaining} waiting ({report.stopped})", flush=True)
        if args.once:
            if report.stopped == "empty":
                return OK
            if report.stopped != "budget":
                reason = report.error or report.stopped
                print(f"provisioning: dataverse: stopped ({report.stopped}): {reason}",
                      file=sys.stderr)
                return FAILED
            continue
        if report.stopped != "budget":
            time.sleep(mirror.settings.interval)


def cmd_skip(args: argparse.Namespace) -> int:
    from worker import cli
    from worker.operate import operator_name

    mirror = _required()
    head = mirror.store.outbox_peek(1)
    if not head:
        print("the outbox is empty: nothing to skip")
        return OK
    what = _describe(head[0])
    if not args.yes and not cli._confirm(f"drop {what} from the outbox without sending it?"):
        raise cli.CommandFailed("skip cancelled; nothing was changed")
    dropped = mirror.skip()
    if dropped is None:
        print("the outbox is empty: nothing to skip")
        return OK
    what = _describe(dropped if isinstance(dropped, str) else dropped.raw)
    entry = dropped if isinstance(dropped, OutboxEntry) else None
    cli._service().failed.append_audit({
        "at": format_time(datetime.now(UTC)), "operator": f"cli:{operator_name(args.operator)}",
        "action": "dataverse-skip", "entry": what,
        "event_id": entry.event_id if entry else None,
        "record_id": entry.record_id if entry else None,
        "reason": args.reason, "result": "dropped from the Dataverse outbox",
    })
    print(f"dropped {what}; the record's next change re-sends every column that differs")
    return OK


def _describe(raw: str) -> str:
    try:
        entry = OutboxEntry.decode(raw)
    except ValueError:
        return f"an unreadable entry ({raw[:80]!r})"
    version = f" v{entry.version}" if entry.version is not None else ""
    return f"{entry.op} {entry.record_id}{version}"
