"""Every ``provisioning …`` command README.md and docs/ show: each example parses with the
real parser (worker/cli/parser.py), each syntax summary names only what the parser has, and
the ones that need no server run (the README's command-line tour on an in-memory store,
``diagram``, ``--version``, ``completion``)."""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from statemachine.diagram import mermaid
from tests.docs_pages import CODE_SPAN, PAGES, README, ROOT, code_lines, prose
from tests.factories import run_cli_on
from worker.cli import main
from worker.cli.parser import build_parser

# -- the examples --------------------------------------------------------------------------

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

