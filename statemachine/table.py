"""The ``msdyn_ocprovisioningstate`` table as data (SPEC §1, seed reference).

Every column, choice value, lookup and delete rule is defined here once; the
record codec, the machines, the store's indexes and the docs' tests all read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum, StrEnum

ENTITY = "msdyn_ocprovisioningstate"
ENTITY_SET = "msdyn_ocprovisioningstates"
PRIMARY_KEY = "msdyn_ocprovisioningstateid"
FORMATTED = "@OData.Community.Display.V1.FormattedValue"


class StateCode(IntEnum):
    """statecode: derived from statuscode, never set directly."""

    ACTIVE = 0
    INACTIVE = 1

    @property
    def label(self) -> str:
        return self.name.title()


class StatusReason(IntEnum):
    """statuscode (status reason). Base table: 192350001-4; Customer Service: 5-6."""

    DRAFT = 192350001
    PROCESSING = 192350002
    RUNNING = 192350003
    ERROR = 192350004
    DEPROVISIONING = 192350005
    DEPROVISIONED = 192350006

    @property
    def label(self) -> str:
        return self.name.title()

    @property
    def statecode(self) -> StateCode:
        # Seed: only Deprovisioned carries "State: 1".
        if self is StatusReason.DEPROVISIONED:
            return StateCode.INACTIVE
        return StateCode.ACTIVE

    @classmethod
    def from_label(cls, label: str) -> StatusReason:
        return cls[label.upper()]


class GateKeeperStatus(IntEnum):
    """msdyn_gatekeeperstatus (choice, may be unset)."""

    ACTIVE = 715240000
    INACTIVE = 715240001

    @property
    def label(self) -> str:
        return self.name.title()


class GateKeeperReason(IntEnum):
    """msdyn_gatekeeperstatusreason (choice, may be unset)."""

    RUNNING = 0
    ERROR = 1
    DEPROVISIONED = 2

    @property
    def label(self) -> str:
        return self.name.title()


class AutomatedCallingStatus(IntEnum):
    """msdyn_automatedcallingstatus (choice, required, default NotTested)."""

    NOT_TESTED = 0
    SUCCESS = 1
    FAILURE = 2
    IN_PROGRESS = 3

    @property
    def label(self) -> str:
        return {0: "NotTested", 1: "Success", 2: "Failure", 3: "InProgress"}[self.value]

    @classmethod
    def from_label(cls, label: str) -> AutomatedCallingStatus:
        for member in cls:
            if member.label == label:
                return member
        raise KeyError(label)


class ColumnType(StrEnum):
    UUID = "uuid"
    TEXT = "text"
    MEMO = "memo"
    STATE = "state"
    STATUS = "status"
    CHOICE = "choice"
    LOOKUP = "lookup"
    DATETIME = "datetime"
    INTEGER = "integer"


class RequiredLevel(StrEnum):
    SYSTEM = "SystemRequired"
    APPLICATION = "ApplicationRequired"
    NONE = "None"


@dataclass(frozen=True, slots=True)
class Column:
    """One column: its logical name, the record attribute that holds it, and its rules."""

    logical_name: str
    attribute: str
    column_type: ColumnType
    required: RequiredLevel
    max_length: int | None = None
    choices: type[Enum] | None = None


class DeleteRule(StrEnum):
    """What deleting a lookup's parent does to the rows that point at it."""

    CASCADE = "Cascade"  # the provisioning-state row is deleted
    REMOVE_LINK = "RemoveLink"  # the lookup is set to null


@dataclass(frozen=True, slots=True)
class Lookup:
    """A lookup column with its parent (SPEC §1.2, seed many-to-one relationships)."""

    column: str
    parent_table: str
    navigation_property: str
    parent_entity_set: str
    on_parent_delete: DeleteRule

    @property
    def value_property(self) -> str:
        """The read form's ``_<column>_value`` property."""
        return f"_{self.column}_value"

    @property
    def bind_property(self) -> str:
        """The write form's ``<navigation property>@odata.bind`` (case-sensitive)."""
        return f"{self.navigation_property}@odata.bind"


