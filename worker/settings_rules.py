"""What each setting means and which values it takes: the rules ``Settings.from_env``
checks once at start, and the text of docs/configuration.md's table
(``scripts/settings_table.py`` writes it from these).

A setting's rule lives in its dataclass field's metadata (``setting(...)``), so the field,
its default, its check and its documentation are one line of ``worker/settings.py``.
Rules that relate two settings (the visibility timeout against the hard task limit, a cap
against its base) are ``Settings.from_env``'s cross-checks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import Field, dataclass
from typing import Any
from urllib.parse import urlsplit

RULE = "provisioning.rule"  # the metadata key of a field's Rule


@dataclass(frozen=True)
class Rule:
    """One setting's meaning and the values it takes.

    ``above``/``minimum``/``maximum`` bound a number (``above`` excludes the bound);
    ``choices`` lists the accepted words (compared without case); ``schemes`` the URL
    schemes a URL may have (it must also name a host, or a path for ``unix``);
    ``nonblank`` refuses an empty or blank word. ``default_text`` is what
    docs/configuration.md shows as the default when the field's own default is not the
    whole story (None: computed elsewhere); ``wording`` replaces the generated rule text."""

    meaning: str
    default_text: str | None = None
    above: float | None = None
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    schemes: tuple[str, ...] = ()
    nonblank: bool = False
    wording: str | None = None

    def text(self) -> str:
        """The rule in words, as an error line and docs/configuration.md's "allowed" column
        say it."""
        if self.wording:
            return self.wording
        if self.choices:
            return "must be one of " + ", ".join(self.choices)
        if self.schemes:
            return "must be a URL starting " + " or ".join(f"{s}://" for s in self.schemes)
        if self.above == 0:
            return "must be positive"
        if self.above is not None:
            return f"must be more than {_number(self.above)}"
        if self.minimum == 0 and self.maximum is None:
            return "must not be negative"
        if self.minimum is not None and self.maximum is not None:
            return f"must be from {_number(self.minimum)} to {_number(self.maximum)}"
        if self.minimum is not None:
            return f"must be at least {_number(self.minimum)}"
        if self.nonblank:
            return "must not be empty"
        return "any text"

    def broken_by(self, value: Any) -> bool:
        """True when ``value`` (already converted to the field's type) breaks the rule."""
        if value is None:
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return True
        if isinstance(value, int | float):
            return ((self.above is not None and value <= self.above)
                    or (self.minimum is not None and value < self.minimum)
                    or (self.maximum is not None and value > self.maximum))
        text = str(value)
        if self.choices and text.lower() not in {c.lower() for c in self.choices}:
            return True
        if self.schemes and not _url_ok(text, self.schemes):
            return True
        return self.nonblank and not text.strip()


def setting(meaning: str, **rule: Any) -> Mapping[str, Rule]:
    """A field's metadata: ``field(default=…, metadata=setting("meaning", above=0))``."""
    return {RULE: Rule(meaning, **rule)}


def rule_of(item: Field[Any]) -> Rule:
    """The Rule of a settings field (every field has one; a test keeps it so)."""
    found = item.metadata.get(RULE)
    if not isinstance(found, Rule):
        raise LookupError(f"the setting {item.name} has no rule (worker/settings.py)")
    return found


def _url_ok(text: str, schemes: tuple[str, ...]) -> bool:
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - reading it raises ValueError on a bad port
    except ValueError:
        return False
    if parts.scheme.lower() not in schemes:
        return False
    return bool(parts.netloc) or (parts.scheme == "unix" and bool(parts.path))


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)
