"""Tests for producer.segments: encoding and SMS part counts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from producer.segments import (
    GSM7_DEFAULT_ALPHABET,
    GSM7_EXTENSION,
    GSM7_MULTI_PART_UNITS,
    GSM7_SINGLE_PART_UNITS,
    UCS2_MULTI_PART_UNITS,
    UCS2_SINGLE_PART_UNITS,
    SegmentInfo,
    segment_info,
)

EMOJI = "\U0001f600"
GSM7_BASIC = GSM7_DEFAULT_ALPHABET.replace("\x1b", "")


def reference_segment_info(text: str) -> SegmentInfo:
    """The straightforward per-character count the fast segment_info() must always agree with."""
    if all(char in GSM7_BASIC or char in GSM7_EXTENSION for char in text):
        sizes = [2 if char in GSM7_EXTENSION else 1 for char in text]
        single, multi, encoding = GSM7_SINGLE_PART_UNITS, GSM7_MULTI_PART_UNITS, "GSM-7"
    else:
        sizes = [2 if ord(char) > 0xFFFF else 1 for char in text]
        single, multi, encoding = UCS2_SINGLE_PART_UNITS, UCS2_MULTI_PART_UNITS, "UCS-2"
    total = sum(sizes)
    parts = min(total, 1)
    if total > single:
        room = multi
        for size in sizes:
            if size > room:
                parts += 1
                room = multi
            room -= size
    return SegmentInfo(encoding, parts, total)  # type: ignore[arg-type]


def test_empty_text_has_no_segments() -> None:
    assert segment_info("") == SegmentInfo("GSM-7", 0, 0)


@pytest.mark.parametrize(
    ("length", "segments"),
    [(1, 1), (160, 1), (161, 2), (306, 2), (307, 3), (459, 3), (460, 4)],
)
def test_gsm7_part_boundaries(length: int, segments: int) -> None:
    assert segment_info("a" * length) == SegmentInfo("GSM-7", segments, length)


def test_default_alphabet_is_the_full_128_entry_table() -> None:
    assert len(GSM7_DEFAULT_ALPHABET) == 128
    assert len(set(GSM7_DEFAULT_ALPHABET)) == 128
    assert GSM7_DEFAULT_ALPHABET[0x1B] == "\x1b"
    assert GSM7_DEFAULT_ALPHABET[0x00] == "@"
    assert GSM7_DEFAULT_ALPHABET[0x10] == "\u0394"
    assert GSM7_DEFAULT_ALPHABET[0x24] == "\u00a4"
    assert GSM7_DEFAULT_ALPHABET[0x40] == "\u00a1"
    assert GSM7_DEFAULT_ALPHABET[0x60] == "\u00bf"
    assert GSM7_DEFAULT_ALPHABET[0x7F] == "\u00e0"


@pytest.mark.parametrize("char", sorted(set(GSM7_DEFAULT_ALPHABET) - {"\x1b"}))
def test_every_basic_character_is_one_septet(char: str) -> None:
    assert segment_info(char) == SegmentInfo("GSM-7", 1, 1)


@pytest.mark.parametrize("char", list("^{}\\[~]|\u20ac\f"))
def test_extension_characters_count_two_septets(char: str) -> None:
    assert char in GSM7_EXTENSION
    assert segment_info(char) == SegmentInfo("GSM-7", 1, 2)
    assert segment_info("a" * 158 + char) == SegmentInfo("GSM-7", 1, 160)
    assert segment_info("a" * 159 + char) == SegmentInfo("GSM-7", 2, 161)


def test_extension_character_is_not_split_across_parts() -> None:
    # 306 septets would fit two parts of 153, but the euro's escape pair would straddle them.
    text = "a" * 152 + "\u20ac" + "a" * 152
    assert segment_info(text) == SegmentInfo("GSM-7", 3, 306)
    assert segment_info("a" * 151 + "\u20ac" + "a" * 153) == SegmentInfo("GSM-7", 2, 306)


def test_escape_and_unknown_characters_force_ucs2() -> None:
    assert segment_info("\x1b").encoding == "UCS-2"
    assert segment_info("caf\u00e7").encoding == "UCS-2"
    assert segment_info("a" * 200 + "\u00e2") == SegmentInfo("UCS-2", 3, 201)


@pytest.mark.parametrize(
    ("length", "segments"),
    [(70, 1), (71, 2), (134, 2), (135, 3)],
)
def test_ucs2_part_boundaries(length: int, segments: int) -> None:
    assert segment_info("\u044f" * length) == SegmentInfo("UCS-2", segments, length)


def test_emoji_counts_two_utf16_units() -> None:
    assert segment_info(EMOJI) == SegmentInfo("UCS-2", 1, 2)
    assert segment_info(EMOJI * 35) == SegmentInfo("UCS-2", 1, 70)
    assert segment_info("a" + EMOJI * 35) == SegmentInfo("UCS-2", 2, 71)


def test_surrogate_pair_is_not_split_across_parts() -> None:
    text = "\u044f" * 66 + EMOJI + "\u044f" * 66
    assert segment_info(text) == SegmentInfo("UCS-2", 3, 134)
    assert segment_info("\u044f" * 65 + EMOJI + "\u044f" * 67) == SegmentInfo("UCS-2", 2, 134)


def test_info_is_frozen() -> None:
    info = segment_info("hi")
    with pytest.raises(AttributeError):
        info.segments = 5  # type: ignore[misc]


GSM7_BASIC_CHARS = st.sampled_from(GSM7_BASIC)
GSM7_EXTENSION_CHARS = st.sampled_from(GSM7_EXTENSION)
# ASCII characters outside GSM-7 (the escape code itself among them): they force UCS-2.
ASCII_NOT_GSM7 = st.sampled_from(
    [chr(code) for code in range(128) if chr(code) not in GSM7_BASIC + GSM7_EXTENSION]
)
BMP_CHARS = st.characters(min_codepoint=0x80, max_codepoint=0xFFFF)
ASTRAL_CHARS = st.characters(min_codepoint=0x10000)
# A str can hold a lone surrogate (from surrogateescape, or a JSON \ud83d escape): one unit.
LONE_SURROGATES = st.sampled_from(["\ud83d", "\ude00", "\udbff"])
# Long enough for several parts of either encoding, so pairs meet part boundaries.
MAX_TEXT_CHARS = 700
GSM7_TEXTS = st.text(st.one_of(GSM7_BASIC_CHARS, GSM7_EXTENSION_CHARS), max_size=MAX_TEXT_CHARS)
ASCII_GSM7_TEXTS = st.text(
    st.sampled_from([char for char in GSM7_BASIC + GSM7_EXTENSION if char.isascii()]),
    max_size=MAX_TEXT_CHARS,
)
MIXED_TEXTS = st.text(
    st.one_of(
        GSM7_BASIC_CHARS,
        GSM7_EXTENSION_CHARS,
        ASCII_NOT_GSM7,
        BMP_CHARS,
        ASTRAL_CHARS,
        LONE_SURROGATES,
    ),
    max_size=MAX_TEXT_CHARS,
)
UCS2_TEXTS = st.text(st.one_of(BMP_CHARS, ASTRAL_CHARS, LONE_SURROGATES), max_size=MAX_TEXT_CHARS)


@given(st.one_of(ASCII_GSM7_TEXTS, GSM7_TEXTS, MIXED_TEXTS, UCS2_TEXTS))
def test_fast_count_equals_the_per_character_reference(text: str) -> None:
    assert segment_info(text) == reference_segment_info(text)


@given(
    st.lists(st.integers(0, 30), min_size=1, max_size=12),
    st.sampled_from(["a", "\u00e9", "\u044f"]),
    st.sampled_from([*GSM7_EXTENSION, EMOJI]),
)
def test_pairs_near_part_boundaries_equal_the_reference(
    gaps: list[int], single: str, pair: str
) -> None:
    # Runs of a one-unit character broken by pairs, their lengths close to the part sizes.
    base = GSM7_MULTI_PART_UNITS if pair in GSM7_EXTENSION else UCS2_MULTI_PART_UNITS
    text = pair.join(single * (base - 15 + gap) for gap in gaps)
    assert segment_info(text) == reference_segment_info(text)


@pytest.mark.parametrize("pair", ["^", "\u20ac", EMOJI])
@pytest.mark.parametrize("filler", ["a", "\u00e9"])
def test_every_position_of_one_pair_in_a_long_text_equals_the_reference(
    pair: str, filler: str
) -> None:
    for length in (300, 459):
        for position in range(length):
            text = filler * position + pair + filler * (length - position)
            assert segment_info(text) == reference_segment_info(text), position
