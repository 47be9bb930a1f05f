"""Validation and normalisation of destination phone numbers.

Turns what people type ("+44 (20) 7946-0958", "0044...") into the digits-only E.164 DIDWW wants.
"""

from __future__ import annotations

import operator
import re
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ledger.campaigns import FIELD_SEPARATOR, MAX_REFERENCE_CHARS
from ledger.errors import InputError
from producer.e164 import MAX_DIGITS, POSSIBLE_LENGTHS, InvalidNumber, checked

__all__ = [
    "MAX_DIGITS",
    "MAX_FIELDS",
    "MAX_REFERENCE_CHARS",
    "MAX_VALUE_CHARS",
    "InvalidNumber",
    "NumbersCollector",
    "NumbersResult",
    "Rejection",
    "normalize",
    "normalize_many",
    "normalize_recipients",
    "shorten",
    "too_long_value",
    "too_many_fields",
]

# Longer values are cut in rejection reports so one runaway line cannot flood the output.
MAX_REJECTED_VALUE_CHARS = 40
# A campaign's recipients carry at most this many distinct fields, and a value at most this
# many characters: far more than any message template uses, and the bound that keeps the
# work per recipient (a value for every field) and the values stored with it small.
MAX_FIELDS = 64
MAX_VALUE_CHARS = 1000

# Formatting people put in numbers: spaces (incl. the no-break ones spreadsheets and word
# processors insert), tabs, hyphen and the Unicode dashes that autocorrect makes of it, dots
# and parentheses. Dropping them cannot change which digits were meant.
_SEPARATORS = (
    " \t.()-"
    "\u00a0\u2007\u202f"  # no-break, figure and narrow no-break spaces
    "\u2010\u2011\u2012\u2013\u2014\u2015\u2212"  # hyphen, dashes and the minus sign
)
_DROP_SEPARATORS = str.maketrans("", "", _SEPARATORS)
_ASCII_DIGITS = frozenset("0123456789")
# Most input is already clean; matching it in one C call keeps a million-line file fast.
_CLEAN = re.compile(r"\+?([1-9][0-9]*)")
_DIGITS = re.compile(r"[1-9][0-9]*")
# Most numbers are answered by one look-up of their first four digits in POSSIBLE_LENGTHS,
# whose method is bound once: 0.09 s less for a million numbers.
_lengths_for = POSSIBLE_LENGTHS.get
_NONE: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class Rejection:
    """One rejected input: where it was (1-based), what was written, and why it was refused."""

    line: int
    value: str
    reason: str


@dataclass(slots=True)
class NumbersResult:
    """Valid numbers in first-seen order without duplicates, plus every rejected input.

    With fields (a recipients CSV's other columns, or recipients given as objects): `columns`
    names them, `values[i]` holds number i's values joined by FIELD_SEPARATOR in that order,
    and `line_of[i]` is where number i was found (for a per-line rejection later). With
    references (a `reference` column or key), `references[i]` is number i's ('' for none);
    without, `references` is empty."""

    numbers: list[str] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    duplicates: int = 0
    lines: int = 0
    columns: tuple[str, ...] = ()
    values: list[str] = field(default_factory=list)
    line_of: array[int] = field(default_factory=lambda: array("I"))
    references: list[str] = field(default_factory=list)

    def row(self, i: int) -> list[str]:
        """Number i's field values, in `columns` order ('' for none)."""
        if not self.columns:
            return []
        return self.values[i].split(FIELD_SEPARATOR)


def reference_problem(reference: str) -> str:
    """Why `reference` cannot be a message's reference, or '' if it can."""
    if len(reference) > MAX_REFERENCE_CHARS:
        return f"reference is {len(reference):,} characters long; at most {MAX_REFERENCE_CHARS}"
    if not reference.isprintable():
        return "reference contains a control character"
    return ""


