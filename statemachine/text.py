"""Text lengths as Dataverse counts them, and text the worker writes cut to fit (SPEC §1).

Dataverse (.NET) counts a string's length in UTF-16 code units: a character outside the
Basic Multilingual Plane (most emoji, some CJK) is a surrogate pair and counts 2. Python
counts code points, so every length check against a column's maximum goes through
``utf16_length``, and every cut through ``cut_to_units``, which never splits a pair.
"""

from __future__ import annotations

import re

# A surrogate code point in a Python str is never half of a valid pair (a pair decodes to
# one code point above U+FFFF); JSON escapes like "\ud800" produce them.
_SURROGATE = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def utf16_length(text: str) -> int:
    """The length of ``text`` in UTF-16 code units (a lone surrogate counts 1)."""
    if text.isascii():  # O(1) in CPython (the string's kind), the common case
        return len(text)
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def has_lone_surrogate(text: str) -> bool:
    """True when ``text`` holds a surrogate code point (not valid UTF-8 or UTF-16 text)."""
    return not text.isascii() and _SURROGATE.search(text) is not None


def without_lone_surrogates(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD (same length in units)."""
    return _SURROGATE.sub(REPLACEMENT, text) if has_lone_surrogate(text) else text


def cut_to_units(text: str, max_units: int) -> str:
    """The longest prefix of ``text`` of at most ``max_units`` UTF-16 code units that does
    not end inside a surrogate pair."""
    if max_units <= 0:
        return ""
    if text.isascii() or len(text) <= max_units // 2:  # no pair to split, or all fits
        return text[:max_units]
    encoded = text.encode("utf-16-le", "surrogatepass")
    if len(encoded) <= 2 * max_units:
        return text
    kept = encoded[: 2 * max_units]
    last = int.from_bytes(kept[-2:], "little")
    if 0xD800 <= last <= 0xDBFF:
        kept = kept[:-2]  # the high half of a pair whose low half was cut off
    return kept.decode("utf-16-le", "surrogatepass")


def _marker(cut: int) -> str:
    return f"… [truncated {cut} chars]"


def truncate(text: str, max_length: int) -> str:
    """Return ``text`` unchanged when it fits ``max_length`` UTF-16 code units, else its
    start plus a marker, within ``max_length`` units.

    The marker says how many characters (code points) were cut, e.g.
    ``… [truncated 12345 chars]``. The cut never splits a surrogate pair, and lone
    surrogates (which no column can store) become U+FFFD first, so the result is always
    valid UTF-16.
    """
    text = without_lone_surrogates(text)
    if utf16_length(text) <= max_length:
        return text
    # Reserve room for the longest marker this text can need (the count of a cut never has
    # more digits than the text's length), then give the slack back while it lasts: each
    # pass cuts less, so the marker never grows and the result always fits.
    kept = cut_to_units(text, max_length - len(_marker(len(text))))
    for _ in range(3):
        slack = max_length - utf16_length(kept) - len(_marker(len(text) - len(kept)))
        if slack <= 0:
            break
        longer = cut_to_units(text, utf16_length(kept) + slack)
        if len(longer) == len(kept):
            break
        kept = longer
    marker = _marker(len(text) - len(kept))
    return (kept + marker)[:max_length] if len(marker) > max_length else kept + marker
