"""``provisioning diagram``: the three state machines as Mermaid."""

from __future__ import annotations

import argparse

from statemachine.diagram import mermaid
from worker.cli.common import OK


def cmd_diagram(args: argparse.Namespace) -> int:
    print(mermaid())
    return OK
