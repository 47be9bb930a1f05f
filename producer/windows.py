"""Quiet hours (``--window``): when each recipient may get a message, in their local time.

Parses windows and zones, finds a number's time zones (phonenumbers), and works out the UTC
intervals the ledger stores (ledger/quiet_hours.py).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, time
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import (
    COUNTRY_CODE_TO_REGION_CODE,
    PhoneMetadata,
    PhoneNumberType,
    is_number_type_geographical,
)
from phonenumbers.timezone import (
    TIMEZONE_DATA,
    TIMEZONE_LONGEST_PREFIX,
    UNKNOWN_TIMEZONE,
    time_zones_for_number,
)

from ledger.errors import InputError

DAY_S = 86_400
# A campaign may be scheduled up to a year ahead and then live its TTL; past this span one
# group's intervals would outgrow a few kilobytes and its computation a few milliseconds.
MAX_SPAN_S = 400 * DAY_S
# Offsets are probed this far apart and a change is then bisected to the second: no zone's
# future rules change its offset twice within six hours (real transitions are weeks apart).
_PROBE_S = 6 * 3600
# Reasons the producer gives when it rejects a number of a campaign with quiet hours.
UNPLACEABLE_REASON = "cannot tell the number's time zone; give --timezone"
NO_SHARED_HOUR_REASON = "its time zones share no hour of the window"

_WINDOW = re.compile(r"\s*([0-9]{1,2}):([0-9]{2})\s*-\s*([0-9]{1,2}):([0-9]{2})\s*")
_EXPECTED = "expected HH:MM-HH:MM on the 24-hour clock, e.g. 09:00-20:00"
# Inputs are quoted in one-line messages: longer ones are cut here.
_QUOTE_CHARS = 40


class UnplaceableNumber(InputError):
    """phonenumbers cannot tell the number's time zone and no fallback zone was given."""

    def __init__(self, number: str) -> None:
        super().__init__(UNPLACEABLE_REASON)
        self.number = number


@dataclass(frozen=True)
class Window:
    """Local times of day between which messages may go: [start, end), wrapping midnight when
    end is earlier than start (20:00-08:00)."""

    start: time
    end: time

    def __post_init__(self) -> None:
        for t in (self.start, self.end):
            if t.tzinfo is not None or t.microsecond:
                raise ValueError(f"a window edge is a naive time in whole seconds, not {t!r}")
        if self.start == self.end:
            raise ValueError("a window starts and ends at different times")

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"

    @property
    def wraps(self) -> bool:
        """Whether the window runs over midnight."""
        return self.end < self.start


def parse_window(text: str) -> Window:
    """``HH:MM-HH:MM`` on the 24-hour clock; 24:00 may end a window; start and end differ."""
    match = _WINDOW.fullmatch(text)
    if match is None:
        raise InputError(f"window {_quote(text)}: {_EXPECTED}")
    sh, sm, eh, em = (int(part) for part in match.groups())
    if sh > 23 or sm > 59 or em > 59 or eh > 24 or (eh == 24 and em):
        raise InputError(f"window {_quote(text)}: not a time of day; {_EXPECTED}")
    start, end = time(sh, sm), time(eh % 24, em)
    if start == end:
        raise InputError(
            f"window {_quote(text)}: starts and ends at the same time; {_EXPECTED} "
            "(leave the window out to send at any hour)"
        )
    return Window(start, end)


def parse_timezone(name: str) -> str:
    """An IANA zone name (``Europe/Vilnius``) that zoneinfo knows, as given."""
    name = name.strip()
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InputError(
            f"time zone {_quote(name)}: not an IANA time zone name, e.g. Europe/Vilnius"
        ) from None
    return name


def _quote(text: str) -> str:
    return repr(text if len(text) <= _QUOTE_CHARS else text[:_QUOTE_CHARS] + "...")


