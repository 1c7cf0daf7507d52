"""Text the worker writes itself is cut to fit its column, visibly (SPEC §1)."""

from __future__ import annotations


def truncate(text: str, max_length: int) -> str:
    """Return ``text`` unchanged when it fits, else its start plus a marker, within ``max_length``.

    The marker says how many characters were cut, e.g. ``… [truncated 12345 chars]``.
    """
    if len(text) <= max_length:
        return text
    # The marker's own length depends on the count it names; two passes settle it.
    cut = len(text) - max_length
    for _ in range(3):
        marker = f"… [truncated {cut} chars]"
        keep = max(max_length - len(marker), 0)
        cut = len(text) - keep
    marker = f"… [truncated {cut} chars]"
    return (text[:keep] + marker)[:max_length]
