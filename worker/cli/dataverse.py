"""``provisioning dataverse status|check|import|run|skip``: the mirror to Dataverse.

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

from statemachine import format_time
from worker import bootstrap
from worker.bootstrap.mirror import build_mirror
from worker.cli.common import FAILED, OK, CommandFailed, confirm, operator_name
from worker.cli.logs import quiet_logs
from worker.cli.progress import Progress
from worker.dataverse.importer import Importer
from worker.dataverse.metadata import check_organization
from worker.dataverse.mirror import Mirror
from worker.dataverse.outbox import OutboxEntry
from worker.dataverse.status import format_status, mirror_status
from worker.errors import ConfigurationError
from worker.store.failed import FailedStore
from worker.store.protocol import StateStore


def _store() -> StateStore:
    return bootstrap.build_store(bootstrap.current_settings())


def _failed() -> FailedStore:
    return bootstrap.build_failed(bootstrap.current_settings())


def _mirror() -> Mirror | None:
    return build_mirror(bootstrap.current_settings())


def _required() -> Mirror:
    mirror = _mirror()
    if mirror is None:
        raise ConfigurationError("dataverse: PROVISIONING_DATAVERSE_URL is not set (the "
                                 "mirror is off)")
    return mirror


def cmd_dataverse(args: argparse.Namespace) -> int:
    """The ``dataverse`` handler."""
    quiet_logs()
    action = args.dataverse_command
    if action == "status":
        return cmd_status(args)
    if action == "check":
        return cmd_check(args)
    if action == "import":
        return cmd_import(args)
    if action == "run":
        return cmd_run(args)
    return cmd_skip(args)


def cmd_status(args: argparse.Namespace) -> int:
    mirror = _mirror()
    if mirror is None:
        report = mirror_status(_store(), None, None, datetime.now(UTC),
                               bootstrap.current_settings().outbox_max_entries)
    else:
        report = mirror_status(mirror.store, mirror.state, mirror.settings, datetime.now(UTC),
                               bootstrap.current_settings().outbox_max_entries)
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


def cmd_check(args: argparse.Namespace) -> int:
    report = check_organization(_required().client)
    if args.json:
        print(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
        print("\n".join(report.lines()))
    return OK if report.ok else FAILED


def _refuse_on_blocking(mirror: Mirror) -> None:
    """Run the check; CommandFailed (after printing the differences) when one blocks."""
    report = check_organization(mirror.client)
    for difference in report.blocking:
        print(f"BLOCKING  {difference.column}: {difference.message}", file=sys.stderr)
    if not report.ok:
        raise CommandFailed(f"dataverse: {len(report.blocking)} blocking difference(s) "
                                "in the organization's table; nothing was done (see "
                                "`provisioning dataverse check`)")


def cmd_import(args: argparse.Namespace) -> int:
    mirror = _required()
    _refuse_on_blocking(mirror)
    importer = Importer(mirror.client, mirror.store, mirror.state)
    progress = Progress("import: rows read")
    try:
        report = importer.run(args.page_size or mirror.settings.page_size,
                              dry_run=args.dry_run, progress=progress.advance)
    finally:
        progress.done()
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
    _refuse_on_blocking(mirror)
    while True:
        report = mirror.run(args.budget)
        if args.json:  # every run, one JSON line each
            print(json.dumps({"at": format_time(datetime.now(UTC)), **report.to_json()}),
                  flush=True)
        elif report.sent or report.stopped not in ("empty", "paused", "locked"):
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
    mirror = _required()
    head = mirror.store.outbox_peek(1)
    if not head:
        _skipped(args, None, "the outbox is empty: nothing to skip")
        return OK
    what = _describe(head[0])
    if not args.yes and not confirm(f"drop {what} from the outbox without sending it?"):
        raise CommandFailed("skip cancelled; nothing was changed")
    dropped = mirror.skip()
    if dropped is None:
        _skipped(args, None, "the outbox is empty: nothing to skip")
        return OK
    what = _describe(dropped if isinstance(dropped, str) else dropped.raw)
    entry = dropped if isinstance(dropped, OutboxEntry) else None
    _failed().append_audit({
        "at": format_time(datetime.now(UTC)), "operator": f"cli:{operator_name(args.operator)}",
        "action": "dataverse-skip", "entry": what,
        "event_id": entry.event_id if entry else None,
        "record_id": entry.record_id if entry else None,
        "reason": args.reason, "result": "dropped from the Dataverse outbox",
    })
    _skipped(args, what, f"dropped {what}; the record's next change re-sends every column "
                         "that differs")
    return OK


def _skipped(args: argparse.Namespace, dropped: str | None, text: str) -> None:
    """What ``skip`` did: ``text``, or with ``--json`` the entry dropped (null if none)."""
    if args.json:
        print(json.dumps({"dropped": dropped, "result": text}, indent=2))
    else:
        print(text)


def _describe(raw: str) -> str:
    try:
        entry = OutboxEntry.decode(raw)
    except ValueError:
        return f"an unreadable entry ({raw[:80]!r})"
    version = f" v{entry.version}" if entry.version is not None else ""
    return f"{entry.op} {entry.record_id}{version}"
