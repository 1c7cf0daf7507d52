"""``provisioning``: the console script (SPEC §5).

Exit codes: 0 success; 1 the command ran but something was refused or not found; 2 a
usage error (including an argument of the wrong form). Errors print one line each on
stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from statemachine import (
    ChannelKind,
    GateKeeper,
    HistoryEntry,
    ProvisioningError,
    ProvisioningState,
    StatusReason,
)
from worker.errors import StoreError, WorkerError

OK, FAILED, USAGE = 0, 1, 2
HEALTH_CHECKS = ("store", "broker", "beat", "failed_tasks")  # worker.health.CHECKS, kept light


class CommandFailed(Exception):
    """The command ran but something was refused or not found (exit 1)."""


def _uuid(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a UUID: {text!r}") from None


def _input_file(text: str) -> str:
    if text != "-" and not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    return text


def _moment(text: str) -> datetime:
    from worker.operate import parse_moment

    try:
        return parse_moment(text, datetime.now(UTC))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _status(text: str) -> StatusReason:
    for status in StatusReason:
        if status.label.lower() == text.lower():
            return status
    labels = ", ".join(s.label for s in StatusReason)
    raise argparse.ArgumentTypeError(f"not a status reason: {text!r} (one of {labels})")


def _kind(text: str) -> ChannelKind:
    try:
        return ChannelKind(text.lower())
    except ValueError:
        kinds = ", ".join(k.value for k in ChannelKind)
        raise argparse.ArgumentTypeError(f"not a channel kind: {text!r} (one of {kinds})") from None


def build_parser() -> argparse.ArgumentParser:  # noqa: PLR0915 - one parser, every command
    parser = argparse.ArgumentParser(
        prog="provisioning",
        description="Operate the Provisioning State worker (msdyn_ocprovisioningstate).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    submit = commands.add_parser("submit", help="validate and enqueue events (JSON Lines)")
    submit.add_argument("file", type=_input_file, metavar="FILE", help="JSON Lines; - for stdin")
    submit.add_argument("--json", action="store_true", help="print the report as JSON")

    show = commands.add_parser("show", help="one record")
    show.add_argument("record_id", type=_uuid, metavar="ID")
    show.add_argument("--json", action="store_true",
                      help="print it in Dataverse Web API shape")

    listing = commands.add_parser("list", help="records, filtered")
    listing.add_argument("--status", type=_status, metavar="LABEL")
    listing.add_argument("--kind", type=_kind, metavar="KIND")
    listing.add_argument("--json", action="store_true")

    history = commands.add_parser("history", help="a record's changes and rejections")
    history.add_argument("record_id", type=_uuid, metavar="ID")
    history.add_argument("--json", action="store_true")

    failed = commands.add_parser("failed", help="the failed-task store")
    failed_commands = failed.add_subparsers(dest="failed_command", required=True,
                                            metavar="ACTION")
    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("--event-type", metavar="TYPE", help="e.g. provision.requested")
    filters.add_argument("--record", type=_uuid, metavar="ID")
    filters.add_argument("--exception", metavar="CLASS", help="e.g. UnknownRecord")
    filters.add_argument("--task", metavar="NAME", help="e.g. provisioning.retry")
    filters.add_argument("--since", type=_moment, metavar="WHEN",
                         help="last failed at or after WHEN (30m, 2h, 7d or a timestamp)")
    filters.add_argument("--older-than", type=_moment, metavar="WHEN",
                         help="last failed before WHEN (30m, 2h, 7d or a timestamp)")
    failed_list = failed_commands.add_parser("list", parents=[filters],
                                             help="failed-task entries")
    failed_list.add_argument("--json", action="store_true")
    failed_show = failed_commands.add_parser("show", help="one entry, in full")
    failed_show.add_argument("entry", metavar="ENTRY")
    failed_show.add_argument("--json", action="store_true")
    acting = argparse.ArgumentParser(add_help=False, parents=[filters])
    acting.add_argument("entries", nargs="*", metavar="ENTRY")
    acting.add_argument("--all", action="store_true",
                        help="every entry the filters match (a snapshot taken first)")
    acting.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    acting.add_argument("--dry-run", action="store_true", help="say what would be done")
    acting.add_argument("--operator", metavar="NAME",
                        help="who acts, for the audit log (default: the login name)")
    failed_commands.add_parser("replay", parents=[acting],
                               help="re-enqueue entries through the normal path")
    discard = failed_commands.add_parser("discard", parents=[acting],
                                         help="drop entries, keeping an audit line")
    discard.add_argument("--reason", required=True, metavar="TEXT", help="why (audited)")
    audit = failed_commands.add_parser("audit", help="the operators' audit log")
    audit.add_argument("--limit", type=int, default=0, metavar="N", help="the last N lines")
    audit.add_argument("--json", action="store_true")

    demo = commands.add_parser("demo", help="run the bundled example end to end")
    demo.add_argument("--json", action="store_true", help="print the final records as JSON")
    demo.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")

    commands.add_parser("diagram", help="print the three state machines as Mermaid")

    health = commands.add_parser(
        "health", help="check the store, the broker, beat's heartbeat and the failed tasks",
        description="One line per check; exit 0 when all pass, 1 when any fails.")
    health.add_argument("--check", action="append", choices=HEALTH_CHECKS, metavar="NAME",
                        help="run only this check (repeatable): " + ", ".join(HEALTH_CHECKS))
    health.add_argument("--json", action="store_true")

    from worker.dataverse.commands import add_parser as add_dataverse_parser

    add_dataverse_parser(commands)
    from worker.http.commands import add_parser as add_http_parser

    add_http_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = HANDLERS[args.command]
    try:
        _quiet_logs()
        return handler(args)
    except CommandFailed as exc:
        print(f"provisioning: {exc}", file=sys.stderr)
        return FAILED
    except StoreError as exc:
        print(f"provisioning: the record store at {_store_url()} failed: {exc}",
              file=sys.stderr)
        return FAILED
    except (WorkerError, ProvisioningError) as exc:
        print(f"provisioning: {exc}", file=sys.stderr)
        return FAILED
    except KeyboardInterrupt:
        print("provisioning: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the contract: no error prints a traceback
        print(f"provisioning: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
        return FAILED


def _store_url() -> str:
    """PROVISIONING_REDIS_URL without its password, for error lines."""
    from worker import bootstrap
    from worker.settings import redact_url

    return str(redact_url(bootstrap.current_settings().redis_url))


def _quiet_logs() -> None:
    """The CLI logs warnings and errors only, on stderr (stdout is the command's output)."""
    from dataclasses import replace

    from worker import bootstrap
    from worker.logs import configure

    settings = bootstrap.current_settings()
    if settings.log_level.upper() != "DEBUG":
        settings = replace(settings, log_level="WARNING")
    configure(settings)


# -- commands ------------------------------------------------------------------------------

def _service() -> Any:
    from worker import bootstrap
    from worker.app import kick, kick_many

    return bootstrap.process_service(kick, kick_many)


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
    from statemachine import Problem
    from worker.api import Refusal, submit_events

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


def _load(record_id: str) -> ProvisioningState:
    record: ProvisioningState | None = _service().store.load(record_id)
    if record is None:
        raise CommandFailed(f"record {record_id} not found")
    return record


def cmd_show(args: argparse.Namespace) -> int:
    record = _load(args.record_id)
    if args.json:
        print(json.dumps(record.to_dataverse(), indent=2, ensure_ascii=False))
        return OK
    print(describe_record(record))
    return OK


def describe_record(record: ProvisioningState) -> str:
    gate = _gate(record)
    rows = [
        ("id", record.id),
        ("name", record.name),
        ("kind", record.tracking.channel_kind.value if record.tracking.channel_kind else "-"),
        ("status", f"{record.status.label} ({int(record.status)}), "
                   f"statecode {record.statecode.label} ({int(record.statecode)})"),
        ("gatekeeper", gate),
        ("calling test", record.calling_status.label),
        ("version", str(record.version)),
        ("modified", record.modified_on.isoformat()),
    ]
    if record.provisioning_response:
        rows.append(("response", record.provisioning_response))
    if record.error_message:
        rows.append(("error", record.error_message))
    if record.exception_details:
        rows.append(("details", record.exception_details.replace("\n", "\n" + " " * 14)))
    rows.extend((column, value) for column, value in record.links.items() if value)
    return "\n".join(f"{label:<13} {value}" for label, value in rows)


def _gate(record: ProvisioningState) -> str:
    state = GateKeeper.from_pair(*record.gatekeeper)
    return state.value if state is not None else "invalid"


def cmd_list(args: argparse.Namespace) -> int:
    records = _service().store.list_records(
        status=args.status, kind=args.kind.value if args.kind else None)
    if args.json:
        print(json.dumps([r.to_dataverse() for r in records], indent=2, ensure_ascii=False))
        return OK
    print(format_records(records) if records else "no records")
    return OK


def format_records(records: Sequence[ProvisioningState]) -> str:
    lines = [f"{'ID':<36}  {'KIND':<11}  {'STATUS':<14}  {'GATEKEEPER':<22}  {'CALLING':<10}  "
             f"{'VER':>3}  NAME"]
    for r in records:
        kind = r.tracking.channel_kind.value if r.tracking.channel_kind else "-"
        lines.append(f"{r.id:<36}  {kind:<11}  {r.status.label:<14}  {_gate(r):<22}  "
                     f"{r.calling_status.label:<10}  {r.version:>3}  {r.name}")
    return "\n".join(lines)


def cmd_history(args: argparse.Namespace) -> int:
    entries: list[HistoryEntry] = _service().store.history(args.record_id)
    if not entries:
        raise CommandFailed(f"record {args.record_id} has no history (unknown id)")
    if args.json:
        print(json.dumps([e.to_json() for e in entries], indent=2, ensure_ascii=False))
        return OK
    print(format_history(entries))
    return OK


def format_history(entries: Sequence[HistoryEntry]) -> str:
    lines = []
    for e in entries:
        version = f"v{e.version}" if e.version is not None else "-"
        before = e.before.status.label if e.before else "∅"
        after = e.after.status.label if e.after else "∅"
        lines.append(f"{version:>4}  {e.at.strftime('%H:%M:%S')}  {e.trigger:<14} "
                     f"{e.outcome.value:<9} {before} → {after}  [{e.event_type} {e.event_id}]"
                     f"  {e.reason}")
    return "\n".join(lines)


def _filter(args: argparse.Namespace) -> Any:
    from worker.operate import FailedFilter

    return FailedFilter(event_type=args.event_type, record_id=args.record,
                        exception=args.exception, task=args.task, since=args.since,
                        older_than=args.older_than)


def cmd_failed(args: argparse.Namespace) -> int:
    service = _service()
    failed = service.failed
    action = args.failed_command
    if action == "show":
        return _failed_show(failed, args)
    if action == "audit":
        return _failed_audit(failed, args)
    if action in ("replay", "discard"):
        return _failed_act(service, args)
    from worker.operate import select

    entries = select(failed.all(), _filter(args))
    if args.json:
        print(json.dumps([e.summary_json() for e in entries], indent=2, ensure_ascii=False))
        return OK
    print(format_failed(entries) if entries else "no failed tasks")
    return OK


def format_failed(entries: Sequence[Any]) -> str:
    lines = [f"{'ENTRY':<12}  {'LAST FAILED':<19}  {'TRIES':>5}  {'EXCEPTION':<16}  "
             f"{'EVENT TYPE':<22}  {'RECORD':<36}  MESSAGE"]
    for e in entries:
        message = e.message.splitlines()[0] if e.message else ""
        lines.append(f"{e.id:<12}  {e.last_failed_at[:19]:<19}  {e.attempts:>5}  "
                     f"{e.exception:<16}  {(e.event_type or '-'):<22}  "
                     f"{(e.record_id or '-'):<36}  {message[:120]}")
    return "\n".join(lines)


def _failed_show(failed: Any, args: argparse.Namespace) -> int:
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


def _failed_audit(failed: Any, args: argparse.Namespace) -> int:
    lines = failed.audit(args.limit)
    if args.json:
        print(json.dumps(lines, indent=2, ensure_ascii=False))
        return OK
    if not lines:
        print("no operator actions yet")
        return OK
    for line in lines:
        why = f"  reason: {line['reason']}" if line.get("reason") else ""
        print(f"{line['at'][:19]}  {line['operator']:<12} {line['action']:<8} "
              f"{line['entry']}  {line.get('result', '')}{why}")
    return OK


def _failed_act(service: Any, args: argparse.Namespace) -> int:
    """replay / discard: named entries, or --all matching the filters (a snapshot); the
    rule is worker.operations' (the HTTP API's too), audited as ``cli:<operator>``."""
    from worker.operate import operator_name
    from worker.operations import act, choose

    verb = args.failed_command
    if bool(args.entries) == bool(args.all):
        raise CommandFailed(f"failed {verb}: name ENTRY ids or give --all (with filters)")
    chosen, missing = (choose(service.failed, flt=_filter(args)) if args.all
                       else choose(service.failed, ids=args.entries))
    for entry_id in missing:
        print(f"provisioning: failed-task entry {entry_id} not found", file=sys.stderr)
    if not chosen:
        print(f"nothing to {verb}")
        return FAILED if missing else OK
    if args.all and not (args.yes or args.dry_run) and not _confirm(
            f"{verb} {len(chosen)} failed-task entr{'y' if len(chosen) == 1 else 'ies'}?"):
        raise CommandFailed(f"{verb} cancelled; nothing was changed (use --yes to skip asking)")
    report = act(service, verb, chosen, operator=f"cli:{operator_name(args.operator)}",
                 send_event=_send_replay,
                 reason=getattr(args, "reason", ""), dry_run=args.dry_run)
    for entry_id, result in report.results:
        print(f"{entry_id}  {result}")
    return FAILED if (missing or report.refused) else OK


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        raise CommandFailed(f"{question} needs --yes when stdin is not a terminal")
    answer = input(f"{question} [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def _send_replay(event: Any, entry_id: str) -> None:
    from worker.operations import send_replay

    send_replay(event, entry_id)


def cmd_demo(args: argparse.Namespace) -> int:
    from worker.demo import run_demo

    return run_demo(workers=args.workers, as_json=args.json)


def cmd_diagram(args: argparse.Namespace) -> int:
    from statemachine.diagram import mermaid

    print(mermaid())
    return OK


def cmd_health(args: argparse.Namespace) -> int:
    from worker import bootstrap
    from worker.health import run_checks, summary

    checks = run_checks(bootstrap.current_settings(), args.check or HEALTH_CHECKS)
    if args.json:
        print(json.dumps(summary(checks), indent=2))
    else:
        for check in checks:
            print(check.line())
    sys.stdout.flush()
    for check in checks:
        if not check.ok:
            print(f"provisioning: health: {check.name}: {check.detail}", file=sys.stderr)
    return OK if all(check.ok for check in checks) else FAILED


def cmd_dataverse(args: argparse.Namespace) -> int:
    from worker.dataverse.commands import run

    return run(args)


def cmd_http(args: argparse.Namespace) -> int:
    from worker.http.commands import run

    return run(args)


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "submit": cmd_submit,
    "show": cmd_show,
    "list": cmd_list,
    "history": cmd_history,
    "failed": cmd_failed,
    "demo": cmd_demo,
    "diagram": cmd_diagram,
    "health": cmd_health,
    "dataverse": cmd_dataverse,
    "token": cmd_http,
    "serve": cmd_http,
}
