"""How many SMS parts a text needs, and in which encoding, before it is sent.

An estimate for the operator (DIDWW's `fragments_sent` callback field is the real count).
"""

from __future__ import annotations

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

_GSM7_BASIC = frozenset(GSM7_DEFAULT_ALPHABET) - {"\x1b"}
_GSM7_EXTENSION = frozenset(GSM7_EXTENSION)
_GSM7_ALL = _GSM7_BASIC | _GSM7_EXTENSION
_LAST_BMP = 0xFFFF


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """Encoding, number of SMS parts, and length in septets (GSM-7) or UTF-16 code units."""

    encoding: Encoding
    segments: int
    units: int


def segment_info(text: str) -> SegmentInfo:
    """Work out the encoding and part count DIDWW will need for `text`."""
    if _GSM7_ALL.issuperset(text):
        sizes = [2 if char in _GSM7_EXTENSION else 1 for char in text]
        parts = _count_parts(sizes, GSM7_SINGLE_PART_UNITS, GSM7_MULTI_PART_UNITS)
        return SegmentInfo("GSM-7", parts, sum(sizes))
    sizes = [2 if ord(char) > _LAST_BMP else 1 for char in text]
    parts = _count_parts(sizes, UCS2_SINGLE_PART_UNITS, UCS2_MULTI_PART_UNITS)
    return SegmentInfo("UCS-2", parts, sum(sizes))


def _count_parts(sizes: list[int], single: int, multi: int) -> int:
    total = sum(sizes)
    if total == 0:
        return 0
    if total <= single:
        return 1
    # Fill greedily: an escape pair or a surrogate pair that does not fit in what is left of a
    # part moves whole to the next one, so parts can hold one unit less than `multi`.
    parts, room = 1, multi
    for size in sizes:
        if size > room:
            parts += 1
            room = multi
        room -= size
    return parts
