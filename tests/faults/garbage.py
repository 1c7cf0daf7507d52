"""Malformed events for the fault suite, generated up front and deterministically.

hypothesis draws a pool of arbitrary JSON values (nested garbage, odd numbers, any text)
once, with ``derandomize=True``; a seeded ``random.Random`` then mutates valid events of
every type (SPEC §3) with them. Each :class:`Input` says what the worker must do with it
(``expect``) and, for an invalid one, the field path its refusal must name (``path``):
the expectation comes from SPEC §3 by construction, never from the worker's own parser.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

VALID = "valid"  # must be applied (it provisions a record of its own)
INVALID = "invalid"  # must be refused at submit, or kept in the failed-task store
UNKNOWN = "unknown_record"  # valid, for a record that does not exist: failed-task store
EITHER = "valid_or_refused"  # valid JSON no parser should choke on: applied or refused

KINDS = ("facebook", "line", "teams", "whatsapp", "voice", "phonenumber")
COLUMNS = ("msdyn_ocfbapplicationid", "msdyn_communicationprovidersettingid",
           "msdyn_phonenumberid")
TABLES = ("msdyn_ocfbpage", "msdyn_ocphonenumber", "msdyn_occommunicationprovidersetting")
BAD_UUIDS = ("not-a-uuid", "", " ", "0", "12345678-1234-1234-1234-12345678901",
             "12345678-1234-1234-1234-1234567890123", "g2345678-1234-1234-1234-123456789012",
             "12345678_1234_1234_1234_123456789012", "null", "undefined", "{}",
             "12345678-1234-1234-1234-123456789012x", "../../etc/passwd")


@dataclass(frozen=True)
class Input:
    """One input. ``value`` is a JSON value (what a client would send); ``line`` the bytes of
    a JSON Lines line when they are not simply ``json.dumps(value)``; ``path`` the field
    path an invalid input's refusal must name ("" for the whole event)."""

    number: int
    label: str
    expect: str
    value: Any
    path: str = ""
    line: bytes | None = None

    @property
    def event_id(self) -> str | None:
        value = self.value
        if isinstance(value, dict) and isinstance(value.get("id"), str):
            return value["id"]
        return None

    @property
    def subject(self) -> str | None:
        value = self.value
        if isinstance(value, dict) and isinstance(value.get("subject"), str):
            return value["subject"]
        return None

    def jsonl(self) -> bytes:
        if self.line is not None:
            return self.line
        return json.dumps(self.value, ensure_ascii=self.number % 2 == 0).encode("utf-8")


