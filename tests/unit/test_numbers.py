"""Tests for producer.numbers: normalising destination numbers and collecting results."""

from __future__ import annotations

import re
from array import array

import phonenumbers
import pytest
from hypothesis import given
from hypothesis import strategies as st
from phonenumbers import PhoneNumberFormat, PhoneNumberType

from producer.numbers import (
    InvalidNumber,
    NumbersCollector,
    NumbersResult,
    Rejection,
    normalize,
    normalize_many,
)

VALID = re.compile(r"[1-9][0-9]{3,14}")
SEPARATORS = [" ", "-", "(", ")", ".", "\t", "\u00a0", "\u2013"]
# phonenumbers' example mobile and fixed-line numbers of every region, as E.164 digits.
EXAMPLES = sorted(
    {
        phonenumbers.format_number(example, PhoneNumberFormat.E164)[1:]
        for region in sorted(phonenumbers.SUPPORTED_REGIONS)
        for kind in (PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE)
        if (example := phonenumbers.example_number_for_type(region, kind)) is not None
    }
)

valid_digits = st.sampled_from(EXAMPLES)


@st.composite
def formatted(draw: st.DrawFn) -> tuple[str, str]:
    """A valid number and one way a person might have typed it."""
    digits = draw(valid_digits)
    prefix = draw(st.sampled_from(["", "+", "00", "+ ", "(+", "00 "]))
    pieces = [prefix]
    for digit in digits:
        pieces.append(draw(st.sampled_from(["", "", "", *SEPARATORS])))
        pieces.append(digit)
    pieces.append(draw(st.sampled_from(["", ")", "-", " "])))
    padding = draw(st.sampled_from(["", " ", "\t", "  "]))
    return digits, padding + "".join(pieces) + padding


@given(formatted())
def test_any_formatting_of_a_valid_number_normalises_to_its_digits(case: tuple[str, str]) -> None:
    digits, typed = case
    assert normalize(typed) == digits


@given(st.text(alphabet=st.sampled_from("0123456789+-() .\t\u00a0x\u0663"), max_size=25))
def test_output_is_always_digits_only_e164(raw: str) -> None:
    try:
        number = normalize(raw)
    except InvalidNumber as exc:
        assert exc.reason
    else:
        assert VALID.fullmatch(number)
        assert phonenumbers.is_possible_number(phonenumbers.parse("+" + number))


@given(st.text(max_size=30))
def test_arbitrary_text_never_escapes_as_another_exception(raw: str) -> None:
    try:
        number = normalize(raw)
    except InvalidNumber:
        return
    assert VALID.fullmatch(number)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+44 20 7946 0958", "442079460958"),
        ("0044 (20) 7946-0958", "442079460958"),
        ("  +1.555.010.9999\n", "15550109999"),
        ("+49\u00a030\u202f1234\u20135678", "493012345678"),
        # A national prefix after the country code is dropped, bracketed or not.
        ("+44 (0)20 7946 0958", "442079460958"),
        ("0044 (0) 20 7946 0958", "442079460958"),
        ("4402079460958", "442079460958"),
        ("+7 8 912 345 67 89", "79123456789"),
        ("81 (0)3-1234-5678", "81312345678"),
        # Unless what is left would be impossible: Russia's 8 00 toll-free numbers keep it.
        ("+7 800 555 35 35", "78005553535"),
        # Italy's leading zero is part of the number.
        ("+39 06 1234 5678", "390612345678"),
        ("+54 9 11 1234 5678", "5491112345678"),
        # Small countries have short numbers: Niue, Saint Helena.
        ("+683 4002", "6834002"),
        ("+290 1234", "2901234"),
        ("+800 1234 5678", "80012345678"),
    ],
)
def test_normalises_examples(raw: str, expected: str) -> None:
    assert normalize(raw) == expected


