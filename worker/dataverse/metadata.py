"""``provisioning dataverse check``: sign in, ``WhoAmI``, then compare the organization's
metadata for ``msdyn_ocprovisioningstate`` with the table in code (``statemachine.table``).

What is read (Dataverse Web API v9.2, metadata is never paged):

* ``EntityDefinitions(LogicalName='msdyn_ocprovisioningstate')`` with ``Attributes``
  (logical name and ``AttributeType``): the entity set, primary key and name, every column;
* ``…/Attributes/Microsoft.Dynamics.CRM.StringAttributeMetadata`` and ``MemoAttributeMetadata``
  (``MaxLength``), ``PicklistAttributeMetadata``, ``StatusAttributeMetadata`` and
  ``StateAttributeMetadata`` with their ``OptionSet`` (values, labels, a status's state),
  ``LookupAttributeMetadata`` (``Targets``);
* ``…/ManyToOneRelationships``: each lookup's navigation property name (case-sensitive in
  ``@odata.bind``), parent table and delete rule;
* ``EntityDefinitions?$filter=LogicalName eq '<parent>' or …``: the parent tables' entity
  set names (the ``/<entity set>(<id>)`` of a bind).

A difference is *blocking* when a write the worker can make would be refused: the table,
a column, a relationship or a parent table missing; another type (text and memo
excepted); a max length shorter than ours; a choice value of ours that the organization
lacks, or a status reason in another state; a lookup target, navigation property name or
parent entity set that is not ours. Anything else is a *note*: a longer max length, a
choice value only the organization has (``import`` refuses a row holding it), another
label, another delete rule.

``compare`` is pure (metadata documents in, differences out); ``check_organization`` does
the requests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from statemachine import COLUMNS, ENTITY, ENTITY_SET, LOOKUPS, PRIMARY_KEY
from statemachine.table import Column, ColumnType, StatusReason
from worker.dataverse.client import DataverseClient
from worker.dataverse.errors import DataverseNotFound, DataverseRejected

ENTITY_PATH = f"EntityDefinitions(LogicalName='{ENTITY}')"
# Dataverse AttributeType of each column type of the table in code.
ATTRIBUTE_TYPES: dict[ColumnType, str] = {
    ColumnType.UUID: "Uniqueidentifier", ColumnType.TEXT: "String", ColumnType.MEMO: "Memo",
    ColumnType.STATE: "State", ColumnType.STATUS: "Status", ColumnType.CHOICE: "Picklist",
    ColumnType.LOOKUP: "Lookup", ColumnType.DATETIME: "DateTime", ColumnType.INTEGER: "BigInt",
}
TEXTUAL = frozenset({"String", "Memo"})
# The typed attribute collections read, with what each adds ($select/$expand).
CASTS: dict[str, dict[str, str]] = {
    "StringAttributeMetadata": {"$select": "LogicalName,MaxLength"},
    "MemoAttributeMetadata": {"$select": "LogicalName,MaxLength"},
    "PicklistAttributeMetadata": {"$select": "LogicalName",
                                  "$expand": "OptionSet($select=Options),"
                                             "GlobalOptionSet($select=Options)"},
    "StatusAttributeMetadata": {"$select": "LogicalName", "$expand": "OptionSet($select=Options)"},
    "StateAttributeMetadata": {"$select": "LogicalName", "$expand": "OptionSet($select=Options)"},
    "LookupAttributeMetadata": {"$select": "LogicalName,Targets"},
}


@dataclass(frozen=True)
class Difference:
    """One way the organization's table is not the table in code."""

    column: str  # logical name; the table's own name for a table-level difference
    message: str
    blocking: bool


@dataclass
class OrgMetadata:
    """The metadata documents as the Web API answered them (``value`` arrays unwrapped)."""

    entity: dict[str, Any] | None  # None: the table does not exist
    casts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    relationships: list[dict[str, Any]] = field(default_factory=list)
    parents: list[dict[str, Any]] | None = None  # the parent tables' LogicalName, EntitySetName


@dataclass
class CheckReport:
    url: str
    credential: str
    whoami: dict[str, Any]
    differences: list[Difference]
    compared: int  # columns compared

    @property
    def blocking(self) -> list[Difference]:
        return [d for d in self.differences if d.blocking]

    @property
    def ok(self) -> bool:
        return not self.blocking

    def summary(self) -> str:
        """One line: what blocks, for the mirror's status and the import's refusal."""
        blocking = self.blocking
        if not blocking:
            return "the organization's table matches the table in code"
        return (f"{len(blocking)} blocking difference{'s' if len(blocking) != 1 else ''} in "
                f"{ENTITY}: " + "; ".join(f"{d.column}: {d.message}" for d in blocking))

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "credential": self.credential, "whoami": self.whoami,
                "compared": self.compared, "ok": self.ok,
                "differences": [asdict(d) for d in self.differences]}

    def lines(self) -> list[str]:
        """The report as ``dataverse check`` prints it."""
        who = self.whoami
        out = [f"organization  {self.url}",
               f"signed in     with {self.credential} credentials",
               f"WhoAmI        user {who.get('UserId')}, business unit "
               f"{who.get('BusinessUnitId')}, organization {who.get('OrganizationId')}",
               f"compared      {ENTITY}: {self.compared} columns, their types, lengths, "
               "choices and lookups"]
        for difference in sorted(self.differences, key=lambda d: (not d.blocking, d.column)):
            tag = "BLOCKING" if difference.blocking else "note    "
            out.append(f"{tag}      {difference.column}: {difference.message}")
        blocking = len(self.blocking)
        notes = len(self.differences) - blocking
        if blocking:
            out.append(f"result        {blocking} blocking, {notes} note{'s' * (notes != 1)}: "
                       "writes would be refused; the mirror and the import will not start")
        else:
            out.append(f"result        ok ({notes} note{'s' * (notes != 1)})")
        return out


