"""The invariants of SPEC §2.4, checked on every outcome. A violation is a bug and raises."""

from __future__ import annotations

from statemachine.errors import InvariantViolation
from statemachine.machines import GateKeeper
from statemachine.record import ProvisioningState
from statemachine.table import (
    ERROR_MESSAGE_MAX,
    EXCEPTION_DETAILS_MAX,
    NAME_MAX,
    PROVISIONING_RESPONSE_MAX,
    StateCode,
    StatusReason,
)
from statemachine.text import utf16_length


def violations(record: ProvisioningState) -> list[str]:
    """Every invariant (1-6) that ``record`` breaks, as readable lines; empty when none."""
    found: list[str] = []
    deprovisioned = record.status is StatusReason.DEPROVISIONED
    if (record.statecode is StateCode.INACTIVE) != deprovisioned:
        found.append("1: statecode is 1 exactly when statuscode is Deprovisioned")
    gate = GateKeeper.from_pair(*record.gatekeeper)
    if gate is None:
        found.append(f"2: GateKeeper pair {record.gatekeeper} is not one of the four states")
    if record.status is StatusReason.RUNNING and gate is not GateKeeper.ACTIVE_RUNNING:
        found.append("3: a Running record has GateKeeper (Active, Running)")
    if deprovisioned and gate not in (GateKeeper.UNSET, GateKeeper.INACTIVE_DEPROVISIONED):
        found.append("4: a Deprovisioned record has GateKeeper unset or (Inactive, Deprovisioned)")
    if record.status is StatusReason.ERROR and not record.exception_details:
        found.append("5: an Error record has exception details")
    for label, text, limit in (
        ("msdyn_name", record.name, NAME_MAX),
        ("msdyn_exceptiondetails", record.exception_details, EXCEPTION_DETAILS_MAX),
        ("msdyn_errormessage", record.error_message, ERROR_MESSAGE_MAX),
        ("msdyn_provisioningresponse", record.provisioning_response, PROVISIONING_RESPONSE_MAX),
    ):
        if text is not None and utf16_length(text) > limit:
            found.append(f"6: {label} is within {limit} UTF-16 code units")
    return found


def check(record: ProvisioningState) -> None:
    """Raise InvariantViolation when ``record`` breaks an invariant."""
    found = violations(record)
    if found:
        raise InvariantViolation(f"record {record.id} v{record.version}: " + "; ".join(found))
