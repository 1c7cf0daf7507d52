"""The browser tests: the operator console in a real headless Chromium, Debian's
(``apt-get install chromium``; ``.ci/run`` installs it), driven by Playwright for Python
pointed at that executable (Playwright's own browser download is never used). Without a
Chromium they skip, except under CI=true, where they fail.

Every page a test opens is watched (tests/browser/watch.py): a console error, an uncaught
exception, a failed request or an asset answered with an error fails the test.
Screenshots go to the test's tmp dir, or to docs/ (docs/console-<name>.png) with
CONSOLE_SCREENSHOTS=1, so a normal run never changes the tree.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
CHROMIUM = os.environ.get("CONSOLE_CHROMIUM", "/usr/bin/chromium")
DOCS = Path(__file__).resolve().parents[2] / "docs"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium for the module's tests. Module-scoped, not session-scoped:
    Playwright's sync API keeps an event loop running in the main thread while it is
    open, and every later test that runs a loop of its own (anyio.run) would fail."""
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        message = f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)"
        if IN_CI:
            pytest.fail(f"{message}; CI=true needs it")
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def screenshots(tmp_path: Path) -> Any:
    """``shoot(page, name)``: a full-page PNG, in docs/ with CONSOLE_SCREENSHOTS=1."""
    folder = DOCS if os.environ.get("CONSOLE_SCREENSHOTS") == "1" else tmp_path

    def shoot(page: Any, name: str) -> Path:
        folder.mkdir(exist_ok=True)
        path = folder / f"console-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return shoot
