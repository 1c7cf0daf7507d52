"""README.md and docs/ document what the code defines, and a reader can find their way in
them: every relative link resolves inside the repository (files and GitHub's #anchors),
nothing points outside it, every ``provisioning …`` example parses with the real parser
(and the ones that need no server run), and the generated parts are not stale."""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
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
from statemachine.diagram import mermaid
from tests.factories import run_cli_on
from worker.cli import main
from worker.cli.parser import build_parser
from worker.settings import PREFIX, setting_names

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
CONTRACT = (ROOT / "docs" / "contract.md").read_text(encoding="utf-8")
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")

# The documents the docs map promises (the lead adds store, tracing and console at merge).
EXPECTED = {"api.md", "benchmarks.md", "cli.md", "configuration.md", "contract.md",
            "dataverse.md", "deploy.md", "design.md", "operations.md"}

FENCE = re.compile(r"^(`{3,}|~{3,})")
LINK = re.compile(r"!?\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
CODE_SPAN = re.compile(r"(`+)(?P<code>.+?)\1")


def _script(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prose(text: str) -> Iterator[str]:
    """The lines outside fenced code blocks."""
    fenced = ""
    for line in text.splitlines():
        opened = FENCE.match(line.strip())
        if opened and not fenced:
            fenced = opened.group(1)[0] * 3
        elif opened and fenced and line.strip().startswith(fenced):
            fenced = ""
        elif not fenced:
            yield line


def code_lines(text: str) -> Iterator[tuple[str, str]]:
    """(language, line) of every line inside a fenced code block."""
    fenced, language = "", ""
    for line in text.splitlines():
        opened = FENCE.match(line.strip())
        if opened and not fenced:
            fenced, language = opened.group(1)[0] * 3, line.strip().lstrip("`~").strip()
        elif opened and fenced and line.strip().startswith(fenced):
            fenced = ""
        elif fenced:
            yield language, line


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: its text (links and code reduced to their text),
    lower-cased, everything but letters, digits, spaces, hyphens and underscores dropped,
    spaces made hyphens."""
    text = LINK.sub(lambda found: found["text"], heading)
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor GitHub makes for a page's headings, a repeated one numbered -1, -2…"""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for line in prose(path.read_text(encoding="utf-8")):
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not heading:
            continue
        base = slug(heading.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> Iterator[str]:
    for line in prose(path.read_text(encoding="utf-8")):
        for found in LINK.finditer(CODE_SPAN.sub("", line)):
            yield found["target"]


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


# -- the CLI examples --------------------------------------------------------------------------

# How a documented command line may begin before `provisioning`.
PREFIXES = re.compile(r"^(?:\$ |sudo )?(?:\.venv/bin/|/opt/provisioning/venv/bin/|"
                      r"docker compose exec (?:-T )?\w+ |kubectl .*? exec \S+ -- )?"
                      r"(?=provisioning(?: |$))")
SHELL_ENDS = {"<", ">", "|", "&", "&&", "||", ";", "2>&1", ">>"}
# A syntax summary rather than an example (`provisioning show ID [--json]`).
SUMMARY = re.compile(r"[\[\]…|<>]|(?:^| )[A-Z][A-Z_]+(?: |$)")
# Files an example names that the reader makes (the rest are in the repository).
READERS_FILES = ("long-name.jsonl",)


def command(line: str) -> list[str] | None:
    """The argv after `provisioning` of one documented command line, or None."""
    found = PREFIXES.match(line.strip())
    if not found:
        return None
    words = shlex.split(line.strip()[found.end():], comments=True)
    argv = []
    for word in words[1:]:
        if word in SHELL_ENDS:
            break
        argv.append(word)
    return argv


def examples() -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str]]] = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for language, line in code_lines(text):
            if language in ("", "sh", "bash", "console", "shell"):
                argv = command(line)
                if argv is not None:
                    found.append((f"{page.name}: {line.strip()}", argv))
        for line in prose(text):
            for span in CODE_SPAN.finditer(line):
                code = span["code"].strip()
                if code.startswith("provisioning ") and not SUMMARY.search(code):
                    argv = command(code)
                    assert argv is not None
                    found.append((f"{page.name}: `{code}` (inline)", argv))
    return found


EXAMPLES = examples()


def test_the_docs_hold_many_cli_examples() -> None:
    assert len(EXAMPLES) > 60
    names = {argv[0] for _, argv in EXAMPLES if argv}
    assert {"submit", "list", "show", "history", "failed", "health", "dataverse", "token",
            "serve", "demo", "diagram"} <= names


