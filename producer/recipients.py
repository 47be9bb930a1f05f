"""Reading a recipients file (or standard input): one number per line, or a CSV with a
phone-number column.

The file is streamed once; bad lines become rejections, and only a file that cannot be used
at all raises RecipientsFileError.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from ledger.errors import InputError
from producer.numbers import (
    FIELD_SEPARATOR,
    MAX_FIELDS,
    MAX_VALUE_CHARS,
    InvalidNumber,
    NumbersCollector,
    NumbersResult,
    normalize,
    too_long_value,
    too_many_fields,
)

# Header names that mark the column holding the numbers, in the order the error message lists
# them; "phone number" is GOV.UK Notify's. Compared as column_key() makes them.
COLUMN_NAMES = ("destination", "phone", "phone number", "number", "msisdn")
# The header of the column holding each recipient's reference (compared as column_key()).
REFERENCE_COLUMN = "reference"
# What spreadsheets export: comma, semicolon (locales with a decimal comma) and tab.
DELIMITERS = (",", ";", "\t")
# Enough of the file's start to catch a binary file before looking for its first line break.
SNIFF_BYTES = 8192


class RecipientsFileError(InputError):
    """The recipients file cannot be used at all; the message names the file and says why."""


class _BinaryContent(Exception):
    """A NUL byte was found; turned into RecipientsFileError at the one place that names files."""


def column_key(name: str) -> str:
    """A column name as it is compared: GOV.UK Notify's rule, so case, spaces, underscores and
    hyphens do not count ("Phone Number", "phone_number" and "phonenumber" are one column)."""
    return "".join(name.split()).replace("_", "").replace("-", "").lower()


def read_recipients(source: str | Path | BinaryIO, column: str | None = None) -> NumbersResult:
    """Read the numbers in `source` (a path, or a binary stream such as standard input): a
    one-per-line list, or a CSV whose number column is `column` or else a recognised one."""
    if isinstance(source, str | Path):
        label = f"recipients file '{source}'"
    else:
        # A stream without a name is taken for standard input (click's test runner gives one).
        name = getattr(source, "name", "<stdin>")
        label = "recipients on standard input" if name == "<stdin>" else f"recipients '{name}'"
    try:
        if not isinstance(source, str | Path):
            return _read_stream(source, label, column)
        with open(source, "rb") as raw:
            return _read_stream(raw, label, column)
    except FileNotFoundError as exc:
        raise RecipientsFileError(f"{label} does not exist") from exc
    except IsADirectoryError as exc:
        raise RecipientsFileError(f"{label} is a directory, not a file") from exc
    except PermissionError as exc:
        raise RecipientsFileError(f"{label} cannot be read: permission denied") from exc
    except (_BinaryContent, UnicodeDecodeError) as exc:
        raise RecipientsFileError(f"{label} is not a UTF-8 text file (binary?)") from exc
    except OSError as exc:
        raise RecipientsFileError(f"{label} cannot be read: {exc.strerror or exc}") from exc


def _read_stream(raw: BinaryIO, label: str, column: str | None) -> NumbersResult:
    # A stream without peek() (an in-memory one) is still checked line by line.
    peek = getattr(raw, "peek", None)
    if peek is not None and b"\0" in peek(SNIFF_BYTES):
        raise _BinaryContent
    # newline="" keeps "\r\n" inside quoted CSV fields intact while still ending lines at
    # "\n", "\r\n" or "\r"; utf-8-sig drops the BOM Excel writes.
    text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
    try:
        return _read(text, label, column)
    finally:
        # The caller owns the stream: reading it must not close it (standard input).
        text.detach()


def _read(text: io.TextIOWrapper, label: str, wanted: str | None) -> NumbersResult:
    first_line, first = _first_content(text)
    if not first:
        raise RecipientsFileError(f"{label} is empty")
    if wanted is not None:
        column = _named_column(first, wanted)
        if column is None:
            found = ", ".join(repr(c.strip()) for c in _cells(first))
            raise RecipientsFileError(
                f"{label} has no column named {wanted!r}; the columns of its header "
                f"(line {first_line}) are {found}"
            )
        is_number = False
    else:
        is_number = _is_number(first)
        column = None if is_number else _find_column(first)
    if column is not None:
        delimiter, index, column_name = column
        header = next(csv.reader([first], delimiter=delimiter))
        # A `reference` column holds each recipient's reference (docs/api.md, "References");
        # the other columns are the recipients' fields, for a templated text.
        ref_index = next(
            (
                i
                for i, cell in enumerate(header)
                if i != index and column_key(cell) == REFERENCE_COLUMN
            ),
            None,
        )
        fields = tuple(
            cell.strip() for i, cell in enumerate(header) if i != index and i != ref_index
        )
        if len(fields) > MAX_FIELDS:
            raise RecipientsFileError(f"{label}: {too_many_fields(len(fields), 'its columns')}")
        collector = NumbersCollector(fields, references=ref_index is not None)
        _read_rows(text, first_line, delimiter, (index, column_name, ref_index), collector)
        if collector.lines == 0:
            raise RecipientsFileError(f"{label} has a header but no data lines")
        return collector.result()
    if not is_number and any(delimiter in first for delimiter in DELIMITERS):
        raise RecipientsFileError(
            f"{label} looks like a CSV file, but its header (line {first_line}) has no "
            f"column named {', '.join(COLUMN_NAMES[:-1])} or {COLUMN_NAMES[-1]}"
        )
    collector = NumbersCollector()
    collector.add(first_line, first)
    _read_lines(text, first_line, collector)
    return collector.result()


def _first_content(text: Iterator[str]) -> tuple[int, str]:
    """The 1-based number and stripped text of the first non-blank line, or (0, "")."""
    for number, line in enumerate(text, start=1):
        _check_text(line)
        value = line.strip()
        if value:
            return number, value
    return 0, ""


def _is_number(value: str) -> bool:
    try:
        normalize(value)
    except InvalidNumber:
        return False
    return True


def _read_lines(text: Iterator[str], after: int, collector: NumbersCollector) -> None:
    add = collector.add
    for number, line in enumerate(text, start=after + 1):
        value = line.strip()
        if value:
            _check_text(value)
            add(number, value)


def _read_rows(
    text: Iterator[str],
    header_line: int,
    delimiter: str,
    columns: tuple[int, str, int | None],
    collector: NumbersCollector,
) -> None:
    """The data rows; `columns`: the number column's index and name, and the reference
    column's index (None for none)."""
    index, column_name, ref_index = columns
    missing = f"no value in column {column_name!r}"
    fields = collector.columns
    count = len(fields)
    add = collector.add
    rows = csv.reader(_checked(text), delimiter=delimiter)
    end_of_previous = header_line
    for row in rows:
        # A quoted field may span lines; the row is reported at the line where it starts.
        start = end_of_previous + 1
        end_of_previous = header_line + rows.line_num
        if index < len(row) and row[index].strip():
            if ref_index is not None:
                _add_referenced(row, start, index, ref_index, collector)
            elif fields:
                # The other cells, padded to the header's; a cell holding the separator (rare)
                # has it replaced, found by counting rather than a replace per cell
                # (docs/architecture.md D17).
                number = row.pop(index)
                if len(row) < count:
                    row += [""] * (count - len(row))
                values = FIELD_SEPARATOR.join(row)
                if len(values) > MAX_VALUE_CHARS:
                    # Only a long row can hold a long value: the check costs nothing else.
                    long = next((i for i, c in enumerate(row) if len(c) > MAX_VALUE_CHARS), -1)
                    if long >= 0:
                        name = fields[long] if long < count else f"column {long + 1}"
                        collector.reject(start, number, too_long_value(name, len(row[long])))
                        continue
                if values.count(FIELD_SEPARATOR) != len(row) - 1:
                    values = FIELD_SEPARATOR.join(c.replace(FIELD_SEPARATOR, " ") for c in row)
                add(start, number, values)
            else:
                add(start, row[index])
        elif any(cell.strip() for cell in row):
            collector.reject(start, delimiter.join(row), missing)
        # Rows with no content at all (blank lines, Excel's ";;;") are skipped like blank lines.


