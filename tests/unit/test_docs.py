"""README.md and docs/ document what the code defines, and a reader can find their way in
them: every relative link resolves inside the repository (files and GitHub's #anchors),
nothing points outside it, the generated parts are not stale, and what the code shows users
cites the docs. The CLI examples are tests/unit/test_docs_cli.py's."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from statemachine import (
    COLUMNS,
    LOOKUPS,
    AutomatedCallingStatus,
    Lookup,
    ProvisioningState,
    StatusReason,
    parse_event,
)
from tests.docs_pages import (
    DOCS,
    PAGES,
    README,
    ROOT,
    anchors,
    code_lines,
    links,
    load_script,
    slug,
)
from worker.settings import PREFIX, setting_names

CONTRACT = (ROOT / "docs" / "contract.md").read_text(encoding="utf-8")
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")

# The documents the docs map promises (the lead adds store, tracing and console at merge).
EXPECTED = {"api.md", "benchmarks.md", "cli.md", "configuration.md", "contract.md",
            "dataverse.md", "deploy.md", "design.md", "operations.md"}


# -- the pages and their links -----------------------------------------------------------------


def test_the_readme_is_short_and_maps_every_document() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 300
    assert {path.name for path in DOCS} >= EXPECTED
    for path in DOCS:
        assert f"(docs/{path.name})" in text, f"README's map lacks docs/{path.name}"


def test_the_readme_test_command_is_the_one_ci_runs() -> None:
    """.ci/run installs from scratch and runs the README's second command verbatim."""
    readme = README.read_text(encoding="utf-8")
    commands = [line for _, line in code_lines(readme) if line.startswith("python3 -m venv")]
    assert len(commands) == 2, "the README gives exactly two set-up commands"
    assert commands[0].endswith(".venv/bin/provisioning demo")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert commands[1] in ci


def link_problems(page: Path, root: Path = ROOT) -> list[str]:
    """Each relative link of ``page`` that leaves ``root``, names no file, or names a
    heading its Markdown target lacks."""
    problems = []
    for target in links(page):
        parts = urlsplit(target)
        if parts.scheme or target.startswith("//"):
            continue  # an outside web page, not a file of ours
        resolved = (page.parent / unquote(parts.path)).resolve() if parts.path else page
        if not resolved.is_relative_to(root):
            problems.append(f"{target}: outside the repository")
        elif not resolved.exists():
            problems.append(f"{target}: no such file")
        elif parts.fragment and resolved.suffix == ".md" and \
                parts.fragment not in anchors(resolved):
            problems.append(f"{target}: no heading #{parts.fragment} in {resolved.name}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda path: path.name)
def test_every_relative_link_resolves_inside_the_repository(page: Path) -> None:
    assert len(list(links(page))) > 0
    problems = link_problems(page)
    assert not problems, f"{page.name}: " + "; ".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=lambda path: path.name)
def test_nothing_points_outside_the_repository(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    assert "../shared" not in text
    assert "SPEC.md" not in text


REPO_PATH = re.compile(r"`((?:worker|tests|scripts|bench|deploy|statemachine|docs|\.ci)/[^`\s]*)`")


@pytest.mark.parametrize("page", PAGES, ids=lambda path: path.name)
def test_every_path_the_docs_name_exists(page: Path) -> None:
    """`worker/http/openapi.py`, `tests/unit/test_docs.py`…: named in code spans, not linked,
    and still each one a file or directory of the repository."""
    named = [found.group(1) for found in REPO_PATH.finditer(page.read_text(encoding="utf-8"))]
    paths = {re.sub(r"[#:].*$", "", name.rstrip(".,;")) for name in named
             if not any(mark in name for mark in "*<{…")}
    assert not sorted(path for path in paths if not (ROOT / path).exists())


def test_the_anchor_rules_are_githubs() -> None:
    assert slug("A backend is down (circuit open)") == "a-backend-is-down-circuit-open"
    assert slug("From Python, and from any Celery client") == \
        "from-python-and-from-any-celery-client"
    assert slug("The mirror's settings") == "the-mirrors-settings"
    assert slug("`provisioning_records` and [docs](x.md)") == "provisioning_records-and-docs"
    assert slug("Metrics (Prometheus, Grafana)") == "metrics-prometheus-grafana"


def test_a_broken_link_is_caught(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "other.md").write_text("# Other\n\n## A section (one)\n", encoding="utf-8")
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "# Page\n\n[ok](../other.md#a-section-one) [top](#page) [web](https://example.com)\n"
        "[gone](missing.md) [no anchor](../other.md#nope) [self](#nothing)\n"
        "[out](../../elsewhere/SPEC.md) `[in code](missing.md)`\n\n"
        "```\n[in a block](missing.md)\n```\n", encoding="utf-8")
    assert link_problems(page, tmp_path) == [
        "missing.md: no such file",
        "../other.md#nope: no heading #nope in other.md",
        "#nothing: no heading #nothing in page.md",
        "../../elsewhere/SPEC.md: outside the repository",
    ]


def test_the_contracts_json_examples_are_what_the_code_reads_and_writes() -> None:
    """The event example is a valid event; the record example is a record the codec reads
    back and writes out with the same keys."""
    blocks = re.findall(r"```json\n(.*?)```", CONTRACT, re.DOTALL)
    event, record = (json.loads(block) for block in blocks)
    parsed = parse_event(event)
    assert parsed.id == event["id"]
    state = ProvisioningState.from_dataverse(record)
    assert set(state.to_dataverse()) == set(record)


# -- what the code defines, documented ---------------------------------------------------------


