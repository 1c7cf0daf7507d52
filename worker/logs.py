"""structlog set-up: JSON lines off a terminal, readable console output on one (SPEC §6).

Every line a task writes carries task_id, event_id, record_id and trigger, bound with
``structlog.contextvars``, and inside a span its trace_id and span_id (``worker.tracing``);
secrets never reach a log line (URLs are redacted where logged).
"""

from __future__ import annotations

import logging
import sys

import structlog

from worker.settings import Settings
from worker.tracing import log_ids


def configure(settings: Settings) -> None:
    """Configure structlog and the stdlib root logger once per process."""
    level = logging.getLevelName(settings.log_level.upper())
    if not isinstance(level, int):
        level = logging.INFO
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if settings.json_logs
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            log_ids,  # trace_id and span_id inside a span
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=_stderr_logger,
        # Not cached: a later configure() (the CLI's quieter level, tests) takes effect.
        cache_logger_on_first_use=False,
    )


class _StderrLogger:
    """Writes each rendered line to whatever ``sys.stderr`` is at the time of writing."""

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


def _stderr_logger(*_: object) -> _StderrLogger:
    return _StderrLogger()
