"""The README documents what the code defines: every setting, column, choice and lookup."""

from __future__ import annotations

from pathlib import Path

import pytest

from statemachine import COLUMNS, LOOKUPS, AutomatedCallingStatus, Lookup, StatusReason
from worker.settings import PREFIX, setting_names

README = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", setting_names())
def test_every_setting_is_in_the_readme(name: str) -> None:
    assert f"`{PREFIX}{name.upper()}`" in README


@pytest.mark.parametrize("column", [c.logical_name for c in COLUMNS if c.logical_name
                                    not in ("createdon", "modifiedon", "versionnumber")])
def test_every_column_is_in_the_readme(column: str) -> None:
    assert column in README


@pytest.mark.parametrize("lookup", LOOKUPS, ids=lambda lookup: lookup.column)
def test_every_lookup_with_its_navigation_property_and_rule_is_in_the_readme(
    lookup: Lookup,
) -> None:
    [row] = [line for line in README.splitlines() if line.startswith(f"| `{lookup.column}` |")
             and "parent" not in line and lookup.parent_table in line]
    assert f"`{lookup.navigation_property}`" in row
    assert lookup.on_parent_delete.value in row


@pytest.mark.parametrize("status", list(StatusReason), ids=lambda s: s.label)
def test_every_status_reason_value_is_in_the_readme(status: StatusReason) -> None:
    assert f"| {int(status)} | {status.label} | {int(status.statecode)} |" in README


@pytest.mark.parametrize("choice", list(AutomatedCallingStatus), ids=lambda c: c.label)
def test_every_calling_status_is_in_the_readme(choice: AutomatedCallingStatus) -> None:
    assert f"{int(choice)} {choice.label}" in README