US = "+1 (US, AG, AI, \u2026)"
GB = "+44 (GB, GG, IM, \u2026)"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        (" - () . ", "empty"),
        ("+", "no digits"),
        ("00", "no digits"),
        ("+44 20x7946", "contains 'x', which is not a digit"),
        ("++4420794609", "contains '+', which is not a digit"),
        ("00+4420794609", "contains '+', which is not a digit"),
        ("44/2079460958", "contains '/', which is not a digit"),
        ("4420\u0663794609", "contains '\u0663', which is not an ASCII digit 0-9"),
        (
            "\uff14\uff14\uff12\uff10\uff17\uff19\uff14\uff16",
            "contains '\uff14', which is not an ASCII digit 0-9",
        ),
        ("0612345678", "starts with 0 (a national number? give the country code)"),
        ("020 7946 0958", "starts with 0 (a national number? give the country code)"),
        ("+0442079460958", "starts with 0 (a national number? give the country code)"),
        ("000442079460958", "starts with 0 (a national number? give the country code)"),
        ("+99912345678", "unknown country code +999"),
        ("0099912345678", "unknown country code +999"),
        ("+28 1234 5678", "unknown country code +281"),
        ("12", f"too short for {US}: 1 digit after +1, need 10"),
        ("+1", f"too short for {US}: 0 digits after +1, need 10"),
        ("1234567", f"too short for {US}: 6 digits after +1, need 10"),
        ("+1 202-555-01", f"too short for {US}: 8 digits after +1, need 10"),
        ("+1 555 0109", f"only a local number for {US}: 7 digits after +1, need 10"),
        ("1234567890123456", f"too long for {US}: 15 digits after +1, need 10"),
        ("+44 20 7946 09", f"only a local number for {GB}: 8 digits after +44, need 7, 9 or 10"),
        ("+44 20 7946 09581", f"too long for {GB}: 11 digits after +44, need 7, 9 or 10"),
        ("+370 6123 456", "too short for +370 (LT): 7 digits after +370, need 8"),
        ("+882 1234", "too short for +882 (non-geographic): 4 digits after +882, need 7 to 12"),
        ("+49 30 1234567890123", "too long: 17 digits, E.164 allows at most 15"),
        # Refused by phonenumbers itself, after it tried the national prefix.
        ("+44 (0) 20 79", f"only a local number for {GB}: 5 digits after +44, need 7, 9 or 10"),
        ("+7 8", "too short for +7 (RU, KZ): 1 digit after +7, need 10 or 14"),
    ],
)
def test_rejection_reasons(raw: str, reason: str) -> None:
    with pytest.raises(InvalidNumber) as caught:
        normalize(raw)
    assert caught.value.reason == reason
    assert str(caught.value) == reason
    assert isinstance(caught.value, ValueError)


def test_normalize_many_dedupes_and_reports_positions() -> None:
    result = normalize_many(["+44 20 7946 0958", "bad", "442079460958", "0044 20 7946 0958", ""])
    assert result == NumbersResult(
        numbers=["442079460958"],
        rejections=[
            Rejection(2, "bad", "contains 'b', which is not a digit"),
            Rejection(5, "", "empty"),
        ],
        duplicates=2,
        lines=5,
        line_of=array("I", [1]),
    )


def test_normalize_many_keeps_first_occurrence_order() -> None:
    result = normalize_many(["33612345678", "442079460958", "33 6 12 34 56 78", "15550109999"])
    assert result.numbers == ["33612345678", "442079460958", "15550109999"]
    assert result.duplicates == 1


def test_rejected_values_are_truncated_to_40_characters() -> None:
    collector = NumbersCollector()
    collector.add(7, "x" * 100)
    (rejection,) = collector.result().rejections
    assert rejection.line == 7
    assert len(rejection.value) == 40
    assert rejection.value == "x" * 39 + "\u2026"


def test_collector_reject_counts_a_line() -> None:
    collector = NumbersCollector()
    collector.reject(3, "a;b", "no value in column 'phone'")
    assert collector.lines == 1
    assert collector.result().rejections == [Rejection(3, "a;b", "no value in column 'phone'")]
