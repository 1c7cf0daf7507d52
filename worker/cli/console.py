"""``provisioning``: the console script (SPEC §5).

Each command's handler lives in its own module, loaded only when that command runs (as
pip's command registry does): a read-only command never loads Celery or httpx.
Exit codes: 0 success; 1 the command ran but something was refused or not found; 2 a
usage error (including an argument of the wrong form). Errors print one line each on
stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from statemachine import ProvisioningError
from worker.cli.common import FAILED, CommandFailed, store_url
from worker.cli.parser import build_parser
from worker.errors import StoreError, WorkerError

# command (or "command action") -> "module:function" of its handler.
HANDLERS = {
    "submit": "worker.cli.submit:cmd_submit",
    "show": "worker.cli.records:cmd_show",
    "list": "worker.cli.records:cmd_list",
    "history": "worker.cli.records:cmd_history",
    "failed": "worker.cli.failed:cmd_failed",
    "failed replay": "worker.cli.operate:cmd_act",
    "failed discard": "worker.cli.operate:cmd_act",
    "demo": "worker.cli.demo:cmd_demo",
    "diagram": "worker.cli.diagram:cmd_diagram",
    "health": "worker.cli.health:cmd_health",
    "dataverse": "worker.cli.dataverse:cmd_dataverse",
}


def handler(args: argparse.Namespace) -> Callable[[argparse.Namespace], int]:
    """The handler of the parsed command, its module imported now."""
    action = getattr(args, f"{args.command}_command", None)
    key = f"{args.command} {action}" if f"{args.command} {action}" in HANDLERS else args.command
    module, _, function = HANDLERS[key].partition(":")
    found: Callable[[argparse.Namespace], int] = getattr(
        importlib.import_module(module), function)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return handler(args)(args)
    except CommandFailed as exc:
        print(f"provisioning: {exc}", file=sys.stderr)
        return FAILED
    except StoreError as exc:
        print(f"provisioning: the record store at {store_url()} failed: {exc}",
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
