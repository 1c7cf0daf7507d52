"""The console script as a newcomer meets it, run as a process (``.venv/bin/provisioning``):
its version, shell completion, usage errors, a closed pipe, and bad settings. None of these
needs a server: each fails or finishes before the store is reached."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).with_name("provisioning")
UNREACHABLE = "redis://:s3cret@127.0.0.1:1/0"  # nothing listens on port 1


def provisioning(*args: str, env: dict[str, str] | None = None,
                 stdout: int = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONING_")}
    clean["PROVISIONING_REDIS_URL"] = UNREACHABLE
    return subprocess.run(
        [str(SCRIPT), *args], env={**clean, **(env or {})}, stdout=stdout,
        stderr=subprocess.PIPE, text=True, timeout=60, check=False)


def test_version_is_the_package_metadata_which_is_pyproject() -> None:
    done = provisioning("--version")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == f"provisioning {version('provisioning-state-worker')}\n"
    assert version("provisioning-state-worker") == project["version"]


@pytest.mark.parametrize(("shell", "marker"), [
    ("bash", "complete -o"), ("zsh", "#compdef provisioning"),
    ("fish", "complete --command provisioning"),
])
def test_completion_prints_the_shells_script(shell: str, marker: str) -> None:
    done = provisioning("completion", shell)
    assert (done.returncode, done.stderr) == (0, "")
    assert marker in done.stdout


def test_completion_answers_the_shell_with_commands_and_actions(tmp_path: Path) -> None:
    """What the printed scripts do on Tab: run provisioning with argcomplete's variables."""
    answers = tmp_path / "answers"
    for line, expected in (("provisioning fa", {"failed"}),
                           ("provisioning failed re", {"replay"}),
                           ("provisioning completion ", {"bash", "zsh", "fish"})):
        done = provisioning(env={
            "_ARGCOMPLETE": "1", "_ARGCOMPLETE_IFS": "\n", "COMP_LINE": line,
            "COMP_POINT": str(len(line)), "_ARGCOMPLETE_STDOUT_FILENAME": str(answers)})
        assert done.returncode == 0, done.stderr
        offered = {word.strip() for word in answers.read_text().split("\n") if word.strip()}
        assert expected <= offered, (line, offered)


def test_an_unknown_shell_is_a_usage_error() -> None:
    done = provisioning("completion", "powershell")
    assert done.returncode == 2
    assert "invalid choice: 'powershell'" in done.stderr


def test_a_closed_pipe_ends_quietly_with_0() -> None:
    """``provisioning … | head``: the reader is gone before the output is written."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = provisioning("diagram", stdout=write)
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (0, "")


@pytest.mark.parametrize("argv", [
    ["failed", "replay"],
    ["failed", "discard", "--reason", "x"],
    ["failed", "replay", "abc", "--all"],
])
def test_replay_or_discard_without_entries_or_with_both_is_a_usage_error(
    argv: list[str],
) -> None:
    done = provisioning(*argv)
    assert done.returncode == 2
    assert done.stderr == (f"provisioning: failed {argv[1]}: name ENTRY ids or give --all "
                           "(with filters)\n")


@pytest.mark.parametrize("argv", [["list"], ["diagram"], ["health"], ["demo"]])
def test_bad_settings_are_one_line_each_naming_variable_and_rule_exit_2(
    argv: list[str],
) -> None:
    done = provisioning(*argv, env={
        "PROVISIONING_LEASE_SECONDS": "-5", "PROVISIONING_RECOVERY_INTERVAL": "0",
        "PROVISIONING_VISIBILITY_TIMEOUT": "10", "PROVISIONING_LOG_LEVEL": "LOUD",
        "PROVISIONING_REDIS_URL": "redis://:s3cret@127.0.0.1:99999/0",
        "PROVISIONING_BROKER_URL": "notaurl"})
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines() == [
        "provisioning: PROVISIONING_REDIS_URL: must be a URL starting redis:// or rediss:// "
        "or unix:// or redis+cluster:// or rediss+cluster://, not "
        "'redis://:***@127.0.0.1:99999/0'",
        "provisioning: PROVISIONING_BROKER_URL: must be a URL starting redis:// or rediss:// "
        "or unix:// or sentinel:// or amqp:// or amqps:// or pyamqp:// or memory://, not "
        "'notaurl'",
        "provisioning: PROVISIONING_LOG_LEVEL: must be one of DEBUG, INFO, WARNING, ERROR, "
        "CRITICAL, not 'LOUD'",
        "provisioning: PROVISIONING_LEASE_SECONDS: must be at least 1 (it is renewed every "
        "third of it: a shorter lease is lost to one slow Redis round trip), not '-5'",
        "provisioning: PROVISIONING_RECOVERY_INTERVAL: must be positive, not '0'",
        "provisioning: PROVISIONING_VISIBILITY_TIMEOUT: must be more than 90 (the hard task "
        "time limit, the larger of 90 s and 60 % of it: a shorter one redelivers running "
        "tasks), not '10'",
    ]


def test_a_setting_that_breaks_a_cross_check_names_both() -> None:
    done = provisioning("list", env={"PROVISIONING_RETRY_BASE_SECONDS": "60",
                                     "PROVISIONING_RETRY_CAP_SECONDS": "30"})
    assert done.returncode == 2
    assert done.stderr == ("provisioning: PROVISIONING_RETRY_CAP_SECONDS: must be at least "
                           "PROVISIONING_RETRY_BASE_SECONDS (60), not 30\n")
