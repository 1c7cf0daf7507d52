"""The demo sample README.md shows is what ``provisioning demo`` prints today: a fresh run,
normalised as scripts/demo_output.py documents, equals the committed sample."""

from __future__ import annotations

import difflib
import importlib.util
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _script() -> Any:
    spec = importlib.util.spec_from_file_location("demo_output",
                                                  ROOT / "scripts" / "demo_output.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_demo_sample_is_a_fresh_runs_output() -> None:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("the demo sample is checked on an embedded redis-server: none on PATH")
        pytest.skip("no redis-server on PATH for the demo's embedded Redis")
    script = _script()
    readme = script.README.read_text(encoding="utf-8")
    fresh = script.rewritten(readme, script.run_demo())
    assert fresh == readme, "README's demo sample is stale: run scripts/demo_output.py\n" + "".join(
        difflib.unified_diff(readme.splitlines(keepends=True), fresh.splitlines(keepends=True),
                             "README.md", "this run"))
