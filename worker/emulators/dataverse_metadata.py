"""The Dataverse emulator's metadata and ``WhoAmI``: what ``provisioning dataverse check``
reads, built from the table in code, with differences a test can plant.

    GET /api/data/v9.2/WhoAmI
    GET /api/data/v9.2/EntityDefinitions(LogicalName='<table>')          (+ Attributes)
    GET …/EntityDefinitions(LogicalName='<table>')/Attributes/Microsoft.Dynamics.CRM.<cast>
        (String, Memo, Picklist, Status, State, Lookup ``AttributeMetadata``)
    GET …/EntityDefinitions(LogicalName='<table>')/ManyToOneRelationships

The answers have the Web API's shapes (``OptionSet.Options[].Label.UserLocalizedLabel``,
``State`` on a status option, ``Targets``, ``ReferencingEntityNavigationPropertyName``,
``CascadeConfiguration``); ``$select`` and ``$expand`` are accepted and the whole document
is answered. ``EmulatedSchema.plant`` (admin API ``POST /_dataverse/metadata``) changes
what they answer, not what the emulated Web API accepts:

    {"column": "msdyn_name", "max_length": 80}
    {"column": "msdyn_automatedcallingstatus", "drop_option": 3}
    {"column": "statuscode", "add_option": {"value": 192350007, "label": "Paused", "state": 0}}
    {"column": "msdyn_ocwhatsappchannelaccountid", "navigation_property": "x"}
    {"column": "msdyn_errormessage", "remove": true}
    {"table": "missing"}
    {"parent": "msdyn_ocfbpage", "entity_set": "x"}      (null: the parent table is missing)

``GET EntityDefinitions?$filter=LogicalName eq '…' or …`` answers the parent tables'
entity set names.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from enum import Enum
from typing import Any

from statemachine import COLUMNS, ENTITY, ENTITY_SET, LOOKUPS, PRIMARY_KEY
from statemachine.table import ColumnType, StatusReason

API_CONTEXT = "https://emulator/api/data/v9.2/$metadata"
ORGANIZATION_ID = "5e1a0000-0000-4000-8000-0000000000aa"
BUSINESS_UNIT_ID = "5e1a0000-0000-4000-8000-0000000000bb"
ENTITY_NOT_FOUND = "0x80060888"
TYPES = {ColumnType.UUID: "Uniqueidentifier", ColumnType.TEXT: "String",
         ColumnType.MEMO: "Memo", ColumnType.STATE: "State", ColumnType.STATUS: "Status",
         ColumnType.CHOICE: "Picklist", ColumnType.LOOKUP: "Lookup",
         ColumnType.DATETIME: "DateTime", ColumnType.INTEGER: "BigInt"}
_FILTER = re.compile(r"LogicalName eq '([^']*)'")
_PATH = re.compile(r"^EntityDefinitions\(LogicalName='(?P<name>[^']*)'\)"
                   r"(?:/(?P<rest>Attributes/Microsoft\.Dynamics\.CRM\.(?P<cast>\w+)"
                   r"|ManyToOneRelationships))?$")


def _label(text: str) -> dict[str, Any]:
    localized = {"Label": text, "LanguageCode": 1033}
    return {"LocalizedLabels": [localized], "UserLocalizedLabel": localized}


def _options(choices: type[Enum]) -> list[dict[str, Any]]:
    options = []
    for member in choices:
        option: dict[str, Any] = {"Value": int(member.value),
                                  "Label": _label(str(getattr(member, "label", member.name)))}
        if isinstance(member, StatusReason):
            option["State"] = int(member.statecode)
        options.append(option)
    return options


class EmulatedSchema:
    """The organization's metadata for the table; mutable by ``plant``."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Back to the table in code."""
        self.exists = True
        self.attributes: dict[str, dict[str, Any]] = {}
        for column in COLUMNS:
            attribute: dict[str, Any] = {"LogicalName": column.logical_name,
                                         "AttributeType": TYPES[column.column_type],
                                         "MetadataId": str(uuid.uuid5(uuid.NAMESPACE_URL,
                                                                      column.logical_name))}
            if column.max_length is not None:
                attribute["MaxLength"] = column.max_length
            if column.choices is not None:
                attribute["OptionSet"] = {"Options": _options(column.choices)}
                attribute["GlobalOptionSet"] = None
            self.attributes[column.logical_name] = attribute
        self.entity_sets = {ENTITY: ENTITY_SET, **{lookup.parent_table: lookup.parent_entity_set
                                                  for lookup in LOOKUPS}}
        self.relationships: dict[str, dict[str, Any]] = {}
        for lookup in LOOKUPS:
            self.attributes[lookup.column]["Targets"] = [lookup.parent_table]
            self.relationships[lookup.column] = {
                "SchemaName": f"{lookup.parent_table}_{ENTITY}_{lookup.column}",
                "ReferencingAttribute": lookup.column,
                "ReferencedEntity": lookup.parent_table,
                "ReferencingEntityNavigationPropertyName": lookup.navigation_property,
                "CascadeConfiguration": {"Delete": lookup.on_parent_delete.value,
                                         "Assign": "NoCascade", "Share": "NoCascade"},
            }

    def plant(self, change: Mapping[str, Any]) -> None:
        """Make the organization differ (see the module docstring); KeyError or ValueError
        for a change it does not know."""
        if change.get("table") == "missing":
            self.exists = False
            return
        if "parent" in change:
            if change.get("entity_set") is None:
                del self.entity_sets[str(change["parent"])]
            else:
                self.entity_sets[str(change["parent"])] = str(change["entity_set"])
            return
        name = str(change["column"])
        attribute = self.attributes[name]
        if change.get("remove"):
            del self.attributes[name]
            self.relationships.pop(name, None)
        elif "max_length" in change:
            attribute["MaxLength"] = int(change["max_length"])
        elif "drop_option" in change:
            options = attribute["OptionSet"]["Options"]
            attribute["OptionSet"]["Options"] = [o for o in options
                                                 if o["Value"] != int(change["drop_option"])]
        elif "add_option" in change:
            added = change["add_option"]
            option: dict[str, Any] = {"Value": int(added["value"]),
                                      "Label": _label(str(added["label"]))}
            if "state" in added:
                option["State"] = int(added["state"])
            attribute["OptionSet"]["Options"].append(option)
        elif "navigation_property" in change:
            self.relationships[name]["ReferencingEntityNavigationPropertyName"] = str(
                change["navigation_property"])
        else:
            raise ValueError(f"no metadata change in {dict(change)}")

    def answer(self, method: str, segment: str, client_id: str,
               params: Mapping[str, str] | None = None,
               ) -> tuple[int, dict[str, Any]] | None:
        """``(status, body)`` for a metadata or WhoAmI request; None for other paths."""
        if method != "GET":
            return None
        if segment == "EntityDefinitions":
            # Only `$filter=LogicalName eq 'a' or LogicalName eq 'b' …` is understood.
            wanted = _FILTER.findall((params or {}).get("$filter", ""))
            return 200, {"value": [{"LogicalName": name, "EntitySetName": self.entity_sets[name]}
                                   for name in wanted if name in self.entity_sets]}
        if segment == "WhoAmI":
            return 200, {"@odata.context": f"{API_CONTEXT}#Microsoft.Dynamics.CRM."
                                           "WhoAmIResponse",
                         "BusinessUnitId": BUSINESS_UNIT_ID,
                         "UserId": str(uuid.uuid5(uuid.NAMESPACE_URL, client_id)),
                         "OrganizationId": ORGANIZATION_ID}
        match = _PATH.match(segment)
        if match is None:
            return None
        if match.group("name") != ENTITY or not self.exists:
            return 404, {"error": {"code": ENTITY_NOT_FOUND, "message": "Could not find an "
                                   f"entity with name {match.group('name')}"}}
        if match.group("rest") is None:
            return 200, {"@odata.context": f"{API_CONTEXT}#EntityDefinitions/$entity",
                         "LogicalName": ENTITY, "EntitySetName": ENTITY_SET,
                         "PrimaryIdAttribute": PRIMARY_KEY, "PrimaryNameAttribute": "msdyn_name",
                         "Attributes": [{"LogicalName": a["LogicalName"],
                                         "AttributeType": a["AttributeType"],
                                         "MetadataId": a["MetadataId"]}
                                        for a in self.attributes.values()]}
        if match.group("cast") is None:
            return 200, {"value": list(self.relationships.values())}
        kind = match.group("cast").removesuffix("AttributeMetadata")
        if kind not in TYPES.values():
            return 404, {"error": {"code": "0x0", "message": f"Resource not found for the "
                                   f"segment 'Microsoft.Dynamics.CRM.{match.group('cast')}'."}}
        return 200, {"value": [a for a in self.attributes.values()
                               if a["AttributeType"] == kind]}
