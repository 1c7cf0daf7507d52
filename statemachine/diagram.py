"""Mermaid state diagrams of the three machines, drawn from their tables (SPEC §2).

The edges come from ``transitions``' own mermaid engine (``GraphMachine`` with
``graph_engine="mermaid"``, which needs no Graphviz), fed the same tables that run the
machines, so the picture cannot drift from the behaviour. We only relabel the states
(the enum member names become their Dataverse labels and values), drop the styling
``transitions`` adds to highlight a model's current state, and mark final states.
"""

from __future__ import annotations

from enum import Enum

from transitions.extensions.diagrams import GraphMachine

from statemachine.machines import MACHINES, GateKeeper, StateMachine


def _label(state: Enum) -> str:
    """What a state is called on the diagram: its label and the value(s) Dataverse stores."""
    if isinstance(state, GateKeeper):
        status, reason = state.pair
        if status is None or reason is None:
            return "unset (null, null)"
        return f"({status.label}, {reason.label})"
    label: str = getattr(state, "label", state.name)
    return f"{label} ({state.value})"


def _states(machine: StateMachine) -> list[Enum]:
    enum_type: type[Enum] = machine.states
    return list(enum_type)


def _graph_source(machine: StateMachine) -> str:
    """The stateDiagram-v2 text ``transitions`` draws for ``machine``'s table."""
    states = _states(machine)
    graph = GraphMachine(
        model="self",
        states=[state.name for state in states],
        transitions=[
            {"trigger": trigger.value, "source": [source.name for source in sources],
             "dest": dest.name}
            for trigger, sources, dest in machine.table
        ],
        initial=states[0].name,
        auto_transitions=False,
        graph_engine="mermaid",
        title=machine.name,
    )
    source: str = graph.get_graph().draw(None)
    return source


def _state_diagram(machine: StateMachine) -> str:
    """One ``stateDiagram-v2`` with readable state labels and ``[*]`` after final states."""
    states = _states(machine)
    labels = {state.name: _label(state) for state in states}
    body = _graph_source(machine).split("stateDiagram-v2", 1)[1].splitlines()
    lines = [f"---\ntitle: {machine.name}\n---", "stateDiagram-v2"]
    for line in body:
        text = line.strip()
        if not text or text.startswith(("classDef ", "Class ")):
            continue  # transitions' styling: it highlights the throw-away model's state
        if text.startswith("state ") and " as " in text:
            name = text.rsplit(" as ", 1)[1]
            text = f'state "{labels[name]}" as {name}'
        lines.append(f"  {text}")
    sources = {source.name for _, row_sources, _ in machine.table for source in row_sources}
    lines.extend(f"  {state.name} --> [*]" for state in states if state.name not in sources)
    return "\n".join(lines)


def mermaid() -> str:
    """Markdown with one titled ```` ```mermaid ```` block per machine, in SPEC §2 order."""
    sections = [
        f"### {machine.name}\n\n```mermaid\n{_state_diagram(machine)}\n```\n"
        for machine in MACHINES
    ]
    return "\n".join(sections)