# --- the time zones of a number ------------------------------------------------------------
#
# phonenumbers answers in about 20 us a number, most of it parsing, which for a million
# numbers is 20 s. A cache keyed by leading digits would be wrong: the answer depends on the
# whole number (an invalid number has no zone; a mobile number outside the few countries
# whose mobile ranges are geographic gets its country's zones, not its prefix's). So this
# replays what time_zones_for_number does, on the same metadata, with patterns compiled per
# region and number length: the country code, the region (leading digits or the number's
# validity, as region_code_for_number does), the type class (invalid, geographic, other),
# then the zones of the longest prefix or of the country. Numbers whose parsing phonenumbers
# would change (a national prefix it strips, lengths it refuses) go to phonenumbers itself;
# it keeps leading zeros (Italy's fixed lines), so those need nothing special.
# tests/unit/test_windows.py checks the two agree on numbers from every prefix of its data.

_INVALID, _GEOGRAPHIC, _OTHER = 0, 1, 2
# Number types that are never geographic, in the order phonenumbers tests them (before
# fixed line and mobile, so a number matching one of them is of that type).
_OTHER_TYPES = (
    "premium_rate",
    "toll_free",
    "shared_cost",
    "voip",
    "personal_number",
    "pager",
    "uan",
    "voicemail",
)
# phonenumbers parses a national number of 2 to 17 digits; other lengths raise.
_NSN_DIGITS = range(2, 18)


def _normalised(zones: Sequence[str]) -> tuple[str, ...]:
    return tuple(sorted(set(zones)))


_UNKNOWN: tuple[str, ...] = (UNKNOWN_TIMEZONE,)
_PREFIX_ZONES: dict[str, tuple[str, ...]] = {
    prefix: _normalised(zones) for prefix, zones in TIMEZONE_DATA.items()
}


def _alternatives(descs: Sequence[Any], length: int) -> str | None:
    """The patterns of the number descriptions that admit numbers of this length, as one."""
    patterns = [
        desc.national_number_pattern
        for desc in descs
        if desc is not None
        and desc.national_number_pattern
        and (not desc.possible_length or length in desc.possible_length)
    ]
    return "|".join(f"(?:{pattern})" for pattern in patterns) if patterns else None


class _Region:
    """A region's number types, as phonenumbers' _number_type_helper decides them."""

    __slots__ = ("_by_length", "_classes", "leading", "metadata")

    def __init__(self, metadata: Any, geographic_mobile: bool) -> None:
        self.metadata = metadata
        leading = metadata.leading_digits
        self.leading = None if leading is None else re.compile(leading)
        mobile = _GEOGRAPHIC if geographic_mobile else _OTHER
        self._classes = {"other": _OTHER, "fixed": _GEOGRAPHIC, "mobile": mobile}
        self._by_length: dict[int, re.Pattern[str] | None] = {}

    def classify(self, nsn: str) -> int:
        try:
            test = self._by_length[len(nsn)]
        except KeyError:
            test = self._by_length[len(nsn)] = self._compile(len(nsn))
        match = test.fullmatch(nsn) if test is not None else None
        return _INVALID if match is None else self._classes[match.lastgroup or ""]

    def _compile(self, length: int) -> re.Pattern[str] | None:
        """One pattern whose matching group names the type class, None if nothing can match.

        The general description must match; then the first of the other types, fixed line
        and mobile that matches wins, as in phonenumbers (metadata patterns capture nothing).
        """
        m = self.metadata
        general = _alternatives([m.general_desc], length)
        branches = {
            "other": _alternatives([getattr(m, name) for name in _OTHER_TYPES], length),
            "fixed": _alternatives([m.fixed_line], length),
            # Where mobile and fixed-line patterns are the same, phonenumbers never tests mobile.
            "mobile": None
            if m.same_mobile_and_fixed_line_pattern
            else _alternatives([m.mobile], length),
        }
        tests = "|".join(f"(?P<{name}>{p})" for name, p in branches.items() if p is not None)
        if general is None or not tests:
            return None
        return re.compile(f"(?=(?:{general})\\Z)(?:{tests})")