def _label(option: Mapping[str, Any]) -> str | None:
    label = option.get("Label")
    if not isinstance(label, Mapping):
        return None
    user = label.get("UserLocalizedLabel")
    if isinstance(user, Mapping) and user.get("Label"):
        return str(user["Label"])
    for localized in label.get("LocalizedLabels") or ():
        if isinstance(localized, Mapping) and localized.get("Label"):
            return str(localized["Label"])
    return None


def _options(attribute: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    for key in ("OptionSet", "GlobalOptionSet"):
        option_set = attribute.get(key)
        if isinstance(option_set, Mapping) and isinstance(option_set.get("Options"), list):
            return [o for o in option_set["Options"] if isinstance(o, Mapping)]
    return []


def _by_name(rows: Iterable[Mapping[str, Any]], key: str = "LogicalName",
             ) -> dict[str, Mapping[str, Any]]:
    return {str(row.get(key)): row for row in rows}


def compare(org: OrgMetadata) -> list[Difference]:
    """Every difference between ``org`` and the table in code (pure)."""
    if org.entity is None:
        return [Difference(ENTITY, "the table does not exist in the organization (is the "
                           "Omnichannel for Customer Service solution installed?)", True)]
    found: list[Difference] = []
    entity = org.entity
    for key, ours in (("EntitySetName", ENTITY_SET), ("PrimaryIdAttribute", PRIMARY_KEY),
                      ("PrimaryNameAttribute", "msdyn_name")):
        theirs = entity.get(key)
        if theirs is not None and theirs != ours:
            found.append(Difference(ENTITY, f"{key} is {theirs!r} in the organization, "
                                    f"{ours!r} in code", True))
    attributes = _by_name(entity.get("Attributes") or [])
    for column in COLUMNS:
        attribute = attributes.get(column.logical_name)
        if attribute is None:
            found.append(Difference(column.logical_name, "the column does not exist in the "
                                    "organization", True))
            continue
        found.extend(_compare_column(column, attribute, org))
    found.extend(_compare_lookups(org))
    return found


def _compare_column(column: Column, attribute: Mapping[str, Any],
                    org: OrgMetadata) -> list[Difference]:
    name = column.logical_name
    ours = ATTRIBUTE_TYPES[column.column_type]
    theirs = str(attribute.get("AttributeType"))
    if theirs != ours and not {ours, theirs} <= TEXTUAL:
        return [Difference(name, f"is a {theirs} column in the organization, a {ours} "
                           "in code", True)]
    found: list[Difference] = []
    if theirs != ours:
        found.append(Difference(name, f"is a {theirs} column in the organization, a {ours} "
                                "in code (both hold text)", False))
    if column.max_length is not None:
        typed = _by_name(org.casts.get(f"{theirs}AttributeMetadata", []))
        length = typed.get(name, {}).get("MaxLength")
        if isinstance(length, int) and length < column.max_length:
            found.append(Difference(name, f"max length {length} in the organization, "
                         f"{column.max_length} in code: longer text would be refused "
                         "(0x80044331)", True))
        elif isinstance(length, int) and length > column.max_length:
            found.append(Difference(name, f"max length {length} in the organization, "
                         f"{column.max_length} in code: the worker writes at most "
                         f"{column.max_length}", False))
    if column.choices is not None:
        found.extend(_compare_choices(name, column.choices,
                                      _by_name(org.casts.get(f"{theirs}AttributeMetadata",
                                                             [])).get(name, {})))
    return found


def _compare_choices(name: str, choices: type[Enum],
                     attribute: Mapping[str, Any]) -> list[Difference]:
    options = {int(o["Value"]): o for o in _options(attribute)
               if isinstance(o.get("Value"), int)}
    found: list[Difference] = []
    for member in choices:
        value = int(member.value)
        label = str(getattr(member, "label", member.name))
        option = options.get(value)
        if option is None:
            found.append(Difference(name, f"value {value} ({label}) is not an option in the "
                                    "organization: writing it would be refused", True))
            continue
        theirs = _label(option)
        if theirs is not None and theirs != label:
            found.append(Difference(name, f"value {value} is labelled {theirs!r} in the "
                                    f"organization, {label!r} in code", False))
        if isinstance(member, StatusReason) and isinstance(option.get("State"), int) \
                and option["State"] != int(member.statecode):
            found.append(Difference(name, f"value {value} ({label}) belongs to state "
                                    f"{option['State']} in the organization, "
                                    f"{int(member.statecode)} in code: the pair would be "
                                    "refused", True))
    known = {int(member.value) for member in choices}
    for value in sorted(set(options) - known):
        found.append(Difference(name, f"value {value} ({_label(options[value])}) exists only "
                                "in the organization: import refuses a row holding it", False))
    return found


def _compare_lookups(org: OrgMetadata) -> list[Difference]:
    found: list[Difference] = []
    targets = _by_name(org.casts.get("LookupAttributeMetadata", []))
    relationships = _by_name(org.relationships, "ReferencingAttribute")
    parents = None if org.parents is None else _by_name(org.parents)
    for lookup in LOOKUPS:
        parent_set = None if parents is None else parents.get(lookup.parent_table, {}).get(
            "EntitySetName", "")
        if parent_set is not None and parent_set != lookup.parent_entity_set:
            found.append(Difference(lookup.column, (
                f"the parent table {lookup.parent_table} does not exist in the organization"
                if not parent_set else
                f"the parent's entity set is {parent_set!r} in the organization, "
                f"{lookup.parent_entity_set!r} in code") + ": @odata.bind would fail", True))
        attribute = targets.get(lookup.column)
        if attribute is not None and lookup.parent_table not in (attribute.get("Targets") or []):
            found.append(Difference(lookup.column, f"targets {attribute.get('Targets')} in the "
                                    f"organization, not {lookup.parent_table}", True))
        relationship = relationships.get(lookup.column)
        if relationship is None:
            found.append(Difference(lookup.column, "no many-to-one relationship in the "
                                    f"organization: @odata.bind to {lookup.parent_entity_set} "
                                    "would fail", True))
            continue
        navigation = relationship.get("ReferencingEntityNavigationPropertyName")
        if navigation != lookup.navigation_property:
            found.append(Difference(lookup.column, f"navigation property is {navigation!r} in "
                                    f"the organization, {lookup.navigation_property!r} in code "
                                    "(case-sensitive in @odata.bind)", True))
        parent = relationship.get("ReferencedEntity")
        if parent is not None and parent != lookup.parent_table:
            found.append(Difference(lookup.column, f"points at {parent} in the organization, "
                                    f"{lookup.parent_table} in code", True))
        cascade = relationship.get("CascadeConfiguration")
        delete = cascade.get("Delete") if isinstance(cascade, Mapping) else None
        if delete is not None and delete != lookup.on_parent_delete.value:
            found.append(Difference(lookup.column, f"deleting the parent does {delete} in the "
                                    f"organization, {lookup.on_parent_delete.value} in the "
                                    "worker (parent.deleted events)", False))
    return found


def read_metadata(client: DataverseClient) -> OrgMetadata:
    """The metadata documents ``compare`` needs (9 GETs; DataverseError when one fails)."""
    try:
        entity = client.get_json(ENTITY_PATH, {
            "$select": "LogicalName,EntitySetName,PrimaryIdAttribute,PrimaryNameAttribute",
            "$expand": "Attributes($select=LogicalName,AttributeType)"})
    except DataverseNotFound:
        return OrgMetadata(None)
    org = OrgMetadata(entity)
    for cast, params in CASTS.items():
        org.casts[cast] = _values(client.get_json(
            f"{ENTITY_PATH}/Attributes/Microsoft.Dynamics.CRM.{cast}", params))
    org.relationships = _values(client.get_json(f"{ENTITY_PATH}/ManyToOneRelationships", {
        "$select": "ReferencingAttribute,ReferencedEntity,"
                   "ReferencingEntityNavigationPropertyName,CascadeConfiguration"}))
    org.parents = _values(client.get_json("EntityDefinitions", {
        "$select": "LogicalName,EntitySetName",
        "$filter": " or ".join(f"LogicalName eq '{lookup.parent_table}'"
                               for lookup in LOOKUPS)}))
    return org


def _values(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = body.get("value")
    if not isinstance(rows, list):
        raise DataverseRejected("invalid_response", "a metadata collection has no value array")
    return [row for row in rows if isinstance(row, dict)]


def check_organization(client: DataverseClient) -> CheckReport:
    """Sign in, ask ``WhoAmI``, read and compare the metadata (raises DataverseError when
    the organization cannot be reached or refuses the sign-in)."""
    client.tokens.token()
    whoami = client.get_json("WhoAmI")
    differences = compare(read_metadata(client))
    return CheckReport(url=client.settings.url, credential=client.settings.credential,
                       whoami={k: v for k, v in whoami.items() if not k.startswith("@")},
                       differences=differences, compared=len(COLUMNS))