def normalize(raw: str) -> str:
    """Return `raw` as E.164 digits (country code first, no '+'), or raise InvalidNumber.

    The number starts with its country code (after '+', '00' or nothing) and its length must be
    possible there (producer/e164.py); a national prefix after the code is dropped as
    phonenumbers drops it ("+44 (0)20 7946 0958" is 442079460958)."""
    clean = _CLEAN.fullmatch(raw)
    if clean is not None:
        value = clean[1]
        if len(value) in _lengths_for(value[:4], _NONE):
            return value
        return checked(value)
    # Spaces and hyphens are nearly all the formatting people use, and str.replace drops them
    # several times faster than translate; the full separator set is only needed after that.
    value = raw.strip().replace(" ", "").replace("-", "")
    clean = _CLEAN.fullmatch(value)
    if clean is None:
        value = value.translate(_DROP_SEPARATORS)
        if not value:
            raise InvalidNumber("empty")
        # Only one international prefix is removed: "+00..." or "00+..." is a mistake to report.
        if value.startswith("+"):
            value = value[1:]
        elif value.startswith("00"):
            value = value[2:]
        if not _DIGITS.fullmatch(value):
            raise InvalidNumber(_reason(value))
    else:
        value = clean[1]
    if len(value) in _lengths_for(value[:4], _NONE):
        return value
    return checked(value)


def _reason(value: str) -> str:
    """Why `value` (separators and prefix already removed) is not digits after a country code."""
    if not value:
        return "no digits"
    for char in value:
        if char not in _ASCII_DIGITS:
            if char.isdigit():
                return f"contains {char!r}, which is not an ASCII digit 0-9"
            return f"contains {char!r}, which is not a digit"
    return "starts with 0 (a national number? give the country code)"


def shorten(value: str) -> str:
    """Cut `value` to MAX_REJECTED_VALUE_CHARS, marking the cut with an ellipsis."""
    if len(value) <= MAX_REJECTED_VALUE_CHARS:
        return value
    return value[: MAX_REJECTED_VALUE_CHARS - 1] + "\u2026"


class NumbersCollector:
    """Builds a NumbersResult one input at a time, so a large file never exists as a list."""

    __slots__ = (
        "_columns",
        "_duplicates",
        "_line_of",
        "_lines",
        "_references",
        "_rejections",
        "_seen",
        "_values",
    )

    def __init__(self, columns: tuple[str, ...] = (), references: bool = False) -> None:
        # A dict is an insertion-ordered set: first occurrence order comes for free.
        self._seen: dict[str, None] = {}
        self._rejections: list[Rejection] = []
        self._duplicates = 0
        self._lines = 0
        self._columns = columns
        self._values: list[str] = []
        self._line_of = array("I")
        # Kept only when the input has references (add_referenced): add() never touches it.
        self._references: list[str] | None = [] if references else None

    def add(self, line: int, raw: str, values: str = "") -> None:
        """Normalise `raw` (found at `line`) and keep it, count it as a duplicate, or reject it.
        `values`: its field values joined by FIELD_SEPARATOR (kept for its first occurrence)."""
        self._lines += 1
        try:
            number = normalize(raw)
        except InvalidNumber as exc:
            self._rejections.append(Rejection(line, shorten(raw), exc.reason))
            return
        if number in self._seen:
            self._duplicates += 1
        else:
            self._seen[number] = None
            self._line_of.append(line)
            if self._columns:
                self._values.append(values)

    def add_referenced(self, line: int, raw: str, values: str, reference: str) -> None:
        """As add(), for a collector made with references: `reference` ('' for none) is kept
        with the number's first occurrence; one that cannot be a reference rejects the line."""
        references = self._references
        if references is None:
            raise ValueError("a NumbersCollector made without references")
        reference = reference.strip()
        if reference:
            problem = reference_problem(reference)
            if problem:
                self.reject(line, raw, problem)
                return
        kept = len(self._seen)
        self.add(line, raw, values)
        if len(self._seen) > kept:
            references.append(reference)

    def reject(self, line: int, raw: str, reason: str) -> None:
        """Record an input at `line` that was refused before it could be read as a number."""
        self._lines += 1
        self._rejections.append(Rejection(line, shorten(raw), reason))

    @property
    def columns(self) -> tuple[str, ...]:
        return self._columns

    @property
    def lines(self) -> int:
        """How many inputs have been added or rejected so far."""
        return self._lines

    def result(self) -> NumbersResult:
        """The numbers, rejections and counts collected so far."""
        return NumbersResult(
            numbers=list(self._seen),
            rejections=list(self._rejections),
            duplicates=self._duplicates,
            lines=self._lines,
            columns=self._columns,
            values=self._values,
            line_of=self._line_of,
            # A reference column left empty on every line is no references at all.
            references=list(self._references) if any(self._references or ()) else [],
        )


def normalize_many(values: Iterable[str]) -> NumbersResult:
    """Normalise numbers given one by one (e.g. `--to` options); `line` is the 1-based position."""
    collector = NumbersCollector()
    for position, raw in enumerate(values, start=1):
        collector.add(position, raw)
    return collector.result()