def _add_referenced(
    row: list[str], line: int, index: int, ref_index: int, collector: NumbersCollector
) -> None:
    """A data row of a file with a reference column (not the path a million plain rows take)."""
    number = row[index]
    reference = row[ref_index] if ref_index < len(row) else ""
    cells = [c for i, c in enumerate(row) if i != index and i != ref_index]
    fields = collector.columns
    if len(cells) < len(fields):
        cells += [""] * (len(fields) - len(cells))
    long = next((i for i, c in enumerate(cells) if len(c) > MAX_VALUE_CHARS), -1)
    if long >= 0:
        name = fields[long] if long < len(fields) else f"column {long + 1}"
        collector.reject(line, number, too_long_value(name, len(cells[long])))
        return
    values = FIELD_SEPARATOR.join(c.replace(FIELD_SEPARATOR, " ") for c in cells)
    collector.add_referenced(line, number, values if fields else "", reference)


_COLUMN_KEYS = frozenset(column_key(name) for name in COLUMN_NAMES)


def _find_column(header: str) -> tuple[str, int, str] | None:
    """Delimiter, index and name of the number column if `header` is a CSV header row."""
    return _column_where(header, lambda key: key in _COLUMN_KEYS)


def _named_column(header: str, wanted: str) -> tuple[str, int, str] | None:
    """Delimiter, index and name of the column named `wanted` (--column) in `header`."""
    key = column_key(wanted)
    return _column_where(header, key.__eq__)


def _column_where(header: str, matches: Callable[[str], bool]) -> tuple[str, int, str] | None:
    # The delimiter the header uses most is tried first; a lone "phone" header splits the same
    # way under all of them.
    for delimiter in sorted(DELIMITERS, key=header.count, reverse=True):
        cells = next(csv.reader([header], delimiter=delimiter))
        for index, cell in enumerate(cells):
            if matches(column_key(cell)):
                return delimiter, index, cell.strip()
    return None


def _cells(header: str) -> list[str]:
    """The header's cells, split at the delimiter it uses most."""
    delimiter = max(DELIMITERS, key=header.count)
    return next(csv.reader([header], delimiter=delimiter))


def _check_text(line: str) -> None:
    if "\0" in line:
        raise _BinaryContent


def _checked(lines: Iterator[str]) -> Iterator[str]:
    for line in lines:
        _check_text(line)
        yield line
