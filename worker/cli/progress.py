"""Progress of long commands (submit, bulk replay and discard, ``dataverse import``): a
``\\r`` counter on stderr, only when stderr is a terminal, so that pipes, files and CI logs
get the command's output and nothing else."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``what: N[/TOTAL]`` rewritten in place at most every ``every`` seconds; ``done()``
    clears the line. Silent (each call a no-op) when ``stream`` is not a terminal."""

    def __init__(self, what: str, total: int | None = None, *,
                 stream: TextIO | None = None, every: float = 0.1) -> None:
        self.what = what
        self.total = total
        self.count = 0
        self.stream = stream if stream is not None else sys.stderr
        self.shown = self.stream.isatty()
        self.every = every
        self._last = float("-inf")  # the first step is always drawn
        self._width = 0

    def advance(self, step: int = 1) -> None:
        self.count += step
        if not self.shown:
            return
        now = time.monotonic()
        if now - self._last >= self.every or self.count == self.total:
            self._last = now
            self._draw()

    def _draw(self) -> None:
        of = f"/{self.total}" if self.total is not None else ""
        text = f"{self.what}: {self.count}{of}"
        self._width = max(self._width, len(text))
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()

    def done(self) -> None:
        """Clear the counter's line (the command's own report follows)."""
        if self.shown and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
