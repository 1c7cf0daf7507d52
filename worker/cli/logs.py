"""The CLI's logs: warnings and errors only, on stderr (stdout is the command's output).

Only the commands that run the service, the mirror or the checks (submit, replay, discard,
dataverse, demo, health) configure structlog; the read-only ones never load it.
"""

from __future__ import annotations

from dataclasses import replace

from worker import bootstrap
from worker.logs import configure


def quiet_logs() -> None:
    """The CLI logs warnings and errors only, on stderr (stdout is the command's output)."""
    settings = bootstrap.current_settings()
    if settings.log_level.upper() != "DEBUG":
        settings = replace(settings, log_level="WARNING")
    configure(settings)
