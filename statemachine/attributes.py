"""CloudEvents extension attributes: every attribute of an event beyond the ones the core
reads, kept as it arrived and written back out (stored, shown, replayed; SPEC §3).

The CloudEvents 1.0 rules, checked with the field path and the reason:

* a name is lowercase letters ``a-z`` and digits, at most :data:`NAME_MAX` characters
  (the length CloudEvents asks producers to keep to);
* a value is a string, an integer (a CloudEvents Integer: signed 32 bits) or a boolean;
  ``null`` means absent (the JSON format's rule);
* ``traceparent`` is a W3C Trace Context header value (the distributed-tracing extension);
  ``tracestate`` goes with it.

``datacontenttype`` and ``dataschema`` (optional CloudEvents attributes the core does not
read) are kept the same way. ``data_base64`` (binary data) is refused: data is JSON here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

# The attributes parse_event reads itself; every other one is an extension attribute.
CORE_ATTRIBUTES = frozenset({"specversion", "id", "source", "type", "subject", "time", "data"})
NAME_MAX = 20
VALUE_MAX = 2048  # characters of a string value (a W3C tracestate is at most 512)
COUNT_MAX = 32  # extension attributes per event
INT_MIN, INT_MAX = -(2**31), 2**31 - 1
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

Value = str | int | bool
Extensions = dict[str, Value]

_NAME = re.compile(r"[a-z0-9]+")
# W3C Trace Context: version 00 is exactly these four fields; a later version may append
# more after a dash. Version ff is invalid, and so are all-zero ids.
_TRACEPARENT = re.compile(
    r"(?P<version>[0-9a-f]{2})-(?P<trace>[0-9a-f]{32})-(?P<span>[0-9a-f]{16})-[0-9a-f]{2}"
    r"(?P<rest>-.*)?")

Report = Callable[[str, str], None]


def parse_extensions(raw: Mapping[str, Any], report: Report,
                     show: Callable[[Any], str]) -> Extensions:
    """The extension attributes of ``raw`` (an event's JSON object), in their order; each
    problem goes to ``report(path, reason)``."""
    extensions: Extensions = {}
    if raw.keys() <= CORE_ATTRIBUTES:
        return extensions  # the common case: none at all
    for name, value in raw.items():
        if name in CORE_ATTRIBUTES or value is None:
            continue
        path = name if len(name) <= 60 else name[:57] + "..."
        reason = name_problem(name)
        if reason is None:
            reason = value_problem(name, value, show)
        if reason is not None:
            report(path, reason)
            continue
        extensions[name] = value
    if len(extensions) > COUNT_MAX:
        report("", f"an event carries at most {COUNT_MAX} extension attributes, not "
                   f"{len(extensions)}")
    if TRACESTATE in extensions and TRACEPARENT not in extensions:
        report(TRACESTATE, "goes with a traceparent (W3C Trace Context); this event has none")
    return extensions


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be an attribute name, or None."""
    if name == "data_base64":
        return "is not accepted: an event's data is JSON, in data"
    if not _NAME.fullmatch(name):
        return ("is not a CloudEvents attribute name: names are lowercase letters a-z "
                "and digits 0-9")
    if len(name) > NAME_MAX:
        return (f"is not accepted as an attribute name: at most {NAME_MAX} characters "
                f"(CloudEvents), not {len(name)}")
    return None


def value_problem(name: str, value: Any, show: Callable[[Any], str]) -> str | None:
    """Why ``value`` cannot be the value of attribute ``name``, or None."""
    if isinstance(value, bool):
        return None if name not in (TRACEPARENT, TRACESTATE) else "must be a string"
    if isinstance(value, int):
        if name in (TRACEPARENT, TRACESTATE):
            return "must be a string"
        if not INT_MIN <= value <= INT_MAX:
            return (f"must be an integer from {INT_MIN} to {INT_MAX} (a CloudEvents "
                    f"Integer), not {value}")
        return None
    if not isinstance(value, str):
        kind = "a number" if isinstance(value, float) else (
            "an array" if isinstance(value, list) else "an object")
        return f"must be a string, an integer or a boolean, not {kind}"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be Unicode text, not hold a lone surrogate"
    if len(value) > VALUE_MAX:
        return f"must be at most {VALUE_MAX} characters, not {len(value)}"
    if name == TRACEPARENT and not is_traceparent(value):
        return ("must be a W3C traceparent, 00-<32 hex trace id>-<16 hex parent id>-"
                f"<2 hex flags> (lowercase, ids not all zero), not {show(value)}")
    return None


def is_traceparent(value: str) -> bool:
    """Whether ``value`` is a valid W3C Trace Context ``traceparent``."""
    match = _TRACEPARENT.fullmatch(value)
    if match is None or match["version"] == "ff":
        return False
    if match["version"] == "00" and match["rest"] is not None:
        return False
    return match["trace"] != "0" * 32 and match["span"] != "0" * 16
