"""Destination numbers as phonenumbers' metadata allows them: a known country code, a length
possible for it, a national prefix after the code dropped; most answered by a table look-up.
"""

from __future__ import annotations

# re's own parser, so national prefix patterns are read exactly as re reads them.
import re._parser as regex_parser
from collections.abc import Sequence
from typing import Any

import phonenumbers
from phonenumbers import (
    COUNTRY_CODE_TO_REGION_CODE,
    NumberParseException,
    PhoneMetadata,
    PhoneNumberFormat,
    ValidationResult,
)
from phonenumbers.phonenumberutil import region_code_for_country_code

# E.164 allows at most 15 digits; phonenumbers admits longer national numbers (Germany's and
# Japan's extensions, up to 19 digits in all), which no E.164 address can carry.
MAX_DIGITS = 15


class InvalidNumber(ValueError):
    """A value that cannot be turned into a destination number; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# Only the length is checked, as phonenumbers' is_possible_number does: full validity
# (is_valid_number, each type's number pattern) would refuse real numbers in ranges a country
# opened after this metadata was released. A local-only length (a number without its area
# code) is refused too: it cannot be reached from abroad.
#
# phonenumbers parses, checks and formats a number in 17 us (the 2-core machine), 17 s of a
# million; the look-up below answers in 0.4 us. phonenumbers' answer for digits that start
# with a country code depends only on the code, the national number's length and whether the
# code's national prefix pattern matches the national number's start (the prefix may then be
# dropped). So POSSIBLE_LENGTHS maps every 4-digit start where that pattern cannot match to
# the total lengths phonenumbers accepts as given, and checked() hands the rest to
# phonenumbers. tests/unit/test_numbers_corpus.py checks the two agree on 100,000 numbers.


class _Country:
    """A country calling code as phonenumbers checks numbers with it: its main region's data."""

    __slots__ = ("code", "lengths", "local_lengths", "national_prefix", "regions")

    def __init__(self, code: int) -> None:
        self.code = str(code)
        regions = COUNTRY_CODE_TO_REGION_CODE[code]
        # "001" stands for the codes of no region (+800 freephone, +882 networks, ...).
        self.regions = "non-geographic" if regions == ("001",) else ", ".join(regions[:3])
        if len(regions) > 3:
            self.regions += ", \u2026"
        # is_possible_number looks at the main region only (all +1 numbers as the US's).
        main = region_code_for_country_code(code)
        metadata = PhoneMetadata.metadata_for_region_or_calling_code(code, main)
        desc = metadata.general_desc if metadata is not None else None
        self.lengths = tuple(n for n in desc.possible_length if n > 0) if desc else ()
        self.local_lengths = tuple(desc.possible_length_local_only) if desc else ()
        self.national_prefix = metadata.national_prefix_for_parsing if metadata else None

    def length_reason(self, digits: int) -> str:
        """Why a national number of `digits` digits is refused, as _test_number_length sees it."""
        where = f"+{self.code} ({self.regions})"
        got = f"{digits} digit{'' if digits == 1 else 's'} after +{self.code}"
        need = _lengths_text(self.lengths)
        if not self.lengths:
            return f"no numbers are possible for {where}"
        if digits in self.local_lengths:
            return f"only a local number for {where}: {got}, need {need}"
        if digits < self.lengths[0]:
            return f"too short for {where}: {got}, need {need}"
        if digits > self.lengths[-1]:
            return f"too long for {where}: {got}, need {need}"
        return f"impossible length for {where}: {got}, need {need}"


def _lengths_text(lengths: Sequence[int]) -> str:
    """(7, 9, 10) as "7, 9 or 10", (4, 5, ..., 15) as "4 to 15"."""
    runs: list[str] = []
    start = 0
    for i in range(1, len(lengths) + 1):
        if i == len(lengths) or lengths[i] != lengths[i - 1] + 1:
            run = lengths[start:i]
            runs.extend([f"{run[0]} to {run[-1]}"] if len(run) > 2 else map(str, run))
            start = i
    return runs[0] if len(runs) == 1 else f"{', '.join(runs[:-1])} or {runs[-1]}"


_COUNTRIES = {str(code): _Country(code) for code in COUNTRY_CODE_TO_REGION_CODE}


def _country_of(value: str) -> _Country | None:
    """The country code phonenumbers reads at the start of `value`: the first of 1, 2 or 3 digits
    it knows (no code is the start of another)."""
    return _COUNTRIES.get(value[:1]) or _COUNTRIES.get(value[:2]) or _COUNTRIES.get(value[:3])


