"""``provisioning completion bash|zsh|fish``: the shell's completion script.

argcomplete (not shtab): it completes for bash, zsh and fish from the one argparse parser
(shtab writes no fish script), and the scripts it prints stay right as commands change,
since the shell asks ``provisioning`` itself (``_ARGCOMPLETE`` set) on each Tab. That ask
is answered in ``console.main`` before any command runs.
"""

from __future__ import annotations

import argparse

import argcomplete
from argcomplete.shell_integration import shellcode

from worker.cli.common import OK


def complete(parser: argparse.ArgumentParser) -> None:
    """Answer the shell's completion request and exit (argcomplete's protocol); returns
    only when ``_ARGCOMPLETE`` is not set."""
    argcomplete.autocomplete(parser)


def cmd_completion(args: argparse.Namespace) -> int:
    print(shellcode(["provisioning"], shell=args.shell), end="")
    return OK
