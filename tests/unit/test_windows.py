"""Tests for producer.windows and ledger.quiet_hours: quiet-hours windows, the time zones of
numbers, UTC intervals."""

from __future__ import annotations

import random
from datetime import UTC, datetime, time
from itertools import pairwise
from zoneinfo import ZoneInfo

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from phonenumbers import PhoneNumberFormat, PhoneNumberType
from phonenumbers.timezone import TIMEZONE_DATA, time_zones_for_number

from ledger.errors import InputError
from ledger.quiet_hours import (
    WindowState,
    decode_intervals,
    encode_intervals,
    next_open,
    window_state,
)
from producer.windows import (
    MAX_SPAN_S,
    NO_SHARED_HOUR_REASON,
    UNPLACEABLE_REASON,
    UnplaceableNumber,
    Window,
    open_intervals,
    parse_timezone,
    parse_window,
    zones_for_number,
)

DAY = 86_400
NINE_TO_EIGHT = Window(time(9), time(20))
BOISE_AND_LA = ("America/Boise", "America/Los_Angeles")


def ts(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    """A UTC instant as Unix seconds: ts(2026, 3, 29, 6) is 2026-03-29 06:00Z."""
    return int(datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp())


def in_window(window: Window, zones: tuple[str, ...] | list[str], t: int) -> bool:
    """The definition, independently: the wall clock at t reads a time in the window in every
    zone."""
    start = window.start.hour * 3600 + window.start.minute * 60
    end = window.end.hour * 3600 + window.end.minute * 60
    for zone in zones:
        wall = datetime.fromtimestamp(t, ZoneInfo(zone))
        second = wall.hour * 3600 + wall.minute * 60 + wall.second
        inside = start <= second < end if start < end else second >= start or second < end
        if not inside:
            return False
    return True


# --- parse_window ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        ("09:00-20:00", time(9), time(20)),
        ("9:00-20:00", time(9), time(20)),
        (" 09:00 - 20:00 ", time(9), time(20)),
        ("00:00-23:59", time(0), time(23, 59)),
        ("20:00-08:00", time(20), time(8)),
        ("20:00-24:00", time(20), time(0)),
        ("23:59-00:00", time(23, 59), time(0)),
        ("08:30-17:45", time(8, 30), time(17, 45)),
    ],
)
def test_parse_window_accepts(text: str, start: time, end: time) -> None:
    assert parse_window(text) == Window(start, end)


