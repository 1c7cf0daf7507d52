"""What every ``provisioning`` command shares: exit codes, the error of a command that ran
but failed, confirmation, argument types, and the CLI's log settings.

Exit codes (SPEC §5): 0 success; 1 the command ran but something was refused or not found;
2 a usage error (including an argument of the wrong form). Errors print one line each on
stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import getpass
import re
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

from statemachine import ChannelKind, StatusReason
from worker import bootstrap
from worker.errors import WorkerError
from worker.settings import REDIS, redact_url
from worker.settings_rules import Rule
from worker.store.failed_filter import parse_moment

OK, FAILED, USAGE = 0, 1, 2

def operator_name(given: str | None) -> str:
    """Who acts, for the audit log: ``--operator``, else the login name."""
    if given:
        return given
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (a container without /etc/passwd entry)
        return "unknown"


class CommandFailed(WorkerError):
    """The command ran but something was refused or not found (exit 1)."""


class UsageError(WorkerError):
    """The command was given wrong: a missing or contradictory argument (exit 2)."""


def confirm(question: str) -> bool:
    """Ask on the terminal; a usage error when stdin is not one (``--yes`` is needed)."""
    if not sys.stdin.isatty():
        raise UsageError(f"{question} needs --yes when stdin is not a terminal")
    answer = input(f"{question} [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def store_url() -> str:
    """PROVISIONING_REDIS_URL without its password, for error lines."""
    return str(redact_url(bootstrap.current_settings().redis_url))


# -- argument types (argparse turns their errors into usage errors, exit 2) ----------------

def uuid_text(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a UUID: {text!r}") from None


def input_file(text: str) -> str:
    if text != "-" and not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    return text


def moment(text: str) -> datetime:
    try:
        return parse_moment(text, datetime.now(UTC))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def status_label(text: str) -> StatusReason:
    for status in StatusReason:
        if status.label.lower() == text.lower():
            return status
    labels = ", ".join(s.label for s in StatusReason)
    raise argparse.ArgumentTypeError(f"not a status reason: {text!r} (one of {labels})")


def channel_kind(text: str) -> ChannelKind:
    try:
        return ChannelKind(text.lower())
    except ValueError:
        kinds = ", ".join(k.value for k in ChannelKind)
        raise argparse.ArgumentTypeError(f"not a channel kind: {text!r} (one of {kinds})") from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


# The HTTP API's token names and roles (worker.http.auth.tokens.NAME, auth.Role's labels),
# spelled here too so that the parser checks them without loading the HTTP API; a test
# keeps the two the same.
TOKEN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
API_ROLES = ("reader", "submitter", "operator")


def token_name(text: str) -> str:
    if not TOKEN_NAME.match(text):
        raise argparse.ArgumentTypeError(
            f"not a token name: {text!r} (1-64 letters, digits, '.', '_', '@' or '-', "
            "starting with a letter or digit)")
    return text


def api_role(text: str) -> str:
    role = text.strip().lower()
    if role not in API_ROLES:
        raise argparse.ArgumentTypeError(f"not a role: {text!r} (one of {', '.join(API_ROLES)})")
    return role


def days(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r}") from None
    if not 0 < value <= 3650:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 3650, not {text}")
    return value


def port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number (1-65535): {text!r}")
    return int(text)


def redis_url(text: str) -> str:
    """A ``redis://``, ``rediss://`` or ``unix://`` URL (its password kept out of errors)."""
    if not Rule("", schemes=REDIS).broken_by(text):
        return text
    raise argparse.ArgumentTypeError(
        f"not a redis://, rediss:// or unix:// URL: {redact_url(text)!r}")