@pytest.mark.parametrize("name", setting_names())
def test_every_setting_is_in_the_configuration(name: str) -> None:
    assert f"| `{PREFIX}{name.upper()}` |" in CONFIGURATION


def test_the_configuration_table_is_the_one_the_settings_generate() -> None:
    """scripts/settings_table.py writes it; run it after changing a setting."""
    script = load_script("settings_table")
    assert script.rewritten(CONFIGURATION) == CONFIGURATION, (
        "docs/configuration.md's table is stale: run .venv/bin/python scripts/settings_table.py")
    assert script.main(["--check"]) == 0


def test_the_table_check_catches_a_hand_edit() -> None:
    script = load_script("settings_table")
    edited = CONFIGURATION.replace("| `PROVISIONING_LEASE_SECONDS` | `30.0` |",
                                   "| `PROVISIONING_LEASE_SECONDS` | `45.0` |")
    assert edited != CONFIGURATION
    assert script.rewritten(edited) == CONFIGURATION
    for name in setting_names():
        assert f"| `{PREFIX}{name.upper()}` |" in script.table()


@pytest.mark.parametrize("column", [c.logical_name for c in COLUMNS if c.logical_name
                                    not in ("createdon", "modifiedon", "versionnumber")])
def test_every_column_is_in_the_contract(column: str) -> None:
    assert f"`{column}`" in CONTRACT


@pytest.mark.parametrize("lookup", LOOKUPS, ids=lambda lookup: lookup.column)
def test_every_lookup_with_its_navigation_property_entity_set_and_rule_is_in_the_contract(
    lookup: Lookup,
) -> None:
    [row] = [line for line in CONTRACT.splitlines()
             if line.startswith(f"| `{lookup.column}` | `{lookup.parent_table}` |")]
    assert f"`{lookup.navigation_property}`" in row
    assert f"`{lookup.parent_entity_set}`" in row
    assert lookup.on_parent_delete.value in row


@pytest.mark.parametrize("status", list(StatusReason), ids=lambda s: s.label)
def test_every_status_reason_value_is_in_the_contract(status: StatusReason) -> None:
    assert f"| {int(status)} | {status.label} | {int(status.statecode)} |" in CONTRACT


@pytest.mark.parametrize("choice", list(AutomatedCallingStatus), ids=lambda c: c.label)
def test_every_calling_status_is_in_the_contract(choice: AutomatedCallingStatus) -> None:
    assert f"{int(choice)} {choice.label}" in CONTRACT


# -- the demo's sample -------------------------------------------------------------------------


def test_the_demo_sample_is_normalised_as_documented() -> None:
    """What varies between runs is replaced; what the example defines is kept (the whole
    sample is compared with a fresh run by tests/integration/test_demo_output.py)."""
    script = load_script("demo_output")
    raw = ("embedded Redis (redis-server) on redis://127.0.0.1:36941/0\n"
           "celery worker (2 processes) and beat started; logs in "
           "/tmp/provisioning-demo-koh8iqzi\n"
           "  v4  2026-12-07T11:26:07.217025Z  retry  applied  [retry.due "
           "retry:6f1c0000-0000-4000-8000-000000000004:2026-12-07T11:26:05.342487Z:3]\n"
           "2c4906b3c879  provisioning.retry  RetriesExhausted: after 2 retries\n")
    assert script.normalise(raw) == (
        "embedded Redis (redis-server) on redis://127.0.0.1:PORT/0\n"
        "celery worker (2 processes) and beat started; logs in "
        "/tmp/provisioning-demo-XXXXXXXX\n"
        "  v4  YYYY-MM-DDThh:mm:ss.ffffffZ  retry  applied  [retry.due "
        "retry:6f1c0000-0000-4000-8000-000000000004:YYYY-MM-DDThh:mm:ss.ffffffZ:3]\n"
        "ENTRYID  provisioning.retry  RetriesExhausted: after 2 retries\n")
    readme = README.read_text(encoding="utf-8")
    assert script.rewritten(readme, "a run") != readme
    block = readme.split(script.START)[1].split(script.END)[0]
    assert "== records (provisioning list) ==" in block
    assert "== failed tasks ==" in block


# -- what the code shows users cites the docs --------------------------------------------------


def shown_strings() -> Iterator[tuple[str, str]]:
    """(where, text) of every string literal in the product code that is not a docstring:
    error messages, CLI help, problem details, the OpenAPI document."""
    for package in ("worker", "statemachine"):
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                          if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                               ast.AsyncFunctionDef))
                          and node.body and isinstance(node.body[0], ast.Expr)
                          and isinstance(node.body[0].value, ast.Constant)}
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                        and id(node) not in docstrings:
                    yield f"{path.relative_to(ROOT)}:{node.lineno}", node.value


SHOWN = list(shown_strings())


def test_messages_cite_the_docs_not_the_spec_or_the_readme() -> None:
    cited = [(where, text) for where, text in SHOWN
             if "SPEC §" in text or "SPEC.md" in text or 'README "' in text]
    assert not cited


def test_every_docs_reference_in_a_message_resolves() -> None:
    references = [(where, found) for where, text in SHOWN
                  for found in re.finditer(r"docs/(?P<file>[\w-]+\.md)(?:#(?P<anchor>[\w-]+))?",
                                           text)]
    assert len(references) >= 5
    for where, found in references:
        page = ROOT / "docs" / found["file"]
        assert page.exists(), f"{where}: {found[0]}"
        if found["anchor"]:
            assert found["anchor"] in anchors(page), f"{where}: {found[0]}"

