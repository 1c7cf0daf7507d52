"""The package as a newcomer installs it: a build backend that builds, a licence, one
version, a lock the image installs from, no redundant dependency, a changelog per release."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
VERSION = PYPROJECT["project"]["version"]


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_the_build_backend_reads_the_spdx_licence() -> None:
    """``license = "MIT"`` (PEP 639) needs setuptools 77 or later."""
    [requirement] = PYPROJECT["build-system"]["requires"]
    match = re.fullmatch(r"setuptools>=(\d+)(\.\d+)*", requirement)
    assert match and int(match.group(1)) >= 77
    assert PYPROJECT["project"]["license"] == "MIT"
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text(encoding="utf-8").startswith("MIT License")


def test_no_direct_dependency_another_one_pins() -> None:
    names = [_name(r) for r in PYPROJECT["project"]["dependencies"]]
    assert "kombu" not in names  # celery pins the kombu it works with
    assert len(names) == len(set(names))


def test_every_dependency_is_locked_in_constraints() -> None:
    text = (ROOT / "constraints.txt").read_text(encoding="utf-8")
    pinned = {_name(line) for line in text.splitlines()
              if line and not line.startswith(("#", " "))}
    for requirement in PYPROJECT["project"]["dependencies"]:
        assert _name(requirement) in pinned, requirement
    assert "bash scripts/lock" in text  # says how it is refreshed


def test_the_changelog_has_a_section_and_a_link_per_release() -> None:
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## \[([^\]]+)\](?: - (\d{4}-\d\d-\d\d))?$", text, re.MULTILINE)
    assert headings[0] == ("Unreleased", "")
    assert (VERSION, headings[1][1]) == headings[1] and headings[1][1]
    for name, _ in headings:
        assert re.search(rf"^\[{re.escape(name)}\]: https://\S+$", text, re.MULTILINE), name


def test_the_deploy_manifests_run_this_version() -> None:
    for path in (ROOT / "deploy" / "kubernetes").glob("*.yaml"):
        for image in re.findall(r"image: \S*provisioning-state-worker:(\S+)",
                                path.read_text(encoding="utf-8")):
            assert image == VERSION, path.name
