"""How many SMS parts a text needs, and in which encoding, before it is sent.

An estimate for the operator (DIDWW's `fragments_sent` callback field is the real count).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Literal

Encoding = Literal["GSM-7", "UCS-2"]

# A single SMS carries 140 octets: 160 septets or 70 UTF-16 code units.
GSM7_SINGLE_PART_UNITS = 160
UCS2_SINGLE_PART_UNITS = 70
# Split messages spend 6 octets of each part on the header that links the parts.
GSM7_MULTI_PART_UNITS = 153
UCS2_MULTI_PART_UNITS = 67

# 3GPP TS 23.038 GSM 7-bit default alphabet, row by row from code 0x00 to 0x7F. Code 0x1B is
# the escape to the extension table, not a character; it is written here only to keep the
# positions right and is excluded below.
GSM7_DEFAULT_ALPHABET = (
    "@£$¥èéùìòÇ\nØø\rÅå"  # 0x00
    "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"  # 0x10
    " !\"#¤%&'()*+,-./"  # 0x20
    "0123456789:;<=>?"  # 0x30
    "¡ABCDEFGHIJKLMNO"  # 0x40
    "PQRSTUVWXYZÄÖÑÜ§"  # 0x50
    "¿abcdefghijklmno"  # 0x60
    "pqrstuvwxyzäöñüà"  # 0x70
)
# Characters reached through the 0x1B escape: each costs two septets.
GSM7_EXTENSION = "\f^{}\\[~]|€"

_GSM7_BASIC = GSM7_DEFAULT_ALPHABET.replace("\x1b", "")
# Enqueue calls segment_info() once per message at 100,000 messages/s, so nothing below loops
# over a text's characters in Python: str.encode, bytes.translate, bytes.count and one regular
# expression do it in C (about 1 us for a 160-character text, against 9 us for a Python loop).
_GSM7_BASIC_ASCII = bytes(ord(char) for char in _GSM7_BASIC if char.isascii())
_GSM7_EXTENSION_ASCII = bytes(ord(char) for char in GSM7_EXTENSION if char.isascii())
_NOT_GSM7 = re.compile("[^" + "".join(map(re.escape, _GSM7_BASIC + GSM7_EXTENSION)) + "]")
# A GSM-7 text becomes ASCII with the same septet counts: the euro sign is the one non-ASCII
# extension character, so it stands in for another, and the other non-ASCII characters, all
# basic ones, become "?" through the "replace" error handler.
_EURO, _EURO_STAND_IN = "€", "^"
# In a text reduced to one byte per character, this byte marks each two-unit character (an
# extension character, or an astral one) when a long text is split into parts.
_PAIR_MARK = 0x1B
_GSM7_EXTENSION_TO_MARK = bytes.maketrans(
    _GSM7_EXTENSION_ASCII, bytes([_PAIR_MARK]) * len(_GSM7_EXTENSION_ASCII)
)
# UTF-8 gives each character one lead byte and drops the continuation bytes (0x80 to 0xBF);
# astral characters are exactly those whose lead byte is 0xF0 to 0xF4.
_UTF8_CONTINUATION = bytes(range(0x80, 0xC0))
_UTF8_ASTRAL_TO_MARK = bytes(_PAIR_MARK if byte >= 0xF0 else 0 for byte in range(256))
_PART_UNITS: dict[Encoding, tuple[int, int]] = {
    "GSM-7": (GSM7_SINGLE_PART_UNITS, GSM7_MULTI_PART_UNITS),
    "UCS-2": (UCS2_SINGLE_PART_UNITS, UCS2_MULTI_PART_UNITS),
}
# Building a frozen dataclass costs as much as counting a short text, and answers repeat:
# texts within SMSQ_MAX_SEGMENTS have a few thousand possible ones.
_ANSWERS_CACHED = 4096


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """Encoding, number of SMS parts, and length in septets (GSM-7) or UTF-16 code units."""

    encoding: Encoding
    segments: int
    units: int


_segment_info = functools.lru_cache(maxsize=_ANSWERS_CACHED)(SegmentInfo)


def segment_info(text: str) -> SegmentInfo:
    """Work out the encoding and part count DIDWW will need for `text`."""
    if text.isascii():
        encoded = text.encode("ascii")
    elif _NOT_GSM7.search(text) is None:
        encoded = text.replace(_EURO, _EURO_STAND_IN).encode("ascii", "replace")
    else:
        return _ucs2(text)
    extended = encoded.translate(None, _GSM7_BASIC_ASCII)
    if extended.translate(None, _GSM7_EXTENSION_ASCII):
        return _ucs2(text)
    units = len(encoded) + len(extended)
    if units <= GSM7_SINGLE_PART_UNITS or not extended:
        return _unsplit("GSM-7", units)
    return _split("GSM-7", units, encoded.translate(_GSM7_EXTENSION_TO_MARK))


def _ucs2(text: str) -> SegmentInfo:
    # surrogatepass: a lone surrogate in a str is one code unit, like any other BMP character.
    units = len(text.encode("utf-16-le", "surrogatepass")) // 2
    if units <= UCS2_SINGLE_PART_UNITS or units == len(text):
        return _unsplit("UCS-2", units)
    utf8 = text.encode("utf-8", "surrogatepass")
    return _split("UCS-2", units, utf8.translate(_UTF8_ASTRAL_TO_MARK, _UTF8_CONTINUATION))


def _unsplit(encoding: Encoding, units: int) -> SegmentInfo:
    """The answer for a text that fits one part, or has no two-unit character to split."""
    single, multi = _PART_UNITS[encoding]
    parts = (1 if units else 0) if units <= single else -(-units // multi)
    return _segment_info(encoding, parts, units)


def _split(encoding: Encoding, units: int, marked: bytes) -> SegmentInfo:
    """The answer for a multi-part text: `marked` has a byte per character, _PAIR_MARK for pairs.

    Parts are filled greedily, and a pair that does not fit in what is left of a part moves
    whole to the next one, so a part can hold one unit less than the multi-part size.
    """
    multi = _PART_UNITS[encoding][1]
    parts, start, left = 1, 0, units
    while left > multi:
        # At least this many characters fit, as many as if every pair among the next `multi`
        # characters came before them; then step one character at a time to the real end.
        chars = multi - marked.count(_PAIR_MARK, start, start + multi)
        size = chars + marked.count(_PAIR_MARK, start, start + chars)
        while size < multi:
            step = 2 if marked[start + chars] == _PAIR_MARK else 1
            if size + step > multi:
                break
            size += step
            chars += 1
        start += chars
        left -= size
        parts += 1
    return _segment_info(encoding, parts, units)
