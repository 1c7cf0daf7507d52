"""The fault suite: real worker processes on a real Redis, under kills, restarts, races,
backend faults and garbage. Every scenario records its figures with the ``figures``
fixture; the session prints them as one table at the end (and writes them as JSON with
``--fault-report PATH``). Each scenario then asserts lost = doubled = crashes = 0.

``--fault-scale ci`` (the default, run by ``scripts/check``) is sized to finish in a few
minutes; ``--fault-scale long`` multiplies events, kills and inputs by ``scale.factor``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

COLUMNS = ("scenario", "accepted", "applied", "lost", "doubled", "crashes")


@dataclass
class Figures:
    """What one scenario did. ``accepted``: events the system took in (or, for garbage,
    inputs it was given); ``applied``: events whose effect is in the store (or refused
    inputs accounted for: refused at submit or kept in the failed-task store); ``lost``:
    accepted but neither applied nor kept; ``doubled``: a trigger applied more than once;
    ``crashes``: worker processes (or pool children) that died without being killed by
    the scenario. ``notes``: anything else worth printing (kills, seconds, restarts)."""

    scenario: str
    accepted: int = 0
    applied: int = 0
    lost: int = 0
    doubled: int = 0
    crashes: int = 0
    notes: dict[str, Any] = field(default_factory=dict)

    def line(self, width: int = 34) -> str:
        notes = ", ".join(f"{key}={value}" for key, value in self.notes.items())
        return (f"{self.scenario:<{width}} {self.accepted:>9} {self.applied:>9} {self.lost:>5} "
                f"{self.doubled:>8} {self.crashes:>8}  {notes}")

    def check(self) -> None:
        assert (self.lost, self.doubled, self.crashes) == (0, 0, 0), self.line()


@dataclass(frozen=True)
class Scale:
    name: str
    factor: int


_RESULTS: list[Figures] = []
HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """At ``--fault-scale long`` a scenario runs about ten times longer than the suite's
    per-test timeout allows: give the fault scenarios ten times the timeout (unless a test
    sets its own)."""
    if config.getoption("--fault-scale") != "long":
        return
    timeout = float(config.getini("timeout") or 300) * 10
    for item in items:
        if item.path.is_relative_to(HERE) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(timeout))


@pytest.fixture
def scale(request: pytest.FixtureRequest) -> Scale:
    name = request.config.getoption("--fault-scale")
    return Scale(name, 1 if name == "ci" else 10)


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[Figures]:
    """A Figures for this scenario, named after the test; printed at the session's end
    whether or not the scenario passed."""
    name = request.node.name.removeprefix("test_")
    result = Figures(name)
    try:
        yield result
    finally:
        _RESULTS.append(result)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if not _RESULTS:
        return
    scale = config.getoption("--fault-scale")
    terminalreporter.write_sep("=", f"fault suite figures (scale {scale})")
    width = max(34, *(len(result.scenario) for result in _RESULTS))
    terminalreporter.write_line(
        f"{'scenario':<{width}} {'accepted':>9} {'applied':>9} {'lost':>5} {'doubled':>8} "
        f"{'crashes':>8}  notes")
    for result in _RESULTS:
        terminalreporter.write_line(result.line(width))
    report = config.getoption("--fault-report")
    if report:
        Path(report).write_text(json.dumps(
            {"scale": scale, "scenarios": [asdict(r) for r in _RESULTS]}, indent=2) + "\n",
            encoding="utf-8")
