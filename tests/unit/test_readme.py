"""The README documents what the code defines: every setting, column, choice and lookup."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

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


def _settings_table() -> Any:
    spec = importlib.util.spec_from_file_location(
        "settings_table", Path(__file__).parents[2] / "scripts" / "settings_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_configuration_table_is_the_one_the_settings_generate() -> None:
    """scripts/settings_table.py writes it; run it after changing a setting."""
    script = _settings_table()
    assert script.rewritten(README) == README, (
        "README's configuration table is stale: run .venv/bin/python scripts/settings_table.py")


def test_the_table_check_catches_a_hand_edit() -> None:
    script = _settings_table()
    edited = README.replace("| `PROVISIONING_LEASE_SECONDS` | `30.0` |",
                            "| `PROVISIONING_LEASE_SECONDS` | `45.0` |")
    assert edited != README
    assert script.rewritten(edited) == README
    for name in setting_names():
        assert f"| `{PREFIX}{name.upper()}` |" in script.table()