def normalize_recipients(recipients: Iterable[str | Mapping[str, object]]) -> NumbersResult:
    """Recipients given as plain numbers or as objects `{"destination": ..., "fields": {...},
    "reference": ...}` (the Python and HTTP APIs); `line` is the 1-based position. Field values
    and references must be text (or numbers, turned into text); a recipient whose entry is
    malformed is rejected."""
    items = list(recipients)
    names: dict[object, None] = {}
    with_refs = False
    # Nearly every recipient names fields already seen: compared as key views, in C, without
    # building a dict each (0.4 s of a million recipients with ten fields).
    known = names.keys()
    for item in items:
        if _is_mapping(item):
            if not with_refs and item.get("reference") not in (None, ""):  # type: ignore[union-attr]
                with_refs = True
            found = item.get("fields")  # type: ignore[union-attr]
            if _is_mapping(found) and found and not known >= found.keys():  # type: ignore[union-attr]
                names.update(dict.fromkeys(found))  # type: ignore[arg-type]
                if len(names) > MAX_FIELDS:
                    raise too_many_fields(len(names), "the recipients")
    names_given = tuple(names)
    collector = NumbersCollector(tuple(str(name) for name in names_given), with_refs)
    add, add_referenced = collector.add, collector.add_referenced
    # Most recipients give every field as text: picked and joined in C and checked once whole,
    # which halves the time per recipient (docs/performance.md); any other goes field by field.
    pick = operator.itemgetter(*names_given) if names_given else None
    single = len(names_given) == 1
    separators = len(names_given) - 1
    no_values = FIELD_SEPARATOR.join([""] * len(names_given))
    for position, item in enumerate(items, start=1):
        if isinstance(item, str):
            if with_refs:
                add_referenced(position, item, no_values, "")
            else:
                add(position, item, no_values)
            continue
        if not _is_mapping(item) or not isinstance(item.get("destination"), str):  # type: ignore[union-attr]
            collector.reject(
                position, str(item), "not a number nor {destination, fields, reference}"
            )
            continue
        destination = item["destination"]  # type: ignore[index]
        fields = item.get("fields") or {}  # type: ignore[union-attr]
        if not _is_mapping(fields):
            collector.reject(position, destination, "fields must be an object")
            continue
        reference = ""
        if with_refs:
            given = item.get("reference")  # type: ignore[union-attr]
            if given is not None:
                if isinstance(given, bool) or not isinstance(given, str | int):
                    collector.reject(position, destination, "reference must be text")
                    continue
                reference = str(given)
        if pick is not None:
            try:
                picked = pick(fields)
                joined = FIELD_SEPARATOR.join((picked,) if single else picked)
            except (KeyError, TypeError):
                joined = None  # a field missing or not text: the careful path below
            if (
                joined is not None
                and len(joined) <= MAX_VALUE_CHARS
                and joined.count(FIELD_SEPARATOR) == separators
            ):
                if with_refs:
                    add_referenced(position, destination, joined, reference)
                else:
                    add(position, destination, joined)
                continue
        row = []
        reason = ""
        for name in names_given:
            value = fields.get(name, "")
            if value is None:
                value = ""
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                reason = "a field value is not text"
                break
            text = str(value)
            if len(text) > MAX_VALUE_CHARS:
                reason = too_long_value(str(name), len(text))
                break
            row.append(text.replace(FIELD_SEPARATOR, " "))
        if reason:
            collector.reject(position, destination, reason)
        elif with_refs:
            add_referenced(position, destination, FIELD_SEPARATOR.join(row), reference)
        else:
            add(position, destination, FIELD_SEPARATOR.join(row))
    return collector.result()


def _is_mapping(value: object) -> bool:
    # A dict (what JSON and most callers give) is told in a few nanoseconds; the ABC check,
    # for other mappings, takes a hundred times longer, once per recipient and field set.
    return type(value) is dict or isinstance(value, Mapping)


def too_many_fields(found: int, where: str) -> InputError:
    return InputError(
        f"{where} name {'more than ' if found > MAX_FIELDS else ''}{MAX_FIELDS} distinct "
        f"fields; a campaign may have at most {MAX_FIELDS}"
    )


def too_long_value(name: str, chars: int) -> str:
    """The reason a recipient is rejected for a field value over MAX_VALUE_CHARS."""
    return f"field {name!r} is {chars:,} characters long; at most {MAX_VALUE_CHARS:,}"