def test_window_wraps_and_prints() -> None:
    assert not parse_window("09:00-20:00").wraps
    assert parse_window("20:00-08:00").wraps
    assert str(parse_window("9:00-20:00")) == "09:00-20:00"
    assert str(parse_window("20:00-24:00")) == "20:00-00:00"
    assert parse_window(str(parse_window("20:00-24:00"))) == parse_window("20:00-24:00")


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "09:00",
        "09:00-",
        "-20:00",
        "0900-2000",
        "9-20",
        "09.00-20.00",
        "09:00-20:00-21:00",
        "09:00\u201320:00",  # an en dash
        "09:00 to 20:00",
        "9am-8pm",
        "009:00-20:00",
        "09:0-20:00",
        "\u0660\u0669:\u0660\u0660-\u0662\u0660:\u0660\u0660",  # Arabic-Indic digits
        "25:00-26:00",
        "24:00-08:00",
        "09:60-10:00",
        "09:00-24:30",
        "09:00-25:00",
        "09:00-09:00",
        "00:00-24:00",
        "x" * 500,
    ],
)
def test_parse_window_refuses(text: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_window(text)
    message = str(caught.value)
    assert "\n" not in message
    assert "HH:MM-HH:MM" in message
    assert "09:00-20:00" in message
    assert repr(text[:40])[:-1] in message
    assert len(message) < 200


def test_parse_window_says_why_equal_edges_are_refused() -> None:
    with pytest.raises(InputError, match="same time"):
        parse_window("09:00-09:00")


def test_window_itself_refuses_equal_edges_and_zones() -> None:
    with pytest.raises(ValueError):
        Window(time(9), time(9))
    with pytest.raises(ValueError):
        Window(time(9, tzinfo=UTC), time(20))


# --- parse_timezone -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["Europe/Vilnius", "America/New_York", "UTC", "Asia/Kathmandu"])
def test_parse_timezone_accepts(name: str) -> None:
    assert parse_timezone(name) == name
    assert parse_timezone(f" {name} ") == name


@pytest.mark.parametrize(
    "name", ["", "Mars/Olympus_Mons", "Europe/Vilna ", "EET+2", "../../etc/passwd", "/etc/x"]
)
def test_parse_timezone_refuses(name: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_timezone(name)
    assert "\n" not in str(caught.value)
    assert "Europe/Vilnius" in str(caught.value)


# --- zones_for_number -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "zones"),
    [
        # phonenumbers' data gives Lithuania Europe/Bucharest, whose rules (EET with EU
        # summer time) are Europe/Vilnius's (see the next test).
        ("37041654321", ("Europe/Bucharest",)),
        ("37061234567", ("Europe/Bucharest",)),
        ("442079460000", ("Europe/London",)),
        ("12125551234", ("America/New_York",)),
        ("13105551234", ("America/Los_Angeles",)),
        # Idaho's 208 spans Mountain and Pacific time.
        ("12085551234", BOISE_AND_LA),
        # Mobile numbers of the UK and Crown Dependencies share their ranges.
        (
            "447911123456",
            ("Europe/Guernsey", "Europe/Isle_of_Man", "Europe/Jersey", "Europe/London"),
        ),
        # Italian fixed lines keep their leading 0 after the country code.
        ("390612345678", ("Europe/Rome",)),
    ],
)
def test_zones_for_number(number: str, zones: tuple[str, ...]) -> None:
    assert zones_for_number(number, None) == zones
    assert zones_for_number(number, "Asia/Tokyo") == zones


def test_lithuanian_numbers_get_vilnius_hours() -> None:
    zones = zones_for_number("37041654321", None)
    year = (ts(2026, 1, 1), ts(2027, 1, 1))
    assert open_intervals(NINE_TO_EIGHT, zones, *year) == open_intervals(
        NINE_TO_EIGHT, ["Europe/Vilnius"], *year
    )


def test_mobile_numbers_outside_geographic_mobile_countries_get_the_whole_country() -> None:
    russian_mobile = zones_for_number("79131234567", None)
    assert len(russian_mobile) == 16
    assert {"Europe/Moscow", "Asia/Novosibirsk", "Asia/Kamchatka"} <= set(russian_mobile)
    assert zones_for_number("74951234567", None) == ("Europe/Moscow",)
    australian_mobile = zones_for_number("61412345678", None)
    assert "Australia/Perth" in australian_mobile
    assert "Australia/Sydney" in australian_mobile
    assert zones_for_number("61212345678", None) == ("Australia/Sydney",)


@pytest.mark.parametrize(
    "number",
    [
        "15555551234",  # a US number in no valid range
        "37001234567",  # a Lithuanian number in no valid range
        "99912345678",  # no such country code
        "123",
        "",
    ],
)
def test_unplaceable_numbers_take_the_fallback_or_raise(number: str) -> None:
    assert zones_for_number(number, "Europe/Vilnius") == ("Europe/Vilnius",)
    with pytest.raises(UnplaceableNumber) as caught:
        zones_for_number(number, None)
    assert isinstance(caught.value, InputError)
    assert str(caught.value) == UNPLACEABLE_REASON
    assert caught.value.number == number


def test_common_numbers_skip_the_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """The speed comes from not parsing: only numbers the parser would change reach it."""

    def parse(*args: object) -> None:
        raise AssertionError("phonenumbers.parse called")

    monkeypatch.setattr(phonenumbers, "parse", parse)
    for number in ["37041654321", "447911123456", "12085551234", "390612345678", "79131234567"]:
        assert zones_for_number(number, None)
    assert zones_for_number("15555551234", "UTC") == ("UTC",)


def reference_zones(number: str) -> tuple[str, ...]:
    """phonenumbers' own answer, the slow way."""
    try:
        parsed = phonenumbers.parse("+" + number)
    except phonenumbers.NumberParseException:
        return ("Etc/Unknown",)
    return tuple(sorted(set(time_zones_for_number(parsed))))


def agrees_with_phonenumbers(number: str) -> bool:
    expected = reference_zones(number)
    if expected == ("Etc/Unknown",):
        expected = ("Fallback/Zone",)
    return zones_for_number(number, "Fallback/Zone") == expected


def test_zones_agree_with_phonenumbers_for_every_prefix_it_knows() -> None:
    """The fast path replays phonenumbers: numbers of 8 to 15 digits grown from each prefix
    of its time-zone data give the same zones."""
    rng = random.Random(20260329)
    numbers = []
    for prefix in TIMEZONE_DATA:
        for length in (10, 11, 12, rng.randint(8, 15)):
            tail = max(0, length - len(prefix))
            numbers.append(prefix + "".join(rng.choice("0123456789") for _ in range(tail)))
    disagree = [number for number in numbers if not agrees_with_phonenumbers(number)]
    assert disagree == []


def test_zones_agree_with_phonenumbers_for_valid_numbers_of_every_region() -> None:
    """Example numbers of every region and type, their last digits changed: mostly valid,
    so the type classes (geographic, other, invalid) are all exercised."""
    rng = random.Random(7)
    numbers, valid = [], 0
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in (
            PhoneNumberType.FIXED_LINE,
            PhoneNumberType.MOBILE,
            PhoneNumberType.TOLL_FREE,
            PhoneNumberType.VOIP,
        ):
            example = phonenumbers.example_number_for_type(region, kind)
            if example is None:
                continue
            digits = phonenumbers.format_number(example, PhoneNumberFormat.E164)[1:]
            for _ in range(4):
                keep = len(digits) - rng.randint(1, 4)
                numbers.append(
                    digits[:keep] + "".join(rng.choice("0123456789") for _ in digits[keep:])
                )
    for number in numbers:
        assert agrees_with_phonenumbers(number), number
        valid += reference_zones(number) != ("Etc/Unknown",)
    assert valid > len(numbers) // 2


@settings(max_examples=300)
@given(st.from_regex(r"[0-9]{1,17}", fullmatch=True))
def test_zones_agree_with_phonenumbers_for_any_digits(number: str) -> None:
    assert agrees_with_phonenumbers(number)


# --- open_intervals: single zones across DST ------------------------------------------------


def test_vilnius_spring_forward() -> None:
    # 2026-03-29 03:00 EET (01:00Z) becomes 04:00 EEST.
    got = open_intervals(NINE_TO_EIGHT, ["Europe/Vilnius"], ts(2026, 3, 28), ts(2026, 3, 30))
    assert got == [
        (ts(2026, 3, 28, 7), ts(2026, 3, 28, 18)),
        (ts(2026, 3, 29, 6), ts(2026, 3, 29, 17)),
    ]


def test_vilnius_fall_back() -> None:
    # 2026-10-25 04:00 EEST (01:00Z) becomes 03:00 EET.
    got = open_intervals(NINE_TO_EIGHT, ["Europe/Vilnius"], ts(2026, 10, 24), ts(2026, 10, 26))
    assert got == [
        (ts(2026, 10, 24, 6), ts(2026, 10, 24, 17)),
        (ts(2026, 10, 25, 7), ts(2026, 10, 25, 18)),
    ]


def test_an_opening_in_the_skipped_hour_opens_at_the_jump() -> None:
    window = parse_window("03:30-20:00")
    got = open_intervals(window, ["Europe/Vilnius"], ts(2026, 3, 29), ts(2026, 3, 30))
    assert got == [(ts(2026, 3, 29, 1), ts(2026, 3, 29, 17))]
    window = parse_window("02:30-20:00")
    # From midnight EST (05:00Z): 03:00 EDT is 07:00Z.
    got = open_intervals(window, ["America/New_York"], ts(2026, 3, 8, 5), ts(2026, 3, 9))
    assert got == [(ts(2026, 3, 8, 7), ts(2026, 3, 9))]


def test_a_closing_in_the_skipped_hour_closes_at_the_jump() -> None:
    window = parse_window("20:00-03:30")
    got = open_intervals(window, ["Europe/Vilnius"], ts(2026, 3, 28, 12), ts(2026, 3, 29, 12))
    assert got == [(ts(2026, 3, 28, 18), ts(2026, 3, 29, 1))]


def test_an_edge_in_the_repeated_hour_is_passed_twice() -> None:
    # Vilnius: the clock reads 03:30 at 00:30Z, goes back from 04:00 to 03:00 at 01:00Z and
    # reads 03:30 again at 01:30Z.
    window = parse_window("03:30-20:00")
    got = open_intervals(window, ["Europe/Vilnius"], ts(2026, 10, 25), ts(2026, 10, 26))
    assert got == [
        (ts(2026, 10, 25, 0, 30), ts(2026, 10, 25, 1)),
        (ts(2026, 10, 25, 1, 30), ts(2026, 10, 25, 18)),
    ]
    # New York, 2026-11-01: 02:00 EDT (06:00Z) becomes 01:00 EST.
    window = parse_window("01:30-20:00")
    got = open_intervals(window, ["America/New_York"], ts(2026, 11, 1), ts(2026, 11, 2, 2))
    assert got == [
        (ts(2026, 11, 1, 5, 30), ts(2026, 11, 1, 6)),
        (ts(2026, 11, 1, 6, 30), ts(2026, 11, 2, 1)),
    ]


def test_new_york_spring_forward_and_fall_back() -> None:
    # 2026-03-08 02:00 EST (07:00Z) becomes 03:00 EDT; from midnight to midnight local.
    got = open_intervals(NINE_TO_EIGHT, ["America/New_York"], ts(2026, 3, 7, 5), ts(2026, 3, 9, 4))
    assert got == [(ts(2026, 3, 7, 14), ts(2026, 3, 8, 1)), (ts(2026, 3, 8, 13), ts(2026, 3, 9))]
    # 2026-11-01 02:00 EDT (06:00Z) becomes 01:00 EST.
    got = open_intervals(
        NINE_TO_EIGHT, ["America/New_York"], ts(2026, 10, 31, 4), ts(2026, 11, 2, 5)
    )
    assert got == [
        (ts(2026, 10, 31, 13), ts(2026, 11, 1)),
        (ts(2026, 11, 1, 14), ts(2026, 11, 2, 1)),
    ]


def test_a_window_over_midnight_spans_the_dst_night() -> None:
    window = parse_window("20:00-08:00")
    # Fall back: 20:00 EDT (00:00Z) to 08:00 EST (13:00Z), thirteen hours.
    got = open_intervals(window, ["America/New_York"], ts(2026, 10, 31, 12), ts(2026, 11, 2))
    assert got == [(ts(2026, 11, 1), ts(2026, 11, 1, 13))]
    # Spring forward: 20:00 EST (01:00Z) to 08:00 EDT (12:00Z), eleven hours.
    got = open_intervals(window, ["America/New_York"], ts(2026, 3, 7, 14), ts(2026, 3, 8, 18))
    assert got == [(ts(2026, 3, 8, 1), ts(2026, 3, 8, 12))]


def test_a_window_over_midnight_is_cut_at_the_range() -> None:
    window = parse_window("22:00-06:00")
    got = open_intervals(window, ["UTC"], ts(2026, 5, 1, 3), ts(2026, 5, 3, 23))
    assert got == [
        (ts(2026, 5, 1, 3), ts(2026, 5, 1, 6)),
        (ts(2026, 5, 1, 22), ts(2026, 5, 2, 6)),
        (ts(2026, 5, 2, 22), ts(2026, 5, 3, 6)),
        (ts(2026, 5, 3, 22), ts(2026, 5, 3, 23)),
    ]
    got = open_intervals(parse_window("20:00-24:00"), ["UTC"], ts(2026, 5, 1), ts(2026, 5, 2))
    assert got == [(ts(2026, 5, 1, 20), ts(2026, 5, 2))]


def test_the_range_is_taken_in_whole_seconds() -> None:
    start = ts(2026, 5, 1, 10)
    got = open_intervals(NINE_TO_EIGHT, ["UTC"], start + 0.75, start + 3600.25)
    assert got == [(start, start + 3601)]
    assert open_intervals(NINE_TO_EIGHT, ["UTC"], start, start) == []
    assert open_intervals(NINE_TO_EIGHT, ["UTC"], ts(2026, 5, 1, 20), ts(2026, 5, 2, 9)) == []


def test_the_span_is_bounded() -> None:
    start = ts(2026, 1, 1)
    assert len(open_intervals(NINE_TO_EIGHT, ["UTC"], start, start + MAX_SPAN_S)) == 400
    with pytest.raises(InputError, match="400 days"):
        open_intervals(NINE_TO_EIGHT, ["UTC"], start, start + MAX_SPAN_S + 1)


def test_zones_are_required() -> None:
    with pytest.raises(ValueError):
        open_intervals(NINE_TO_EIGHT, [], ts(2026, 1, 1), ts(2026, 1, 2))


# --- open_intervals: several zones ----------------------------------------------------------


def test_a_number_with_two_zones_gets_their_common_hours() -> None:
    zones = zones_for_number("12085551234", None)
    assert zones == BOISE_AND_LA
    got = open_intervals(NINE_TO_EIGHT, zones, ts(2026, 1, 15, 12), ts(2026, 1, 16, 12))
    # 09:00 in Los Angeles (17:00Z) to 20:00 in Boise (03:00Z): 09:00-19:00 Pacific time.
    assert got == [(ts(2026, 1, 15, 17), ts(2026, 1, 16, 3))]
    # Both zones spring forward on 2026-03-08, an hour apart in UTC: the common hours move
    # together.
    got = open_intervals(NINE_TO_EIGHT, zones, ts(2026, 3, 7, 12), ts(2026, 3, 9, 12))
    assert got == [(ts(2026, 3, 7, 17), ts(2026, 3, 8, 3)), (ts(2026, 3, 8, 16), ts(2026, 3, 9, 2))]


def test_australian_mobile_numbers_get_the_hours_all_australia_shares() -> None:
    zones = zones_for_number("61412345678", None)
    assert zones == (
        "Australia/Adelaide",
        "Australia/Brisbane",
        "Australia/Eucla",
        "Australia/Lord_Howe",
        "Australia/Perth",
        "Australia/Sydney",
        "Indian/Christmas",
        "Indian/Cocos",
    )
    # January: Cocos is UTC+6:30, Lord Howe and Sydney UTC+11.
    got = open_intervals(NINE_TO_EIGHT, zones, ts(2026, 1, 15), ts(2026, 1, 16))
    assert got == [(ts(2026, 1, 15, 2, 30), ts(2026, 1, 15, 9))]


def test_zones_that_share_no_hour_give_nothing() -> None:
    window = parse_window("09:00-17:00")
    assert (
        open_intervals(window, ["Europe/London", "Asia/Tokyo"], ts(2026, 1, 1), ts(2027, 1, 1))
        == []
    )
    russian_mobile = zones_for_number("79131234567", None)
    morning = parse_window("09:00-12:00")
    assert open_intervals(morning, russian_mobile, ts(2026, 1, 1), ts(2027, 1, 1)) == []
    assert NO_SHARED_HOUR_REASON


def test_zones_a_day_apart_share_the_clock() -> None:
    # Kiritimati (UTC+14) and Pago Pago (UTC-11) read the same hour a day apart but one hour
    # apart on the clock.
    got = open_intervals(
        NINE_TO_EIGHT, ["Pacific/Kiritimati", "Pacific/Pago_Pago"], ts(2026, 6, 1), ts(2026, 6, 2)
    )
    assert got == [(ts(2026, 6, 1), ts(2026, 6, 1, 6)), (ts(2026, 6, 1, 20), ts(2026, 6, 2))]


ZONES = [
    "Europe/Vilnius",
    "America/New_York",
    "America/Los_Angeles",
    "Australia/Lord_Howe",  # a half-hour summer time
    "Asia/Kathmandu",  # UTC+5:45
    "Pacific/Chatham",  # UTC+12:45, summer time +13:45
    "America/Havana",  # changes at midnight
    "America/Santiago",  # changes at 24:00 on Saturday
    "Africa/Casablanca",  # an hour back during Ramadan
    "America/Nuuk",
    "Pacific/Kiritimati",
    "UTC",
]


@st.composite
def windows(draw: st.DrawFn) -> Window:
    start = draw(st.integers(0, 24 * 60 - 1))
    end = draw(st.integers(0, 24 * 60 - 1).filter(lambda minute: minute != start))
    return Window(time(*divmod(start, 60)), time(*divmod(end, 60)))


@settings(max_examples=60, deadline=None)
@given(
    window=windows(),
    zones=st.lists(st.sampled_from(ZONES), min_size=1, max_size=3, unique=True),
    start=st.integers(ts(2025, 1, 1), ts(2027, 12, 1)),
    span=st.integers(0, 40 * DAY),
    samples=st.lists(st.integers(0, 40 * DAY), max_size=40),
)
def test_intervals_are_exactly_the_instants_inside_the_window(
    window: Window, zones: list[str], start: int, span: int, samples: list[int]
) -> None:
    end = start + span
    intervals = open_intervals(window, zones, start, end)
    assert all(start <= s < e <= end for s, e in intervals)
    assert all(e < following for (_, e), (following, _) in pairwise(intervals))
    for s, e in intervals:
        # Every interval lies inside the window in every zone, edges included ...
        assert in_window(window, zones, s)
        assert in_window(window, zones, e - 1)
        assert in_window(window, zones, (s + e) // 2)
        # ... and is as long as it can be.
        assert s == start or not in_window(window, zones, s - 1)
        assert e == end or not in_window(window, zones, e)
    for offset in samples:
        t = start + offset % (span or 1)
        if t < end:
            assert next_open(intervals, t)[0] == in_window(window, zones, t)


# --- encode and decode ----------------------------------------------------------------------


def test_encoding_is_plain_text() -> None:
    intervals = [(1767250800, 1767290400), (1767337200, 1767376800)]
    assert encode_intervals(intervals) == "1767250800-1767290400,1767337200-1767376800"
    assert decode_intervals("1767250800-1767290400,1767337200-1767376800") == intervals
    assert encode_intervals([]) == ""
    assert decode_intervals("") == []


@st.composite
def interval_lists(draw: st.DrawFn) -> list[tuple[int, int]]:
    edges = sorted(draw(st.sets(st.integers(0, 2**40), max_size=40)))
    return list(zip(edges[::2], edges[1::2], strict=False))


@given(interval_lists())
def test_encoding_round_trips(intervals: list[tuple[int, int]]) -> None:
    assert decode_intervals(encode_intervals(intervals)) == intervals


def test_real_intervals_round_trip() -> None:
    intervals = open_intervals(
        NINE_TO_EIGHT, BOISE_AND_LA, ts(2026, 1, 1), ts(2026, 1, 1) + MAX_SPAN_S
    )
    text = encode_intervals(intervals)
    assert decode_intervals(text) == intervals
    assert len(text) < 10_000


@pytest.mark.parametrize(
    "text",
    ["1-", "-1", "1", "a-b", "1-2,", ",1-2", "1-2;3-4", "1 -2", "+1-2", "1-2-3", "\u0661-\u0662"],
)
def test_decoding_refuses_anything_else(text: str) -> None:
    with pytest.raises(ValueError):
        decode_intervals(text)


# --- next_open and window_state -------------------------------------------------------------

INTERVALS = [(100, 200), (300, 400)]


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (0, (False, 100)),
        (99.9, (False, 100)),
        (100, (True, 100)),
        (150.5, (True, 150)),
        (199, (True, 199)),
        (200, (False, 300)),
        (399, (True, 399)),
        (400, (False, None)),
        (10_000, (False, None)),
    ],
)
def test_next_open(now: float, expected: tuple[bool, int | None]) -> None:
    assert next_open(INTERVALS, now) == expected


def test_next_open_without_intervals() -> None:
    assert next_open([], 0) == (False, None)


def test_window_state_counts_recipients() -> None:
    groups = [(INTERVALS, 5), ([(250, 260)], 3), ([(120, 130), (500, 600)], 2), ([], 7)]
    assert window_state(groups, 150) == WindowState(inside=5, waiting=5, closed=7, next_open_ts=250)
    assert window_state(groups, 125) == WindowState(inside=7, waiting=3, closed=7, next_open_ts=250)
    assert window_state([], 0) == WindowState(0, 0, 0, None)