def junk_pool(size: int) -> list[Any]:
    """``size`` arbitrary JSON values, the same on every run."""
    leaves = (st.none() | st.booleans() | st.integers() | st.floats()
              | st.text(max_size=30))
    junk = st.recursive(leaves, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                        max_leaves=25)
    pool: list[Any] = []

    @settings(max_examples=size, database=None, derandomize=True, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(junk)
    def collect(value: Any) -> None:
        pool.append(value)

    collect()
    return pool


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


class Garbage:
    """Builds inputs; ``make(n)`` gives n of them, valid ones mixed in."""

    def __init__(self, seed: int, prefix: str, pool_size: int = 400) -> None:
        self.rng = random.Random(seed)
        self.prefix = prefix
        self.pool = junk_pool(pool_size)
        self.count = 0
        weighted: list[tuple[int, Callable[[dict[str, Any]], tuple[Any, str]]]] = [
            (8, self._drop_required), (6, self._null_required), (8, self._wrong_type),
            (3, self._bad_specversion), (3, self._empty_text), (3, self._oversized_id),
            (8, self._bad_subject), (6, self._unknown_type), (4, self._bad_time),
            (20, self._bad_data), (8, self._nested_garbage), (4, self._not_an_object),
            (4, self._bad_extension),
        ]
        self._mutations = [m for _, m in weighted]
        self._weights = [w for w, _ in weighted]

    # -- valid events ------------------------------------------------------------------

    def _id(self) -> str:
        self.count += 1
        return f"{self.prefix}-{self.count}-{self.rng.getrandbits(32):08x}"

    def _envelope(self, kind: str, subject: str | None, data: Any) -> dict[str, Any]:
        event: dict[str, Any] = {"specversion": "1.0", "id": self._id(),
                                 "source": "fault-suite", "type": kind}
        if subject is not None:
            event["subject"] = subject
        if self.rng.random() < 0.5:
            event["time"] = "2026-11-27T10:00:00Z"
        if data is not None or self.rng.random() < 0.3:
            event["data"] = data
        return event

    def provision(self) -> dict[str, Any]:
        kind = self.rng.choice(KINDS)
        data: dict[str, Any] = {"name": f"Contoso {self.rng.randrange(10**6)}",
                                "channel": {"kind": kind, "id": _uuid(self.rng)}}
        if self.rng.random() < 0.5:
            data["links"] = {"msdyn_communicationprovidersettingid": _uuid(self.rng)}
        return self._envelope("provision.requested", _uuid(self.rng), data)

    def any_valid(self) -> dict[str, Any]:
        """A valid event of any type (for a record that does not exist, but provision)."""
        rng = self.rng
        kind = rng.choice(("provision.requested", "deprovision.requested",
                           "gatekeeper.reported", "calling_test.requested",
                           "calling_test.completed", "parent.deleted"))
        subject = _uuid(rng)
        if kind == "provision.requested":
            return self.provision()
        if kind in ("deprovision.requested", "calling_test.requested"):
            return self._envelope(kind, subject, rng.choice((None, {})))
        if kind == "gatekeeper.reported":
            status, reason = rng.choice((("Active", "Running"), ("Inactive", "Error"),
                                         ("Inactive", "Deprovisioned")))
            return self._envelope(kind, subject, {"status": status, "reason": reason,
                                                  "details": "probe"})
        if kind == "calling_test.completed":
            return self._envelope(kind, subject, {"result": rng.choice(("Success", "Failure")),
                                                  "test_id": _uuid(rng)})
        return self._envelope(kind, None, {"table": rng.choice(TABLES), "id": _uuid(rng)})

    # -- mutations: each returns (value, the field path its refusal must name) -----------

    def _junk(self, *, allow: Callable[[Any], bool] = lambda _: True) -> Any:
        for _ in range(50):
            value = self.rng.choice(self.pool)
            if allow(value):
                return value
        return [self.rng.choice(self.pool)]  # an array: never a string, never an object

    def _not_string(self) -> Any:
        return self._junk(allow=lambda v: v is not None and not isinstance(v, str))

    def _drop_required(self, event: dict[str, Any]) -> tuple[Any, str]:
        keys = ["specversion", "id", "source", "type"]
        if event["type"] != "parent.deleted":
            keys.append("subject")
        key = self.rng.choice(keys)
        del event[key]
        return event, key

    def _null_required(self, event: dict[str, Any]) -> tuple[Any, str]:
        key = self.rng.choice(["specversion", "id", "source", "type"])
        event[key] = None
        return event, key

    def _wrong_type(self, event: dict[str, Any]) -> tuple[Any, str]:
        key = self.rng.choice(["specversion", "id", "source", "type", "subject"])
        event[key] = self._not_string()
        return event, key

    def _bad_specversion(self, event: dict[str, Any]) -> tuple[Any, str]:
        event["specversion"] = self.rng.choice(["0.3", "1", "1.0 ", "2.0", "", 1.0, 1])
        return event, "specversion"

    def _empty_text(self, event: dict[str, Any]) -> tuple[Any, str]:
        # Not a blank id: two events with the same (invalid) id share a failed-task entry.
        key = self.rng.choice(["id", "source", "type"])
        event[key] = "" if key == "id" else self.rng.choice(["", "   ", "\t\n"])
        return event, key

    def _oversized_id(self, event: dict[str, Any]) -> tuple[Any, str]:
        key = self.rng.choice(["id", "source"])
        event[key] = f"{event['id']}-" + "x" * self.rng.choice([257, 1000, 70_000])
        return event, key

    def _bad_subject(self, event: dict[str, Any]) -> tuple[Any, str]:
        event["subject"] = self.rng.choice(BAD_UUIDS) if self.rng.random() < 0.8 else (
            event.get("subject", _uuid(self.rng))[:-1] + "z")
        return event, "subject"

    def _unknown_type(self, event: dict[str, Any]) -> tuple[Any, str]:
        event["type"] = self.rng.choice([
            "provision.requested.v2", "Provision.Requested", "provision", "deleted",
            "com.example.other", "calling_test", "gatekeeper.reported ", "x" * 3000])
        return event, "type"

    def _bad_time(self, event: dict[str, Any]) -> tuple[Any, str]:
        event["time"] = self.rng.choice([
            "yesterday", "2026-13-45T10:00:00Z", "27/11/2026", "", 1764237600, True,
            ["2026-11-27T10:00:00Z"], {"at": "now"}])
        return event, "time"

    def _extension_value(self) -> Any:
        """A valid extension attribute value (CloudEvents: a string, a 32-bit integer, a
        boolean; null means absent), from the junk pool when it holds one."""
        def valid(value: Any) -> bool:
            if isinstance(value, str):
                return len(value) <= 2048 and not any(0xD800 <= ord(c) <= 0xDFFF
                                                      for c in value)
            return value is None or isinstance(value, bool) or (
                isinstance(value, int) and -(2**31) <= value < 2**31)
        value = self._junk(allow=valid)
        return value if valid(value) else "contoso"

    def _bad_extension(self, event: dict[str, Any]) -> tuple[Any, str]:
        """An extension attribute CloudEvents does not allow: a bad name or value."""
        if self.rng.random() < 0.5:
            name = self.rng.choice(["Tenant", "ten_ant", "TENANT2", "x" * 21, "data_base64"])
            event[name] = "contoso"
            return event, name
        name = f"ext{self.rng.randrange(9)}"
        event[name] = self._junk(allow=lambda v: isinstance(v, float | list | dict) or (
            isinstance(v, int) and not isinstance(v, bool) and not -(2**31) <= v < 2**31))
        return event, name

    def _not_an_object(self, event: dict[str, Any]) -> tuple[Any, str]:
        value = self._junk(allow=lambda v: not isinstance(v, dict))
        return self.rng.choice([value, [event], json.dumps(event)]), ""

    def _nested_garbage(self, event: dict[str, Any]) -> tuple[Any, str]:
        """``data`` replaced by deep junk that cannot be valid for the event's type."""
        kind = event["type"]
        if kind in ("deprovision.requested", "calling_test.requested"):
            event["data"] = self._junk(allow=lambda v: v not in (None, {}))
            return event, "data"
        junk = self._junk(allow=lambda v: isinstance(v, dict | list) and v not in ({}, []))
        if isinstance(junk, dict):
            required = {"provision.requested": "name", "gatekeeper.reported": "status",
                        "calling_test.completed": "result", "parent.deleted": "table"}[kind]
            junk = {k: v for k, v in junk.items() if k != required}
            event["data"] = {**junk, "deep": self._deep()}
            return event, "data"
        event["data"] = [junk, self._deep()]
        return event, "data"

    def _deep(self) -> Any:
        value: Any = self.rng.choice(self.pool)
        for depth in range(self.rng.randrange(5, 60)):
            value = {f"k{depth}": value} if depth % 2 else [value, depth]
        return value

    def _bad_data(self, event: dict[str, Any]) -> tuple[Any, str]:
        rng = self.rng
        kind = event["type"]
        data = event.get("data")
        if kind in ("deprovision.requested", "calling_test.requested"):
            event["data"] = rng.choice([{"name": "x"}, [], "", 0, False, [None]])
            return event, "data"
        if not isinstance(data, dict) or rng.random() < 0.1:
            event["data"] = rng.choice([None, [], "data", 7, True])
            return event, "data"
        if kind == "provision.requested":
            return event, self._bad_provision(data)
        if kind == "gatekeeper.reported":
            choice = rng.randrange(4)
            if choice == 0:
                data["status"] = rng.choice(["Actif", "On", "", None, 1])
                return event, "data.status"
            if choice == 1:
                data["reason"] = rng.choice(["Stopped", "running ", [], None])
                return event, "data.reason"
            if choice == 2:
                data["status"], data["reason"] = "Active", rng.choice(["Error", "Deprovisioned"])
                return event, "data.reason"
            data["details"] = "d" * rng.choice([8193, 20_000])
            return event, "data.details"
        if kind == "calling_test.completed":
            choice = rng.randrange(3)
            if choice == 0:
                data["result"] = rng.choice(["Maybe", "success", "InProgress", "NotTested", 1])
                return event, "data.result"
            if choice == 1:
                data["test_id"] = "t" * 300
                return event, "data.test_id"
            data["details"] = self._not_string()
            return event, "data.details"
        if rng.random() < 0.5:
            data["table"] = rng.choice(["msdyn_ocprovisioningstate", "account", "", 5])
            return event, "data.table"
        data["id"] = rng.choice(BAD_UUIDS)
        return event, "data.id"

    def _bad_provision(self, data: dict[str, Any]) -> str:
        rng = self.rng
        choice = rng.randrange(9)
        if choice == 0:
            del data["name"]
            return "data.name"
        if choice == 1:
            data["name"] = rng.choice(["", "   ", 5, None, ["Contoso"], {"en": "Contoso"}])
            return "data.name"
        if choice == 2:  # oversized: just past the limit, or huge
            data["name"] = "N" * rng.choice([101, 102, 5000, 200_000, 1_000_000]
                                            if rng.random() < 0.05 else [101, 102, 5000])
            return "data.name"
        if choice == 3:
            data["channel"] = rng.choice([None, "whatsapp", [], 1])
            return "data.channel"
        if choice == 4:
            data["channel"]["kind"] = rng.choice(["fax", "WhatsApp", "", None, 3, "sms"])
            return "data.channel.kind"
        if choice == 5:
            data["channel"]["id"] = rng.choice([*BAD_UUIDS, None, 42])
            return "data.channel.id"
        if choice == 6:
            data["links"] = rng.choice(["msdyn_phonenumberid", [], 3, True])
            return "data.links"
        if choice == 7:
            column = f"msdyn_unknown{rng.randrange(100)}id"
            data["links"] = {column: _uuid(rng)}
            return f"data.links.{column}"
        column = rng.choice(COLUMNS)
        data["links"] = {column: rng.choice([*BAD_UUIDS[:6], 7, ["x"]])}
        return f"data.links.{column}"

    # -- the mix -----------------------------------------------------------------------

    def one(self, number: int, *, valid_share: float, unknown_share: float) -> Input:
        draw = self.rng.random()
        if draw < valid_share:
            event = self.provision()
            if self.rng.random() < 0.2:  # extension attributes are kept, not an error
                event[f"ext{self.rng.randrange(9)}"] = self._extension_value()
            return Input(number, "valid", VALID, event)
        if draw < valid_share + unknown_share:
            event = self.any_valid()
            while event["type"] in ("provision.requested", "parent.deleted"):
                event = self.any_valid()  # these two apply to no existing record
            return Input(number, "unknown record", UNKNOWN, event)
        event = self.any_valid()
        mutate = self.rng.choices(self._mutations, weights=self._weights)[0]
        value, path = mutate(event)
        return Input(number, mutate.__name__.strip("_").replace("_", " "), INVALID, value,
                     path)

    def make(self, count: int, *, start: int = 1, valid_share: float = 0.05,
             unknown_share: float = 0.01) -> list[Input]:
        return [self.one(number, valid_share=valid_share, unknown_share=unknown_share)
                for number in range(start, start + count)]


def not_json_lines(rng: random.Random, count: int, start: int) -> list[Input]:
    """JSON Lines lines that are not JSON at all (the CLI's own way in)."""
    shapes = [b"{not json", b"{'id': 'single quotes'}", b'{"id": "evt", }', b"provision",
              b'{"specversion": "1.0"', b"]", b"\x00\x01\x02", b'"unterminated',
              b"{}{}", b'{"a": 1} trailing', b"tru", b"NaNa", b"0x10", b"--", b"{" * 20]
    out = []
    for number in range(start, start + count):
        line = rng.choice(shapes)
        if rng.random() < 0.2:
            line = line + bytes(rng.choice(b"abc{}[]:,\"") for _ in range(rng.randrange(1, 50)))
        if line.strip() in (b"", b"{}"):
            line = b"{not json"
        out.append(Input(number, "not json", INVALID, None, "", line))
    return out


def non_utf8_lines(rng: random.Random, count: int, start: int) -> list[Input]:
    """Lines with bytes that are not UTF-8 (RFC 8259 §8.1: JSON text is UTF-8)."""
    out = []
    for number in range(start, start + count):
        bad = bytes([rng.choice([0xff, 0xfe, 0xc0, 0x80, 0xed])])
        line = b'{"specversion": "1.0", "id": "' + bad + b'", "type": "x"}'
        out.append(Input(number, "not utf-8", INVALID, None, "", line))
    return out


def deeply_nested_lines(count: int, start: int, depth: int = 100_000) -> list[Input]:
    """Valid JSON nested deeper than any parser's recursion (a classic parser crash)."""
    line = b"[" * depth + b"]" * depth
    return [Input(number, "deeply nested", INVALID, None, "", line)
            for number in range(start, start + count)]


def lone_surrogates(garbage: Garbage, count: int, start: int) -> list[Input]:
    """Events carrying a lone surrogate (``"\\ud800"``): legal JSON escapes, not Unicode.
    Either refusal or acceptance is right; losing them or crashing on them is not."""
    out = []
    for number in range(start, start + count):
        event = garbage.provision()
        where = number % 3
        if where == 0:
            event["data"]["name"] = "Contoso \ud800"
        elif where == 1:
            event["ext"] = "\udfff extension"
        else:
            event["id"] = event["id"] + "\ud83d"
        out.append(Input(number, "lone surrogate", EITHER, event,
                         line=json.dumps(event).encode("ascii")))
    return out
