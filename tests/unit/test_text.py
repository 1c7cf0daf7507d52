"""Lengths as Dataverse counts them (UTF-16 code units) and cuts that never split a pair
(SPEC §1), over any Unicode text, lone surrogates included where inputs allow them."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statemachine import NAME_MAX, InvalidEvent, cut_to_units, parse_event, truncate, utf16_length
from statemachine.text import has_lone_surrogate

# Any code point, lone surrogates too (backends' JSON may carry "\ud800" escapes), with
# characters outside the BMP and surrogates drawn often enough to meet at a cut.
ANY_TEXT = st.text(alphabet=st.one_of(
    st.characters(), st.characters(categories=["Cs"]),
    st.characters(min_codepoint=0x10000, max_codepoint=0x10FFFF)), max_size=400)
WIDE = st.text(alphabet=st.characters(min_codepoint=0x10000, max_codepoint=0x10FFFF),
               max_size=200)
MARKER = re.compile(r"… \[truncated (\d+) chars\]\Z")
EMOJI = "\U0001F600"  # 😀: one character, two UTF-16 code units


def valid_utf16(text: str) -> bool:
    try:
        text.encode("utf-16-le")  # strict: refuses any surrogate code point
    except UnicodeEncodeError:
        return False
    return True


def test_a_character_outside_the_bmp_counts_two_units() -> None:
    assert utf16_length(EMOJI * 51) == 102
    assert utf16_length("é" * 51) == 51
    assert utf16_length("a\ud800") == 2  # a lone surrogate is one unit


@settings(max_examples=400, deadline=None)
@given(st.one_of(ANY_TEXT, WIDE), st.integers(min_value=0, max_value=500))
def test_a_cut_fits_and_never_splits_a_pair(text: str, units: int) -> None:
    kept = cut_to_units(text, units)
    assert text.startswith(kept)
    assert utf16_length(kept) <= units
    # The longest such prefix: one more character would not fit.
    if len(kept) < len(text):
        assert utf16_length(text[: len(kept) + 1]) > units


@settings(max_examples=400, deadline=None)
@given(st.one_of(ANY_TEXT, WIDE), st.integers(min_value=0, max_value=600))
def test_truncated_text_fits_in_units_and_is_valid_utf16(text: str, max_length: int) -> None:
    result = truncate(text, max_length)
    assert utf16_length(result) <= max_length
    assert valid_utf16(result)
    assert not has_lone_surrogate(result)
    if utf16_length(text) <= max_length and not has_lone_surrogate(text):
        assert result == text


@settings(max_examples=300, deadline=None)
@given(WIDE, st.integers(min_value=32, max_value=300))
def test_the_marker_counts_the_characters_cut(text: str, max_length: int) -> None:
    result = truncate(text, max_length)
    if utf16_length(text) <= max_length:
        assert result == text
        return
    found = MARKER.search(result)
    assert found is not None, result
    kept = result[: found.start()]
    assert text.startswith(kept)
    assert len(kept) + int(found.group(1)) == len(text)


def test_emoji_details_are_cut_to_the_column_in_units_with_the_marker() -> None:
    result = truncate(EMOJI * 8192, 8192)
    assert utf16_length(result) in (8191, 8192)  # 8191 when a pair would straddle the end
    assert result.endswith("chars]")
    assert valid_utf16(result)
    kept = MARKER.split(result)[0]
    assert set(kept) == {EMOJI}


def test_a_lone_surrogate_becomes_a_replacement_character() -> None:
    assert truncate("ok \udc00 done", 100) == "ok \ufffd done"


def name_event(name: str) -> dict[str, object]:
    return {"specversion": "1.0", "id": "evt-1", "source": "tests",
            "type": "provision.requested", "subject": "6f1c0000-0000-4000-8000-000000000001",
            "data": {"name": name, "channel": {"kind": "line",
                                               "id": "6f1c0000-0000-4000-8000-000000000002"}}}


def test_a_name_of_fifty_one_emoji_is_refused_naming_field_limit_and_rule() -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_event(name_event(EMOJI * 51))
    [problem] = caught.value.problems
    assert problem.path == "data.name"
    assert "at most 100 UTF-16 code units" in problem.reason
    assert "counts 2" in problem.reason
    assert problem.reason.endswith("not 102")


def test_a_name_of_fifty_emoji_fits_exactly() -> None:
    event = parse_event(name_event(EMOJI * 50))
    assert event.data is not None
    assert utf16_length(event.data.name) == NAME_MAX  # type: ignore[union-attr]


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=120).filter(str.strip))
def test_any_name_is_accepted_exactly_when_it_fits_in_units(name: str) -> None:
    if utf16_length(name) <= NAME_MAX:
        parse_event(name_event(name))
        return
    with pytest.raises(InvalidEvent) as caught:
        parse_event(name_event(name))
    assert [p.path for p in caught.value.problems] == ["data.name"]
