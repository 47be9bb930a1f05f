"""Tests for producer.numbers: normalising destination numbers and collecting results."""

from __future__ import annotations

import re
from array import array

import pytest
from hypothesis import given
from hypothesis import strategies as st

from producer.numbers import (
    InvalidNumber,
    NumbersCollector,
    NumbersResult,
    Rejection,
    normalize,
    normalize_many,
)

VALID = re.compile(r"[1-9][0-9]{7,14}")
SEPARATORS = [" ", "-", "(", ")", ".", "\t", "\u00a0", "\u2013"]

valid_digits = st.from_regex(VALID, fullmatch=True)


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
        assert normalize(number) == number


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
        ("12345678", "12345678"),
        ("123456789012345", "123456789012345"),
        ("+49\u00a030\u202f1234\u20135678", "493012345678"),
    ],
)
def test_normalises_examples(raw: str, expected: str) -> None:
    assert normalize(raw) == expected


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
        ("1234567", "too short: 7 digits, need 8 to 15"),
        ("+1234567", "too short: 7 digits, need 8 to 15"),
        ("001234567", "too short: 7 digits, need 8 to 15"),
        ("1234567890123456", "too long: 16 digits, need 8 to 15"),
        ("0612345678", "starts with 0 (a national number? give the country code)"),
        ("020 7946 0958", "starts with 0 (a national number? give the country code)"),
        ("+0442079460958", "starts with 0 (a national number? give the country code)"),
        ("000442079460958", "starts with 0 (a national number? give the country code)"),
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