@pytest.fixture
def readers_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory like the repository's root, with the files the docs tell the
    reader to write."""
    for entry in ("worker", "deploy", "bench"):
        (tmp_path / entry).symlink_to(ROOT / entry)
    for name in READERS_FILES:
        (tmp_path / name).write_text("{}\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(("where", "argv"), EXAMPLES, ids=[where for where, _ in EXAMPLES])
def test_every_cli_example_parses(where: str, argv: list[str], readers_directory: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """An inline mention of a command by its name alone (`provisioning dataverse skip`) may
    leave out its required arguments; everything else must parse as written."""
    parser = build_parser()
    code: object = 0
    try:
        parsed = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version (0), or a usage error (2)
        code = exc.code
    else:
        assert isinstance(parsed, argparse.Namespace)
    error = capsys.readouterr().err.strip()
    named = where.endswith("(inline)") and not any(word.startswith("-") for word in argv)
    if not (named and "the following arguments are required" in error):
        assert code == 0, f"{where}: {error}"


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _choices(parser: argparse.ArgumentParser) -> set[str]:
    return {str(choice) for action in parser._actions
            if not action.option_strings and action.choices
            and not isinstance(action, argparse._SubParsersAction)
            for choice in action.choices}


def summary_problems(code: str) -> list[str]:
    """What a syntax summary (`provisioning token create --name NAME … \\| list [--json]`)
    names that the parser lacks: a command, an option of its command, or an alternative
    (after `\\|` or a glued `|`) that is neither a sibling command nor a choice."""
    words: list[str] = []
    for word in code.replace("\\|", " \\| ").split()[1:]:
        if word in ("|", "<", ">", "&&", ";"):
            break  # a shell pipe or redirection ends the command
        words.extend(part for part in re.split(r"(\\\||\|)", word) if part)
    path = [build_parser()]
    problems: list[str] = []
    alternative = False
    for raw in words:
        word = raw.strip("[]()…,")
        if word in ("|", "\\|"):
            alternative = True
            continue
        if not word:
            continue
        if alternative and word.islower() and not word.startswith("-"):
            if len(path) > 1 and word in _subcommands(path[-2]):
                path.pop()  # `token create … | list`: a sibling command
            elif word not in _choices(path[-1]):
                problems.append(f"{word}: neither beside {path[-1].prog} nor a choice")
        alternative = False
        current = path[-1]
        if word.startswith("--"):
            if word.split("=")[0] not in {option for action in current._actions
                                          for option in action.option_strings}:
                problems.append(f"{word}: not an option of {current.prog}")
        elif word in _subcommands(current):
            path.append(_subcommands(current)[word])
        elif _subcommands(current) and word.islower():
            problems.append(f"{word}: not a command of {current.prog}")
    return problems


SUMMARIES = [(f"{page.name}: `{span['code'].strip()}`", span["code"].strip())
             for page in PAGES for line in prose(page.read_text(encoding="utf-8"))
             for span in CODE_SPAN.finditer(line)
             if span["code"].strip().startswith("provisioning ")]


@pytest.mark.parametrize(("where", "code"), SUMMARIES, ids=[where for where, _ in SUMMARIES])
def test_every_inline_command_names_real_commands_and_options(where: str, code: str) -> None:
    """Syntax summaries (`provisioning failed list [--since WHEN] [--json]`) too: what
    they name exists in the parser."""
    assert not summary_problems(code), where


def test_a_summary_naming_what_the_parser_lacks_is_caught() -> None:
    assert len(SUMMARIES) > 40
    assert summary_problems("provisioning failed list [--since WHEN] [--bogus]") == [
        "--bogus: not an option of provisioning failed list"]
    assert summary_problems("provisioning tokn revoke NAME") == [
        "tokn: not a command of provisioning", "revoke: not a command of provisioning"]
    assert summary_problems("provisioning token create --name NAME \\| lst") == [
        "lst: neither beside provisioning token create nor a choice"]
    assert summary_problems("provisioning completion bash\\|zsh\\|fsh") == [
        "fsh: neither beside provisioning completion nor a choice"]
    assert summary_problems("provisioning dataverse status\\|check\\|import [--json]") == []
    assert summary_problems("provisioning failed list --json | head") == []


def test_an_example_that_does_not_parse_is_caught(capsys: pytest.CaptureFixture[str]) -> None:
    argv = command("$ provisioning failed replay --all --dry-rum")
    assert argv == ["failed", "replay", "--all", "--dry-rum"]
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    assert "--dry-rum" in capsys.readouterr().err


def test_the_read_only_examples_that_need_no_server_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`provisioning diagram` prints the diagrams design.md shows, word for word;
    `--version` and `completion` answer."""
    design = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    assert main(["diagram"]) == 0
    printed = capsys.readouterr().out
    assert printed.strip() == mermaid().strip()
    for block in re.findall(r"```mermaid\n.*?```", printed, re.DOTALL):
        assert block in design
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("provisioning ")


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_the_completion_examples_run(shell: str) -> None:
    done = subprocess.run(
        [str(Path(sys.executable).with_name("provisioning")), "completion", shell],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "provisioning" in done.stdout


def test_the_readme_command_line_tour_runs_on_a_store(
    memory_service: Any, kicks: Any, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The tour's submit, list, show, history and failed commands, as the README gives them,
    on an in-memory store whose records a stand-in worker drains (no server needed)."""
    run_cli_on(monkeypatch, memory_service)
    monkeypatch.chdir(ROOT)
    tour = [argv for _, line in code_lines(README.read_text(encoding="utf-8"))
            if (argv := command(line)) and argv[0] in ("submit", "list", "show", "history",
                                                       "failed")]
    assert [argv[0] for argv in tour] == ["submit", "list", "show", "history", "failed"]
    for argv in tour:
        assert main(argv) == 0, argv
        for record_id in dict.fromkeys(kicks.records):
            memory_service.drain(record_id)
        kicks.records.clear()
        out = capsys.readouterr().out
        assert out.strip(), argv
        if argv[0] == "show":
            assert json.loads(out)["msdyn_ocprovisioningstateid"] == argv[1]
        if argv[0] == "history":
            assert "provision.requested demo-004" in out


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
    script = _script("settings_table")
    assert script.rewritten(CONFIGURATION) == CONFIGURATION, (
        "docs/configuration.md's table is stale: run .venv/bin/python scripts/settings_table.py")
    assert script.main(["--check"]) == 0


def test_the_table_check_catches_a_hand_edit() -> None:
    script = _script("settings_table")
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
    script = _script("demo_output")
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
