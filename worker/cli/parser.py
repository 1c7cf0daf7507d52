"""The ``provisioning`` argument parser: every command and option (SPEC §5), and nothing
they need to run, so that building it stays cheap for every command."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from importlib.metadata import version
from typing import Any

from worker.cli.common import (
    api_role,
    channel_kind,
    days,
    input_file,
    moment,
    port,
    positive_int,
    redis_url,
    seconds,
    status_label,
    token_name,
    uuid_text,
)

# ops.health.CHECKS, kept light
HEALTH_CHECKS = ("store", "broker", "beat", "failed_tasks", "circuits", "outbox")
SHELLS = ("bash", "zsh", "fish")  # the shells argcomplete writes a script for
DISTRIBUTION = "provisioning-state-worker"  # pyproject.toml's name: the one version source


class Version(argparse.Action):
    """``--version``: the installed package's version, read from its metadata only when
    asked (importlib.metadata is not free, and every command builds this parser)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        print(f"{parser.prog} {version(DISTRIBUTION)}")  # on stdout, as --help is
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="provisioning",
        description="Operate the Provisioning State worker (msdyn_ocprovisioningstate).",
    )
    parser.add_argument("--version", action=Version)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    submit = commands.add_parser("submit", help="validate and enqueue events (JSON Lines)")
    submit.add_argument("file", type=input_file, metavar="FILE", help="JSON Lines; - for stdin")
    submit.add_argument("--json", action="store_true", help="print the report as JSON")

    show = commands.add_parser("show", help="one record")
    show.add_argument("record_id", type=uuid_text, metavar="ID")
    show.add_argument("--json", action="store_true",
                      help="print it in Dataverse Web API shape")

    listing = commands.add_parser("list", help="records, filtered")
    listing.add_argument("--status", type=status_label, metavar="LABEL")
    listing.add_argument("--kind", type=channel_kind, metavar="KIND")
    listing.add_argument("--json", action="store_true")

    history = commands.add_parser("history", help="a record's changes and rejections")
    history.add_argument("record_id", type=uuid_text, metavar="ID")
    history.add_argument("--json", action="store_true")

    _add_failed(commands)

    demo = commands.add_parser("demo", help="run the bundled example end to end")
    demo.add_argument("--json", action="store_true", help="print the final records as JSON")
    demo.add_argument("--workers", type=positive_int, default=2,
                      help="worker processes (default 2)")
    demo.add_argument("--redis-url", type=redis_url, metavar="URL",
                      help="run on this Redis database instead of an embedded one; it must "
                           "be empty (PROVISIONING_REDIS_URL is never used by the demo)")
    demo.add_argument("--timeout", type=seconds, default=90.0, metavar="SECONDS",
                      help="how long each phase may take before the demo gives up "
                           "(default 90)")
    demo.add_argument("--console", action="store_true",
                      help="then serve the operator console (/ui/), print a one-time login "
                           "link, and keep everything running until Ctrl-C")
    demo.add_argument("--port", type=port, metavar="PORT",
                      help="the console's port with --console (default: a free one)")

    commands.add_parser("diagram", help="print the three state machines as Mermaid")
    _add_completion(commands)

    health = commands.add_parser(
        "health", help="check the store, the broker, beat's heartbeat and the failed tasks",
        description="One line per check; exit 0 when all pass, 1 when any fails.")
    health.add_argument("--check", action="append", choices=HEALTH_CHECKS, metavar="NAME",
                        help="run only this check (repeatable): " + ", ".join(HEALTH_CHECKS))
    health.add_argument("--json", action="store_true")

    _add_dataverse(commands)
    _add_migrate(commands)
    _add_http(commands)
    return parser