def checked(value: str) -> str:
    """`value` (ASCII digits, not starting with 0, country code first) as E.164 digits, as
    phonenumbers normalises it, or InvalidNumber saying why not."""
    country = _country_of(value)
    if country is None:
        raise InvalidNumber(f"unknown country code +{value[:3]}")
    lengths = POSSIBLE_LENGTHS.get(value[:4])
    if lengths is not None:
        # No national prefix to drop: the length alone decides.
        if len(value) in lengths:
            return value
        national = len(value) - len(country.code)
        if national in country.lengths:
            raise InvalidNumber(_too_long_for_e164(len(value)))
        raise InvalidNumber(country.length_reason(national))
    try:
        parsed = phonenumbers.parse("+" + value)
    except NumberParseException:
        # Fewer than 2 or more than 17 national digits, or over 250 in all.
        raise InvalidNumber(country.length_reason(len(value) - len(country.code))) from None
    if phonenumbers.is_possible_number_with_reason(parsed) != ValidationResult.IS_POSSIBLE:
        national = phonenumbers.national_significant_number(parsed)
        raise InvalidNumber(country.length_reason(len(national)))
    number = phonenumbers.format_number(parsed, PhoneNumberFormat.E164)[1:]
    if len(number) > MAX_DIGITS:
        raise InvalidNumber(_too_long_for_e164(len(number)))
    return number


def _too_long_for_e164(digits: int) -> str:
    return f"too long: {digits} digits, E.164 allows at most {MAX_DIGITS}"


# Regular-expression nodes that match no character; treated as matching the empty string,
# which can only add starts, never hide one.
_ZERO_WIDTH = {regex_parser.AT, regex_parser.ASSERT, regex_parser.ASSERT_NOT}
_REPEATS = {regex_parser.MAX_REPEAT, regex_parser.MIN_REPEAT, regex_parser.POSSESSIVE_REPEAT}
_DIGIT_CHARS = "0123456789"


def _starts(pattern: str, k: int) -> set[str]:
    """The first `k` characters of every digit string `pattern` matches (whole if shorter), or
    more: the patterns are phonenumbers' national prefixes, and an extra start only sends a
    number to phonenumbers. A capturing group that can match nothing counts as a start ("")
    too, since phonenumbers then treats the empty match as a prefix."""
    return _sequence(regex_parser.parse(pattern).data, k)


def _sequence(items: Any, k: int) -> set[str]:
    starts = {""}
    for op, arg in items:
        starts = _joined(starts, _node(op, arg, k), k)
    return starts


def _joined(left: set[str], right: set[str], k: int) -> set[str]:
    joined = {a for a in left if len(a) >= k}
    joined.update((a + b)[:k] for a in left if len(a) < k for b in right)
    return joined


def _node(op: Any, arg: Any, k: int) -> set[str]:
    if op is regex_parser.LITERAL:
        return {chr(arg)} & set(_DIGIT_CHARS)
    if op is regex_parser.NOT_LITERAL:
        return set(_DIGIT_CHARS) - {chr(arg)}
    if op is regex_parser.ANY:
        return set(_DIGIT_CHARS)
    if op is regex_parser.IN:
        return {digit for digit in _DIGIT_CHARS if _in(arg, digit)}
    if op is regex_parser.BRANCH:
        return set().union(*(_sequence(branch, k) for branch in arg[1]))
    if op is regex_parser.SUBPATTERN:
        inner = _sequence(arg[3], k)
        if arg[0] is not None and "" in inner:
            return inner | _everything(k)
        return inner
    if op is regex_parser.ATOMIC_GROUP:
        return _sequence(arg, k)
    if op in _REPEATS:
        low, high, body = arg
        once = _sequence(body, k)
        starts = {""}
        for _ in range(low):
            starts = _joined(starts, once, k)
        found = set(starts)
        for _ in range(min(high - low, k)):
            starts = _joined(starts, once, k)
            found |= starts
        return found
    if op in _ZERO_WIDTH:
        return {""}
    return _everything(k)


def _in(items: Any, digit: str) -> bool:
    """Whether a character class ([...], \\d) admits `digit`."""
    code = ord(digit)
    for op, arg in items:
        if op is regex_parser.LITERAL:
            found = arg == code
        elif op is regex_parser.RANGE:
            found = arg[0] <= code <= arg[1]
        else:  # \d, a negation or another category: admitting the digit is always safe
            found = True
        if found:
            return True
    return False


def _everything(k: int) -> set[str]:
    starts = {""}
    for _ in range(k):
        starts |= {s + d for s in starts for d in _DIGIT_CHARS}
    return starts


def _possible_lengths() -> dict[str, frozenset[int]]:
    """For every 4-digit start of a known code: the total lengths phonenumbers accepts as given
    (none where its national prefix might match the national number's start)."""
    fast: dict[str, frozenset[int]] = {}
    for country in _COUNTRIES.values():
        rest = 4 - len(country.code)
        heads = _starts(country.national_prefix, rest) if country.national_prefix else set()
        heads.discard("")
        lengths = frozenset(
            len(country.code) + n
            for n in country.lengths
            if 4 <= len(country.code) + n <= MAX_DIGITS
        )
        for national in _everything(rest):
            if len(national) == rest and not any(national.startswith(h) for h in heads):
                fast[country.code + national] = lengths
    return fast


# "4930" -> {6, 7, ..., 15}: numbers starting so that phonenumbers keeps as given, by length.
POSSIBLE_LENGTHS = _possible_lengths()
