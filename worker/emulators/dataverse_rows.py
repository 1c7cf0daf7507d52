"""A ``msdyn_ocprovisioningstates`` row as the Dataverse emulator holds, checks and shows it.

A row is a dict of read-form names (``_<lookup>_value`` for lookups, choices as numbers).
:func:`apply_write` checks a write-form body as Dataverse does and applies it;
:func:`read_form` and :func:`select` show a row as the Web API returns it. Pure functions
over the table facts of ``statemachine``; refusals raise ``dataverse_wire.Failure``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from statemachine import (
    ENTITY,
    ERROR_MESSAGE_MAX,
    EXCEPTION_DETAILS_MAX,
    LOOKUPS,
    NAME_MAX,
    PRIMARY_KEY,
    PROVISIONING_RESPONSE_MAX,
    AutomatedCallingStatus,
    GateKeeperReason,
    GateKeeperStatus,
    StateCode,
    StatusReason,
    utf16_length,
)
from statemachine.table import FORMATTED
from worker.emulators.dataverse_wire import (
    BAD_OPTION,
    INVALID_ARGUMENT,
    ODATA,
    TOO_LONG,
    VERSION_MISMATCH,
    error,
)

__all__ = [
    "CHOICES",
    "FIRST_ROWVERSION",
    "PROPERTIES",
    "apply_write",
    "check_if_match",
    "check_state",
    "defaults",
    "etag",
    "read_form",
    "select",
]

FIRST_ROWVERSION = 1_000_001

TEXT_LIMITS = {"msdyn_name": NAME_MAX, "msdyn_exceptiondetails": EXCEPTION_DETAILS_MAX,
               "msdyn_errormessage": ERROR_MESSAGE_MAX,
               "msdyn_provisioningresponse": PROVISIONING_RESPONSE_MAX}
CHOICES: dict[str, type[Any]] = {
    "statuscode": StatusReason, "statecode": StateCode,
    "msdyn_gatekeeperstatus": GateKeeperStatus,
    "msdyn_gatekeeperstatusreason": GateKeeperReason,
    "msdyn_automatedcallingstatus": AutomatedCallingStatus,
}
NULLABLE_CHOICES = frozenset({"msdyn_gatekeeperstatus", "msdyn_gatekeeperstatusreason"})
BIND_BY_NAME = {lookup.bind_property: lookup for lookup in LOOKUPS}
READ_ONLY = frozenset({"createdon", "modifiedon", "versionnumber",
                       *(lookup.value_property for lookup in LOOKUPS)})
PROPERTIES: tuple[str, ...] = (
    PRIMARY_KEY, "msdyn_name", "statecode", "statuscode", "msdyn_gatekeeperstatus",
    "msdyn_gatekeeperstatusreason", "msdyn_automatedcallingstatus", "msdyn_exceptiondetails",
    "msdyn_errormessage", "msdyn_provisioningresponse",
    *(lookup.value_property for lookup in LOOKUPS), "createdon", "modifiedon",
    "versionnumber",
)
_BIND_VALUE = re.compile(r"^/?(?P<set>[A-Za-z0-9_]+)\((?P<id>[0-9a-fA-F-]{36})\)$")


def defaults() -> dict[str, Any]:
    """The columns of a new row: Active, Draft (this emulator's default status), calling
    test NotTested, everything else null."""
    return {"statecode": 0, "statuscode": int(StatusReason.DRAFT),
            "msdyn_gatekeeperstatus": None, "msdyn_gatekeeperstatusreason": None,
            "msdyn_automatedcallingstatus": 0, "msdyn_exceptiondetails": None,
            "msdyn_errormessage": None, "msdyn_provisioningresponse": None,
            **{lookup.value_property: None for lookup in LOOKUPS}}


def etag(row: Mapping[str, Any]) -> str:
    """Dataverse's weak etag: the row's versionnumber."""
    return f'W/"{row["versionnumber"]}"'


def check_if_match(row: Mapping[str, Any], headers: Mapping[str, str]) -> None:
    """412 when ``If-Match`` (lower-cased headers) names another version than the row's."""
    expected = headers.get("if-match")
    if expected and expected != "*" and expected != etag(row):
        raise error(412, VERSION_MISMATCH, "The version of the existing record doesn't "
                                           "match the RowVersion property provided.")


def apply_write(row: dict[str, Any], payload: Mapping[str, Any]) -> None:
    """Check and apply a write-form body to ``row`` (400 on anything Dataverse refuses)."""
    for name, value in payload.items():
        if name.startswith("@odata."):
            continue
        if name.endswith("@odata.bind"):
            lookup = BIND_BY_NAME.get(name)
            if lookup is None:
                raise error(400, ODATA, f"An undeclared property "
                            f"'{name.split('@')[0]}' which only has property annotations "
                            "in the payload but no property value was found in the "
                            "payload. In OData, only declared navigation properties and "
                            "declared named streams can be represented as properties "
                            "without values.")
            if value is None:
                row[lookup.value_property] = None
                continue
            match = _BIND_VALUE.match(str(value))
            if match is None or match.group("set") != lookup.parent_entity_set:
                raise error(400, ODATA, f"The value of {name} must be "
                            f"/{lookup.parent_entity_set}(<id>), not {value!r}.")
            row[lookup.value_property] = match.group("id").lower()
            continue
        if name in READ_ONLY or name not in PROPERTIES or name == PRIMARY_KEY:
            raise error(400, ODATA, f"The property '{name}' does not exist on type "
                        f"'Microsoft.Dynamics.CRM.{ENTITY}'. Make sure to only use "
                        "property names that are defined by the type.")
        if name in CHOICES:
            row[name] = _choice(name, value)
        elif name in TEXT_LIMITS:
            if value is not None and not isinstance(value, str):
                raise error(400, ODATA, f"Cannot convert the literal '{value}' to the "
                                        f"expected type 'Edm.String' ({name}).")
            if value is not None and utf16_length(value) > TEXT_LIMITS[name]:
                raise error(400, TOO_LONG, f"A validation error occurred. The length of "
                            f"the '{name}' attribute of the '{ENTITY}' entity exceeded "
                            f"the maximum allowed length of '{TEXT_LIMITS[name]}'.")
            row[name] = value or None  # Dataverse stores an empty string as null


def check_state(row: Mapping[str, Any], payload: Mapping[str, Any] | None = None) -> None:
    """400 unless the row's statuscode belongs to its statecode.

    ``payload`` is the update's body; None checks a new row, which must be Active.
    """
    status = StatusReason(row["statuscode"])
    state = StateCode(row["statecode"])
    if payload is None:
        if status.statecode is not StateCode.ACTIVE:
            raise error(400, INVALID_ARGUMENT, f"statuscode {int(status)} is not valid for "
                        "statecode 0 (Active), the state of a new row.")
        return
    if ("statecode" in payload) != ("statuscode" in payload) and status.statecode != state:
        raise error(400, INVALID_ARGUMENT, "statecode and statuscode must be written "
                                           "together.")
    if status.statecode != state:
        raise error(400, INVALID_ARGUMENT, f"statuscode {row['statuscode']} is not "
                    f"valid for statecode {row['statecode']}.")


def read_form(row: Mapping[str, Any], *, annotations: bool) -> dict[str, Any]:
    """The row as the Web API returns it, with FormattedValue annotations if asked."""
    form: dict[str, Any] = {"@odata.etag": etag(row)}
    for name in PROPERTIES:
        form[name] = row.get(name)
        if annotations and name in CHOICES and row.get(name) is not None:
            form[f"{name}{FORMATTED}"] = CHOICES[name](row[name]).label
    return form


def select(row: Mapping[str, Any], params: Mapping[str, str],
           headers: Mapping[str, str]) -> dict[str, Any]:
    """The read form narrowed by ``$select`` (400 on an unknown property), annotated when
    ``Prefer: odata.include-annotations`` asks for FormattedValue (or "*")."""
    prefer = headers.get("prefer", "")
    annotations = "odata.include-annotations" in prefer and (
        "FormattedValue" in prefer or '"*"' in prefer)
    full = read_form(row, annotations=annotations)
    if "$select" not in params:
        return full
    wanted = [name.strip() for name in params["$select"].split(",") if name.strip()]
    for name in wanted:
        if name not in PROPERTIES:
            raise error(400, ODATA, f"Could not find a property named '{name}' on type "
                        f"'Microsoft.Dynamics.CRM.{ENTITY}'.")
    keep = {"@odata.etag", PRIMARY_KEY, *wanted}
    return {k: v for k, v in full.items() if k.split("@")[0] in keep or k in keep}


def _choice(name: str, value: object) -> int | None:
    if value is None and name in NULLABLE_CHOICES:
        return None
    try:
        return int(CHOICES[name](value))
    except (ValueError, TypeError):
        raise error(400, BAD_OPTION, f"{value!r} is not a valid value for the {name} "
                                     "option set.") from None