def _add_failed(commands: Any) -> None:
    """Add ``failed`` and its actions (list, show, replay, discard, audit)."""
    failed = commands.add_parser("failed", help="the failed-task store")
    failed_commands = failed.add_subparsers(dest="failed_command", required=True,
                                            metavar="ACTION")
    filters = argparse.ArgumentParser(add_help=False)
    filters.add_argument("--event-type", metavar="TYPE", help="e.g. provision.requested")
    filters.add_argument("--record", type=uuid_text, metavar="ID")
    filters.add_argument("--exception", metavar="CLASS", help="e.g. UnknownRecord")
    filters.add_argument("--task", metavar="NAME", help="e.g. provisioning.retry")
    filters.add_argument("--since", type=moment, metavar="WHEN",
                         help="last failed at or after WHEN (30m, 2h, 7d or a timestamp)")
    filters.add_argument("--older-than", type=moment, metavar="WHEN",
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
    acting.add_argument("--json", action="store_true",
                        help="print each entry's result as JSON")
    failed_commands.add_parser("replay", parents=[acting],
                               help="re-enqueue entries through the normal path")
    discard = failed_commands.add_parser("discard", parents=[acting],
                                         help="drop entries, keeping an audit line")
    discard.add_argument("--reason", required=True, metavar="TEXT", help="why (audited)")
    audit = failed_commands.add_parser("audit", help="the operators' audit log")
    audit.add_argument("--limit", type=int, default=0, metavar="N", help="the last N lines")
    audit.add_argument("--json", action="store_true")


def _add_completion(commands: Any) -> None:
    completion = commands.add_parser(
        "completion", help="print the shell completion script (bash, zsh or fish)",
        description="e.g. `provisioning completion bash > "
                    "~/.local/share/bash-completion/completions/provisioning`")
    completion.add_argument("shell", choices=SHELLS, metavar="SHELL",
                            help="one of " + ", ".join(SHELLS))


def _add_dataverse(commands: Any) -> None:
    """Add ``dataverse`` and its actions to the CLI's subparsers."""
    dataverse = commands.add_parser(
        "dataverse", help="the mirror to Dataverse: status, check, import, run, skip",
        description="Mirror the records to a Dataverse organization "
                    "(PROVISIONING_DATAVERSE_URL and its credentials).")
    actions = dataverse.add_subparsers(dest="dataverse_command", required=True,
                                       metavar="ACTION")
    status = actions.add_parser("status", help="outbox lag, last success, last error",
                                description="Exit 1 when entries wait and the last attempt "
                                            "failed.")
    status.add_argument("--json", action="store_true")
    check = actions.add_parser(
        "check", help="sign in, WhoAmI, compare the organization's table with the code",
        description="Exit 1 on a difference that would make a write fail (import and the "
                    "mirror refuse to start then).")
    check.add_argument("--json", action="store_true")
    importing = actions.add_parser(
        "import", help="load the organization's existing rows into the store",
        description="Rows whose id the store knows are skipped; refused rows are named on "
                    "stderr (exit 1).")
    importing.add_argument("--page-size", type=positive_int, metavar="N",
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
    run.add_argument("--budget", type=seconds, metavar="SECONDS",
                     help="seconds per run (default PROVISIONING_DATAVERSE_RUN_BUDGET)")
    run.add_argument("--json", action="store_true",
                     help="print each run's report as one JSON line")
    skip = actions.add_parser(
        "skip", help="drop the outbox head Dataverse keeps refusing (audited)",
        description="The record's next change re-reads its row and sends every column "
                    "that differs.")
    skip.add_argument("--reason", required=True, metavar="TEXT", help="why (audited)")
    skip.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    skip.add_argument("--operator", metavar="NAME",
                      help="who acts, for the audit log (default: the login name)")
    skip.add_argument("--json", action="store_true", help="print what was dropped as JSON")


def _add_migrate(commands: Any) -> None:
    """``migrate``: a v1 store to store v2 (worker/cli/migrate.py)."""
    migrate = commands.add_parser(
        "migrate", help="convert a v1 store to store v2, in place (workers stopped)",
        description="Stop every worker and beat first. Resumable: run it again after an "
                    "interruption. Exit 1 when something could not be moved.")
    migrate.add_argument("--dry-run", action="store_true",
                         help="count what would move, write nothing")
    migrate.add_argument("--json", action="store_true")


def _add_http(commands: Any) -> None:
    """``token`` and ``serve``: the HTTP API (SPEC §8)."""
    token = commands.add_parser("token", help="API tokens of the HTTP API: create, list, revoke")
    actions = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="a new token; printed once, as the last line",
                                description="Only a hash of the token is stored.")
    create.add_argument("--name", required=True, type=token_name, metavar="NAME",
                        help="who holds it: the name its actions are audited under")
    create.add_argument("--role", required=True, type=api_role, metavar="ROLE",
                        help="reader, submitter or operator")
    create.add_argument("--expires-in", type=days, metavar="DAYS",
                        help="days until it expires (default: never)")
    listing = actions.add_parser("list", help="names, roles, created, expires, last used")
    listing.add_argument("--json", action="store_true")
    revoke = actions.add_parser("revoke", help="revoke a token (refused at its next request)")
    revoke.add_argument("name", metavar="NAME")

    serve = commands.add_parser(
        "serve", help="run the HTTP API (docs/api.md)",
        description="Serves until SIGTERM or Ctrl-C, then finishes the requests in flight "
                    "(at most PROVISIONING_API_SHUTDOWN_TIMEOUT seconds).")
    serve.add_argument("--host", metavar="HOST",
                       help="address to listen on (default PROVISIONING_API_HOST)")
    serve.add_argument("--port", type=port, metavar="PORT",
                       help="port (default PROVISIONING_API_PORT)")
    serve.add_argument("--proxy-headers", action="store_true",
                       help="behind a TLS-terminating proxy: take the client address and "
                            "scheme from X-Forwarded-For and X-Forwarded-Proto")
    serve.add_argument("--forwarded-allow-ips", metavar="IPS", default="127.0.0.1",
                       help="proxies trusted for those headers (comma-separated, or *; "
                            "default 127.0.0.1)")
