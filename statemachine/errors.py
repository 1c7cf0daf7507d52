"""Exceptions of the core. The tree::

    ProvisioningError
    ├── InvalidEvent            an event failed validation (every problem, with its field path)
    ├── InvalidRecord           a Dataverse row or stored record could not be parsed
    ├── InvariantViolation      an outcome broke an invariant of SPEC §2.4 (a bug)
    └── UnknownRecord           an event (not provision.requested) names no existing record
"""

from __future__ import annotations

from dataclasses import dataclass


class ProvisioningError(Exception):
    """Root of every error the core raises."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One validation problem: where (a dotted field path) and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason


class InvalidEvent(ProvisioningError):
    """An event failed validation; ``problems`` lists every problem found, not only the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(str(problem) for problem in problems))


class InvalidRecord(ProvisioningError):
    """A Dataverse row or a stored record could not be read."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(str(problem) for problem in problems))


class InvariantViolation(ProvisioningError):
    """An outcome broke an invariant of SPEC §2.4. This is a bug: never caught to carry on."""


class UnknownRecord(ProvisioningError):
    """An event other than ``provision.requested`` names a record that does not exist."""

    def __init__(self, record_id: str) -> None:
        self.record_id = record_id
        super().__init__(f"record {record_id} does not exist")