class _Country:
    """A country calling code: its regions, national prefix and zones."""

    __slots__ = (
        "classify",
        "code",
        "country_zones",
        "national_prefix",
        "prefix_lengths",
        "regions",
    )

    def __init__(self, code: str) -> None:
        self.code = code
        region_codes = COUNTRY_CODE_TO_REGION_CODE[int(code)]
        geographic_mobile = is_number_type_geographical(PhoneNumberType.MOBILE, int(code))
        self.regions = [
            _Region(metadata, geographic_mobile)
            for metadata in (
                PhoneMetadata.metadata_for_region_or_calling_code(int(code), region)
                for region in region_codes
            )
            if metadata is not None
        ]
        main = PhoneMetadata.metadata_for_region_or_calling_code(int(code), region_codes[0])
        prefix = main.national_prefix_for_parsing if main is not None else None
        self.national_prefix = re.compile(prefix) if prefix else None
        # As phonenumbers' _country_level_time_zones_for_number looks it up.
        self.country_zones = next(
            (
                _PREFIX_ZONES[code[: 1 + n]]
                for n in range(TIMEZONE_LONGEST_PREFIX, 0, -1)
                if code[: 1 + n] in _PREFIX_ZONES
            ),
            _UNKNOWN,
        )
        # The lengths of the prefixes that can match a number of this code, longest first:
        # trying only these finds the same longest prefix as trying 9 digits down to 1.
        self.prefix_lengths = sorted(
            {len(p) for p in _PREFIX_ZONES if p.startswith(code) or code.startswith(p)},
            reverse=True,
        )
        self.classify = self.regions[0].classify if len(self.regions) == 1 else self._classify

    def _classify(self, nsn: str) -> int:
        """The number's class in its region, found as region_code_for_number finds it."""
        for region in self.regions:
            if region.leading is not None:
                if region.leading.match(nsn):
                    return region.classify(nsn)
            else:
                kind = region.classify(nsn)
                if kind != _INVALID:
                    return kind
        return _INVALID

    def strips_prefix(self, nsn: str) -> bool:
        """Whether phonenumbers' parser might strip a national prefix from the number."""
        match = None if self.national_prefix is None else self.national_prefix.match(nsn)
        return match is not None and (
            match.end() > 0 or any(group is not None for group in match.groups())
        )


_CODES = frozenset(str(code) for code in COUNTRY_CODE_TO_REGION_CODE)
_COUNTRIES: dict[str, _Country] = {}


def _phonenumbers_zones(number: str) -> tuple[str, ...]:
    """phonenumbers' own answer, for the numbers the fast path leaves to it."""
    try:
        parsed = phonenumbers.parse("+" + number)
    except phonenumbers.NumberParseException:
        return _UNKNOWN
    zones = _normalised(time_zones_for_number(parsed))
    return _UNKNOWN if zones == _UNKNOWN else zones


def _number_zones(number: str) -> tuple[str, ...]:
    """The zones phonenumbers gives the number, or _UNKNOWN itself."""
    # The country code as phonenumbers extracts it: the first of 1, 2 or 3 digits it knows.
    if number[:1] in _CODES:
        code = number[:1]
    elif number[:2] in _CODES:
        code = number[:2]
    elif number[:3] in _CODES:
        code = number[:3]
    else:
        return _phonenumbers_zones(number)
    nsn = number[len(code) :]
    country = _COUNTRIES.get(code)
    if country is None:
        country = _COUNTRIES[code] = _Country(code)
    if (
        not (nsn.isascii() and nsn.isdigit())
        or len(nsn) not in _NSN_DIGITS
        or country.strips_prefix(nsn)
    ):
        return _phonenumbers_zones(number)
    kind = country.classify(nsn)
    if kind == _GEOGRAPHIC:
        for n in country.prefix_lengths:
            zones = _PREFIX_ZONES.get(number[:n])
            if zones is not None:
                return zones
        return _UNKNOWN
    return country.country_zones if kind == _OTHER else _UNKNOWN


def zones_for_number(number: str, fallback: str | None) -> tuple[str, ...]:
    """Sorted distinct IANA zones of a number given as E.164 digits without ``+``.

    A number phonenumbers cannot place gets ``(fallback,)`` (a name from parse_timezone);
    without a fallback it raises UnplaceableNumber.
    """
    zones = _number_zones(number)
    if zones is _UNKNOWN:
        if fallback is None:
            raise UnplaceableNumber(number)
        return (fallback,)
    return zones


# --- UTC intervals ----------------------------------------------------------------------------


