"""``provisioning``: the console script (SPEC §5).

Each command's handler lives in its own module, loaded only when that command runs (as
pip's command registry does): a read-only command never loads Celery or httpx.
Exit codes: 0 success; 1 the command ran but something was refused or not found; 2 a
usage error (including an argument of the wrong form, and a bad or missing setting).
Errors print one line each on stderr, never a traceback. Output cut short by its reader
(``provisioning failed list | head``) ends quietly with 0, as Unix tools do.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from statemachine import ProvisioningError
from worker import bootstrap
from worker.cli.common import (
    FAILED,
    OK,
    USAGE,
    CommandFailed,
    UsageError,
    store_url,
)
from worker.cli.parser import build_parser
from worker.errors import ConfigurationError, StoreError, WorkerError

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
    "migrate": "worker.cli.migrate:cmd_migrate",
    "completion": "worker.cli.completion:cmd_completion",
    "token": "worker.cli.http:cmd_token",
    "serve": "worker.cli.http:cmd_serve",
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
    if "_ARGCOMPLETE" in os.environ:  # a shell asks for completions (worker/cli/completion)
        # Loaded like a command's module: argcomplete only when a shell asks.
        importlib.import_module("worker.cli.completion").complete(parser)
    args = parser.parse_args(argv)
    try:
        bootstrap.current_settings()  # every setting checked at start, whatever the command
        code = handler(args)(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        return _reader_left()
    except UsageError as exc:
        print(f"provisioning: {exc}", file=sys.stderr)
        return USAGE
    except ConfigurationError as exc:
        for problem in exc.problems:
            print(f"provisioning: {problem}", file=sys.stderr)
        return USAGE
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


def _reader_left() -> int:
    """stdout's reader closed the pipe (``| head``): stop quietly, as Unix tools do.
    stdout is pointed at /dev/null so that the interpreter's final flush of what is still
    buffered cannot fail again at exit (the recipe of Python's ``signal`` docs)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return OK
