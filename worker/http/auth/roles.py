"""Who may do what (SPEC §8): three roles, each allowed what the one below it may.

    reader     every GET
    submitter  reader, and POST /api/v1/events
    operator   everything: replay, discard

Microsoft Entra app roles (the JWT's ``roles`` claim) map onto them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum


class Role(IntEnum):
    """Ordered: a role may do everything a lower one may."""

    READER = 1
    SUBMITTER = 2
    OPERATOR = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Role:
        """``reader``, ``submitter`` or ``operator`` (any case); ValueError otherwise."""
        for role in cls:
            if role.label == text.strip().lower():
                return role
        raise ValueError(f"not a role: {text!r} (one of reader, submitter, operator)")


# Microsoft Entra ID app roles, as the application's manifest declares them.
APP_ROLES: dict[str, Role] = {
    "Provisioning.Reader": Role.READER,
    "Provisioning.Submitter": Role.SUBMITTER,
    "Provisioning.Operator": Role.OPERATOR,
}


def role_from_app_roles(roles: Iterable[object]) -> Role | None:
    """The highest role the claim's app roles grant; None when it names none of ours."""
    granted = [APP_ROLES[name] for name in roles if isinstance(name, str) and name in APP_ROLES]
    return max(granted) if granted else None


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a request is: the name actions are audited under, the role, and how it signed
    in (``token`` or ``oidc``). Never taken from anything the request declares."""

    name: str
    role: Role
    via: str

    def may(self, needed: Role) -> bool:
        return self.role >= needed
