"""The three machines as SVG the server draws, the record's current states highlighted.

An arc diagram: a machine's states in one row, in their enum's order; each transition an
arc from one state to another (above the row going right, below going left; a state's
own loop below it), labelled with its triggers. The edges come from the tables that run
the machines (``statemachine.machines``), as the Mermaid diagram's do, so the picture
cannot drift. No script and no inline style: the classes are styled by console.css.
"""

from __future__ import annotations

from collections import defaultdict
from enum import Enum
from typing import Any

from markupsafe import Markup, escape

from statemachine import ProvisioningState
from statemachine.machines import MACHINES, GateKeeper, StateMachine

BOX_W, BOX_H, GAP = 132, 40, 26
STEP = BOX_W + GAP
MARGIN = 12


def state_label(state: Enum) -> str:
    if isinstance(state, GateKeeper):
        return state.value
    return str(getattr(state, "label", state.name))


def current_states(record: ProvisioningState) -> list[Enum | None]:
    """The record's state in each machine of MACHINES (None: a pair that is no state)."""
    return [record.status, GateKeeper.from_pair(*record.gatekeeper), record.calling_status]


def _edges(machine: StateMachine) -> dict[tuple[Any, Any], list[str]]:
    edges: dict[tuple[Any, Any], list[str]] = defaultdict(list)
    for trigger, sources, dest in machine.table:
        for source in sources:
            if trigger.value not in edges[(source, dest)]:
                edges[(source, dest)].append(trigger.value)
    return edges


def _arc_height(span: int) -> float:
    return 26.0 + 24.0 * span


def machine_svg(machine: StateMachine, current: Enum | None, title: str) -> Markup:
    """One machine as an ``<svg>`` element, ``current`` highlighted (and named in text)."""
    enum_type: type[Enum] = machine.states
    states: list[Enum] = list(enum_type)
    index = {state: i for i, state in enumerate(states)}
    edges = _edges(machine)
    spans = [index[b] - index[a] for a, b in edges]
    up = max([_arc_height(s) for s in spans if s > 0], default=0.0) * 0.75 + 22
    down = max([_arc_height(-s) for s in spans if s < 0] + [40.0], default=40.0) * 0.75 + 22
    width = MARGIN * 2 + STEP * len(states) - GAP
    top = MARGIN + up
    height = top + BOX_H + down + MARGIN
    parts: list[str] = []
    mid = f"arrow-{machine.states.__name__.lower()}"
    parts.append(f'<defs><marker id="{mid}" viewBox="0 0 10 10" refX="9" refY="5" '
                 'markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
                 '<path d="M0,0 L10,5 L0,10 z" class="arrow"/></marker></defs>')
    for (source, dest), triggers in edges.items():
        label = escape(", ".join(triggers))
        i, j = index[source], index[dest]
        cx = MARGIN + i * STEP + BOX_W / 2
        if i == j:  # a loop below the state
            y = top + BOX_H
            parts.append(f'<path class="edge" marker-end="url(#{mid})" d="M{cx - 14},{y} '
                         f'C{cx - 30},{y + 34} {cx + 30},{y + 34} {cx + 14},{y + 2}"/>')
            parts.append(f'<text class="trigger" x="{cx}" y="{y + 40}">{label}</text>')
            continue
        dx = MARGIN + j * STEP + BOX_W / 2
        span = abs(j - i)
        h = _arc_height(span)
        shift = 10 if j > i else -10
        if j > i:
            y = top
            c = y - h
            ly = y - h * 0.75 - 5
        else:
            y = top + BOX_H
            c = y + h
            ly = y + h * 0.75 + 14
        x1, x2 = cx + shift, dx - shift
        parts.append(f'<path class="edge" marker-end="url(#{mid})" d="M{x1},{y} '
                     f'C{x1},{c} {x2},{c} {x2},{y}"/>')
        parts.append(f'<text class="trigger" x="{(x1 + x2) / 2}" y="{ly}">{label}</text>')
    for i, state in enumerate(states):
        x = MARGIN + i * STEP
        here = state == current
        klass = "state current" if here else "state"
        parts.append(f'<g class="{klass}"><rect x="{x}" y="{top}" width="{BOX_W}" '
                     f'height="{BOX_H}" rx="8"/><text x="{x + BOX_W / 2}" '
                     f'y="{top + BOX_H / 2 + 5}">{escape(state_label(state))}</text></g>')
    now = escape(state_label(current)) if current is not None else "no state (invalid pair)"
    svg = (f'<svg class="machine" width="{width:.0f}" height="{height:.0f}" '
           f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" '
           f'aria-label="{escape(title)} state machine; current state: {now}">'
           f'<title>{escape(title)}: now {now}</title>{"".join(parts)}</svg>')
    return Markup(svg)  # noqa: S704 - every text in it is escaped above


def machines_svg(record: ProvisioningState) -> list[tuple[str, Markup, str]]:
    """(machine name, its SVG, the current state's label) for each of the three."""
    drawn = []
    for machine, state in zip(MACHINES, current_states(record), strict=True):
        label = state_label(state) if state is not None else "no state (invalid pair)"
        drawn.append((machine.name, machine_svg(machine, state, machine.name), label))
    return drawn
