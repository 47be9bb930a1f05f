"""Tests for producer.segments: encoding and SMS part counts."""

from __future__ import annotations

import pytest

from producer.segments import (
    GSM7_DEFAULT_ALPHABET,
    GSM7_EXTENSION,
    SegmentInfo,
    segment_info,
)

EMOJI = "\U0001f600"


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
