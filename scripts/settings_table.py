"""Write the configuration table of docs/configuration.md from the settings themselves
(``worker/settings.py``: each field's default and its ``setting(...)`` rule), between the
markers in that file.

    .venv/bin/python scripts/settings_table.py          # rewrite the table
    .venv/bin/python scripts/settings_table.py --check  # exit 1 when the table is stale

tests/unit/test_docs.py runs the check, so a setting added without regenerating the table
fails the tests.
"""

from __future__ import annotations

import sys
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from worker.settings import PREFIX, BackendSettings, Settings  # noqa: E402
from worker.settings_rules import Rule, rule_of  # noqa: E402

CONFIGURATION = ROOT / "docs" / "configuration.md"
START = "<!-- settings table: written by scripts/settings_table.py, do not edit -->"
END = "<!-- end of settings table -->"


def _default(item: Any, rule: Rule) -> str:
    if rule.default_text is not None:
        return rule.default_text
    value = item.default if item.default is not MISSING else item.default_factory()
    return f"`{value}`"


def _allowed(rule: Rule) -> str:
    if rule.choices:
        return ", ".join(f"`{choice}`" for choice in rule.choices)
    if rule.schemes:
        return "a " + " or ".join(f"`{scheme}://`" for scheme in rule.schemes) + " URL"
    text = rule.text()
    if text.startswith("must not be "):
        return "not " + text.removeprefix("must not be ")
    return text.removeprefix("must be ")


def table() -> str:
    """The markdown table: one row per environment variable, in the fields' order."""
    rows = ["| variable | default | allowed | meaning |", "|---|---|---|---|"]
    for item in fields(Settings):
        items = fields(BackendSettings) if item.name == "backends" else (item,)
        for each in items:
            rule = rule_of(each)
            rows.append(f"| `{PREFIX}{each.name.upper()}` | {_default(each, rule)} | "
                        f"{_allowed(rule)} | {rule.meaning} |")
    return "\n".join(rows)


def rewritten(text: str) -> str:
    """The document's text with the table between the markers replaced."""
    head, start, rest = text.partition(START)
    _, end, tail = rest.partition(END)
    if not start or not end:
        raise SystemExit(f"{CONFIGURATION.name} lacks the markers {START!r} … {END!r}")
    return f"{head}{START}\n{table()}\n{END}{tail}"


def main(argv: list[str]) -> int:
    text = CONFIGURATION.read_text(encoding="utf-8")
    new = rewritten(text)
    if "--check" in argv:
        if new != text:
            print("docs/configuration.md's settings table is stale: run "
                  "`.venv/bin/python scripts/settings_table.py`", file=sys.stderr)
            return 1
        return 0
    CONFIGURATION.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