def open_intervals(
    window: Window, zones: Sequence[str], start_ts: float, end_ts: float
) -> list[tuple[int, int]]:
    """The UTC intervals in [floor(start_ts), ceil(end_ts)) when the wall clock reads a time in
    the window in every one of the zones; empty when the zones share no such instant.

    The rule across DST changes follows from "the wall clock reads": an edge that falls in a
    skipped hour takes effect at the jump (02:30 on a night that goes 02:00 -> 03:00 opens at
    03:00); an edge in a repeated hour is passed twice and the window follows the clock
    (01:30-20:00 on a night that goes 02:00 -> 01:00 opens at the first 01:30, closes at the
    jump back to 01:00 and opens again at the second 01:30). Intervals are half-open
    [start, end) in whole Unix seconds, sorted, disjoint and never touching.
    """
    names = sorted(set(zones))
    if not names:
        raise ValueError("open_intervals needs at least one time zone")
    lo, hi = math.floor(start_ts), math.ceil(end_ts)
    if hi - lo > MAX_SPAN_S:
        raise InputError(
            f"quiet hours cover at most {MAX_SPAN_S // DAY_S} days from the campaign's start; "
            f"this one runs {math.ceil((hi - lo) / DAY_S)} days"
        )
    result = list(_zone_intervals(window, names[0], lo, hi))
    for zone in names[1:]:
        if not result:
            break
        result = _intersect(result, _zone_intervals(window, zone, lo, hi))
    return result


# The groups of a campaign share zones (Russia's mobile numbers take all its zones, its
# landlines one each); an entry is at most ~50 kB (400 days), so a few megabytes in all.
@lru_cache(maxsize=64)
def _zone_intervals(window: Window, zone: str, lo: int, hi: int) -> tuple[tuple[int, int], ...]:
    """One zone's intervals."""
    tz = ZoneInfo(zone)
    start, end = _seconds(window.start), _seconds(window.end)
    if end < start:
        end += DAY_S
    found: list[tuple[int, int]] = []
    for a, b, offset in _offset_spans(tz, lo, hi):
        # Local time is t + offset throughout [a, b): the window repeats every day in it.
        for day in range((a + offset) // DAY_S - 1, (b + offset) // DAY_S + 1):
            s = max(a, day * DAY_S + start - offset)
            e = min(b, day * DAY_S + end - offset)
            if s < e:
                found.append((s, e))
    return tuple(_merge(found))


def _seconds(t: time) -> int:
    return t.hour * 3600 + t.minute * 60 + t.second


def _offset(tz: ZoneInfo, ts: int) -> int:
    offset = datetime.fromtimestamp(ts, tz).utcoffset()
    assert offset is not None
    return int(offset.total_seconds())


def _offset_spans(tz: ZoneInfo, lo: int, hi: int) -> list[tuple[int, int, int]]:
    """[lo, hi) cut where the zone's UTC offset changes: (start, end, offset) each."""
    spans = []
    start, offset = lo, _offset(tz, lo)
    t = lo
    while t < hi - 1:
        probe = min(t + _PROBE_S, hi - 1)
        probed = _offset(tz, probe)
        if probed != offset:
            before, after = t, probe
            while after - before > 1:
                middle = (before + after) // 2
                if _offset(tz, middle) == offset:
                    before = middle
                else:
                    after = middle
            spans.append((start, after, offset))
            start, offset = after, probed
        t = probe
    spans.append((start, hi, offset))
    return spans


def _merge(intervals: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for s, e in sorted(intervals):
        if merged and s <= merged[-1][1]:
            if e > merged[-1][1]:
                merged[-1] = (merged[-1][0], e)
        else:
            merged.append((s, e))
    return merged


def _intersect(
    xs: Sequence[tuple[int, int]], ys: Sequence[tuple[int, int]]
) -> list[tuple[int, int]]:
    out = []
    i = j = 0
    while i < len(xs) and j < len(ys):
        s, e = max(xs[i][0], ys[j][0]), min(xs[i][1], ys[j][1])
        if s < e:
            out.append((s, e))
        if xs[i][1] < ys[j][1]:
            i += 1
        else:
            j += 1
    return _merge(out)
