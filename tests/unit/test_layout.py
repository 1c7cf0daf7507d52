"""The layout of docs/design.md "Layout": each package's public surface is its ``__init__``'s
``__all__``, and the read-only commands load neither Celery nor httpx."""

from __future__ import annotations

import importlib
import subprocess
import sys
from types import ModuleType

import pytest

PACKAGES = ["statemachine", "worker", "worker.backends", "worker.bootstrap", "worker.cli",
            "worker.dataverse", "worker.emulators", "worker.http", "worker.http.auth",
            "worker.ops", "worker.service", "worker.store"]


def public_names(package: ModuleType) -> set[str]:
    """What the package's namespace offers: every name not private, not a submodule, and
    not the ``annotations`` feature of ``from __future__``."""
    return {name for name, value in vars(package).items()
            if not name.startswith("_") and not isinstance(value, ModuleType)
            and name != "annotations"}


@pytest.mark.parametrize("name", PACKAGES)
def test_every_packages_all_is_exactly_its_public_names(name: str) -> None:
    package = importlib.import_module(name)
    listed = package.__all__
    assert len(listed) == len(set(listed)), "a name is listed twice"
    offered = public_names(package)
    lazy = {item for item in listed if item not in offered and hasattr(package, item)}
    assert set(listed) == offered | lazy
    assert all(hasattr(package, item) for item in listed)


@pytest.mark.parametrize("command", ["worker.cli.records", "worker.cli.failed",
                                     "worker.cli.diagram"])
def test_read_only_commands_load_neither_celery_nor_httpx_nor_structlog(command: str) -> None:
    probe = (f"import sys, importlib; importlib.import_module({command!r}); "
             "print(sorted(m for m in ('celery', 'httpx', 'kombu', 'fakeredis', 'structlog') "
             "if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert loaded == "[]"
