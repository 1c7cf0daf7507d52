"""Progress counters: drawn in place on a terminal's stderr, never anywhere else."""

from __future__ import annotations

import io

from worker.cli.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_counter_is_drawn_in_place_and_cleared_on_a_terminal() -> None:
    terminal = Terminal()
    progress = Progress("replay: entries", 3, stream=terminal, every=0)
    for _ in range(3):
        progress.advance()
    progress.done()
    drawn = terminal.getvalue()
    assert drawn.split("\r")[1:4] == ["replay: entries: 1/3", "replay: entries: 2/3",
                                      "replay: entries: 3/3"]
    assert drawn.endswith("\r" + " " * len("replay: entries: 3/3") + "\r")


def test_nothing_is_written_when_the_stream_is_not_a_terminal() -> None:
    piped = io.StringIO()
    progress = Progress("submit: lines read", stream=piped, every=0)
    progress.advance(1000)
    progress.done()
    assert piped.getvalue() == ""
    assert progress.count == 1000


def test_redrawing_is_throttled_but_the_last_step_is_shown() -> None:
    terminal = Terminal()
    progress = Progress("import: rows read", 500, stream=terminal, every=3600)
    for _ in range(500):
        progress.advance()
    frames = [frame for frame in terminal.getvalue().split("\r") if frame]
    assert frames == ["import: rows read: 1/500", "import: rows read: 500/500"]