LOOKUPS: tuple[Lookup, ...] = (
    Lookup("msdyn_ocfbapplicationid", "msdyn_ocfbapplication", "msdyn_ocfbapplicationid",
           "msdyn_ocfbapplications", DeleteRule.REMOVE_LINK),
    Lookup("msdyn_ocfbpageid", "msdyn_ocfbpage", "msdyn_ocfbpageid",
           "msdyn_ocfbpages", DeleteRule.REMOVE_LINK),
    Lookup("msdyn_oclinechannelconfigid", "msdyn_oclinechannelconfig",
           "msdyn_oclinechannelconfigid", "msdyn_oclinechannelconfigs", DeleteRule.REMOVE_LINK),
    Lookup("msdyn_octeamschannelconfigid", "msdyn_octeamschannelconfig",
           "msdyn_octeamschannelconfigid", "msdyn_octeamschannelconfigs", DeleteRule.REMOVE_LINK),
    # Seed: ReferencingEntityNavigationPropertyName is msdyn_ocwhatsappchannelaccountId.
    Lookup("msdyn_ocwhatsappchannelaccountid", "msdyn_ocwhatsappchannelaccount",
           "msdyn_ocwhatsappchannelaccountId", "msdyn_ocwhatsappchannelaccounts",
           DeleteRule.CASCADE),
    Lookup("msdyn_phonenumberid", "msdyn_ocphonenumber", "msdyn_phonenumberid",
           "msdyn_ocphonenumbers", DeleteRule.REMOVE_LINK),
    Lookup("msdyn_voicechannelsettingid", "msdyn_ocvoicechannelsetting",
           "msdyn_voicechannelsettingid", "msdyn_ocvoicechannelsettings", DeleteRule.CASCADE),
    Lookup("msdyn_communicationprovidersettingid", "msdyn_occommunicationprovidersetting",
           "msdyn_communicationprovidersettingid", "msdyn_occommunicationprovidersettings",
           DeleteRule.REMOVE_LINK),
)
LOOKUP_BY_COLUMN: dict[str, Lookup] = {lookup.column: lookup for lookup in LOOKUPS}
LOOKUP_BY_PARENT: dict[str, Lookup] = {lookup.parent_table: lookup for lookup in LOOKUPS}
LOOKUP_COLUMNS: tuple[str, ...] = tuple(lookup.column for lookup in LOOKUPS)


class ChannelKind(StrEnum):
    FACEBOOK = "facebook"
    LINE = "line"
    TEAMS = "teams"
    WHATSAPP = "whatsapp"
    VOICE = "voice"
    PHONENUMBER = "phonenumber"

    @property
    def lookup(self) -> Lookup:
        """The lookup column that identifies a channel of this kind (set from ``channel.id``)."""
        return LOOKUP_BY_COLUMN[CHANNEL_LOOKUP[self]]


CHANNEL_LOOKUP: dict[ChannelKind, str] = {
    ChannelKind.FACEBOOK: "msdyn_ocfbpageid",
    ChannelKind.LINE: "msdyn_oclinechannelconfigid",
    ChannelKind.TEAMS: "msdyn_octeamschannelconfigid",
    ChannelKind.WHATSAPP: "msdyn_ocwhatsappchannelaccountid",
    ChannelKind.VOICE: "msdyn_voicechannelsettingid",
    ChannelKind.PHONENUMBER: "msdyn_phonenumberid",
}

NAME_MAX = 100
EXCEPTION_DETAILS_MAX = 8192
ERROR_MESSAGE_MAX = 8192
PROVISIONING_RESPONSE_MAX = 2000

COLUMNS: tuple[Column, ...] = (
    Column(PRIMARY_KEY, "id", ColumnType.UUID, RequiredLevel.SYSTEM),
    Column("msdyn_name", "name", ColumnType.TEXT, RequiredLevel.APPLICATION, NAME_MAX),
    Column("statecode", "statecode", ColumnType.STATE, RequiredLevel.SYSTEM, choices=StateCode),
    Column("statuscode", "status", ColumnType.STATUS, RequiredLevel.NONE, choices=StatusReason),
    Column("msdyn_gatekeeperstatus", "gatekeeper_status", ColumnType.CHOICE,
           RequiredLevel.NONE, choices=GateKeeperStatus),
    Column("msdyn_gatekeeperstatusreason", "gatekeeper_reason", ColumnType.CHOICE,
           RequiredLevel.NONE, choices=GateKeeperReason),
    Column("msdyn_automatedcallingstatus", "calling_status", ColumnType.CHOICE,
           RequiredLevel.APPLICATION, choices=AutomatedCallingStatus),
    Column("msdyn_exceptiondetails", "exception_details", ColumnType.MEMO,
           RequiredLevel.APPLICATION, EXCEPTION_DETAILS_MAX),
    Column("msdyn_errormessage", "error_message", ColumnType.MEMO, RequiredLevel.NONE,
           ERROR_MESSAGE_MAX),
    Column("msdyn_provisioningresponse", "provisioning_response", ColumnType.MEMO,
           RequiredLevel.NONE, PROVISIONING_RESPONSE_MAX),
    *(Column(lookup.column, lookup.column, ColumnType.LOOKUP, RequiredLevel.NONE)
      for lookup in LOOKUPS),
    Column("createdon", "created_on", ColumnType.DATETIME, RequiredLevel.SYSTEM),
    Column("modifiedon", "modified_on", ColumnType.DATETIME, RequiredLevel.SYSTEM),
    Column("versionnumber", "version", ColumnType.INTEGER, RequiredLevel.SYSTEM),
)
COLUMN_BY_NAME: dict[str, Column] = {column.logical_name: column for column in COLUMNS}
