"""What a backend call comes to: ``CallResult``, and ``CallFailure`` when it failed for good."""

from __future__ import annotations

from dataclasses import dataclass

from statemachine.effects import BackendStep
from statemachine.table import ERROR_MESSAGE_MAX, EXCEPTION_DETAILS_MAX
from statemachine.text import truncate


@dataclass(frozen=True)
class CallFailure:
    """Why a call failed for good, in the terms msdyn_exceptiondetails needs (SPEC §4)."""

    step: BackendStep
    transient: bool
    status: int | None
    error_class: str
    body_start: str
    attempts: int
    reason: str = ""  # what was wrong, when status and body do not say it

    def details(self) -> str:
        """Multi-line text for msdyn_exceptiondetails; always fits EXCEPTION_DETAILS_MAX."""
        kind = "transient, tries exhausted" if self.transient else "permanent"
        lines = [
            f"step: {self.step.value}",
            f"error: {self.error_class} ({kind})",
            f"status: {self.status if self.status is not None else 'none'}",
            f"attempts: {self.attempts}",
        ]
        if self.reason:
            lines.append(f"reason: {self.reason}")
        lines.append("body start:")
        lines.append(self.body_start)
        return truncate("\n".join(lines), EXCEPTION_DETAILS_MAX)

    def summary(self) -> str:
        """One line for msdyn_errormessage: the step and the status or error class."""
        text = f"{self.step.value} failed: {self.error_class}"
        if self.status is not None and not self.error_class.startswith("HTTP "):
            text += f" (HTTP {self.status})"
        if self.attempts > 1:
            text += f" after {self.attempts} tries"
        return truncate(" ".join(text.split()), ERROR_MESSAGE_MAX)


@dataclass(frozen=True)
class CallResult:
    """The outcome of one call: ``ok`` with what the step returns, or its ``failure``."""

    step: BackendStep
    ok: bool
    response: str | None = None
    test_id: str | None = None
    failure: CallFailure | None = None
    attempts: int = 1


def failed(failure: CallFailure) -> CallResult:
    return CallResult(failure.step, ok=False, failure=failure, attempts=failure.attempts)
