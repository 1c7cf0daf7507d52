"""The mermaid diagrams are drawn from the machine tables and nothing else."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from statemachine import MACHINES
from statemachine.diagram import mermaid

BLOCK = re.compile(r"### (?P<title>[^\n]+)\n\n```mermaid\n(?P<body>.*?)\n```", re.DOTALL)
EDGE = re.compile(r"^\s*(?P<source>\w+) --> (?P<dest>\w+): (?P<labels>.+)$", re.MULTILINE)


def blocks() -> dict[str, str]:
    return {found["title"]: found["body"] for found in BLOCK.finditer(mermaid())}


def test_there_is_one_titled_mermaid_block_per_machine_in_spec_order():
    text = mermaid()
    assert text.count("```mermaid") == 3
    assert [found["title"] for found in BLOCK.finditer(text)] == [
        "Lifecycle (statuscode)", "GateKeeper", "Automated calling",
    ]


@pytest.mark.parametrize("machine", MACHINES, ids=lambda machine: machine.name)
def test_each_block_is_a_state_diagram_with_its_title(machine):
    body = blocks()[machine.name]
    assert body.startswith(f"---\ntitle: {machine.name}\n---\nstateDiagram-v2\n")


@pytest.mark.parametrize("machine", MACHINES, ids=lambda machine: machine.name)
def test_the_edges_are_exactly_the_rows_of_the_machine_table(machine):
    drawn = {
        (found["source"], found["dest"], label.strip())
        for found in EDGE.finditer(blocks()[machine.name])
        if found["source"] != "[*]" and found["dest"] != "[*]"
        for label in found["labels"].split("|")
    }
    expected = {
        (source.name, dest.name, trigger.value)
        for trigger, sources, dest in machine.table
        for source in sources
    }
    assert drawn == expected


def test_states_are_labelled_with_their_dataverse_labels_and_values():
    lifecycle, gatekeeper, calling = (blocks()[machine.name] for machine in MACHINES)
    assert 'state "Running (192350003)" as RUNNING' in lifecycle
    assert 'state "Deprovisioned (192350006)" as DEPROVISIONED' in lifecycle
    assert 'state "unset (null, null)" as UNSET' in gatekeeper
    assert 'state "(Inactive, Error)" as INACTIVE_ERROR' in gatekeeper
    assert 'state "InProgress (3)" as IN_PROGRESS' in calling
    for machine, body in zip(MACHINES, (lifecycle, gatekeeper, calling), strict=True):
        assert body.count("state \"") == len(list(machine.states))


def test_initial_and_final_states_are_marked():
    lifecycle, gatekeeper, calling = (blocks()[machine.name] for machine in MACHINES)
    assert "[*] --> DRAFT" in lifecycle
    assert "DEPROVISIONED --> [*]" in lifecycle
    assert "[*] --> UNSET" in gatekeeper
    assert "INACTIVE_DEPROVISIONED --> [*]" in gatekeeper
    assert "[*] --> NOT_TESTED" in calling
    assert "--> [*]" not in calling  # every calling status can be left again


def test_no_current_state_styling_leaks_into_the_diagram():
    text = mermaid()
    assert "classDef" not in text
    assert "Class " not in text
    assert "s_active" not in text


def test_the_diagram_module_imports_no_celery_redis_or_httpx():
    probe = (
        "import sys, statemachine.diagram as d; d.mermaid(); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'celery', 'redis', 'httpx', 'kombu', 'graphviz', 'pygraphviz'}))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True, timeout=60)
    assert done.stdout.strip() == "[]"
