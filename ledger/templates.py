"""Personalised message text: `{field}` and `{field|default}` filled from a recipient's columns.

A deliberately tiny syntax that operators cannot use to run anything: no code, attributes or specs.
"""

# Why not Jinja2's sandbox: a different syntax (`{{ }}`), filters and loops that an operator's
# text does not need, and 6.7 us per render of a 2-field template (Jinja2 3.1.6, this project's
# 2-core machine) against 0.38 us for render_values() here, which enqueue calls per message.

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ledger.errors import InputError

__all__ = ["MissingField", "Template", "TemplateError", "TemplateSyntaxError"]

# Spaces next to the braces and the `|` are ignored, so `{ name | friend }` reads naturally.
_BLANKS = " \t"
# Column names as spreadsheets and Python identifiers spell them; anything else in braces is
# refused rather than guessed at, so `{0}`, `{a.b}`, `{a[0]}`, `{a!r}` and `{a:>9}` are errors.
_PLACEHOLDER = re.compile(rf"[{_BLANKS}]*([A-Za-z_][A-Za-z0-9_]*)[{_BLANKS}]*(?:\|([^|]*))?")
# Enough of an unclosed placeholder to recognise it in the error message.
_FRAGMENT_CHARS = 20
# One search per brace keeps parsing linear however many braces a (pasted, huge) text holds.
_BRACE = re.compile("[{}]")


class TemplateError(InputError):
    """The text template, or the values it is filled with, cannot be used.

    TemplateError (ledger.errors.InputError)
    ├── TemplateSyntaxError    the text is not a valid template; names line, column and text
    └── MissingField           a field without default is empty or absent, or has no column
    """


class TemplateSyntaxError(TemplateError):
    """The text is not a valid template: `line`, `column` (1-based) and `fragment` say where."""

    def __init__(self, message: str, text: str, offset: int, fragment: str) -> None:
        self.line = text.count("\n", 0, offset) + 1
        self.column = offset - text.rfind("\n", 0, offset)
        self.fragment = fragment
        where = f"column {self.column}"
        if "\n" in text:
            where = f"line {self.line}, {where}"
        super().__init__(f"text template, {where}: {fragment!r} {message}")


class MissingField(TemplateError):
    """A field without default has no value (empty, only whitespace, or absent): `field`."""

    def __init__(self, field: str, message: str | None = None) -> None:
        self.field = field
        super().__init__(
            message
            or f"the text needs {{{field}}}, which is empty or missing; "
            f"write {{{field}|default text}} to send a default instead"
        )


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed text template; build it with Template.parse(text).

    `fields` are the distinct field names, lower-cased (columns match case-insensitively), in
    the order they first appear. Rendering inserts values as they are, never interpreting them;
    a value that is empty or only whitespace counts as missing.
    """

    text: str
    fields: tuple[str, ...]
    # The literal text as a %-format string (each "%" doubled) with one %s per placeholder.
    _format: str = field(repr=False, compare=False)
    # Per placeholder, in order: the index of its field in `fields` and its default or None.
    _slots: tuple[tuple[int, str | None], ...] = field(repr=False, compare=False)

    @classmethod
    def parse(cls, text: str) -> Template:
        """Parse `text`; raise TemplateSyntaxError naming the first mistake and its place."""
        fields: list[str] = []
        slots: list[tuple[int, str | None]] = []
        chunks: list[str] = []
        pos = 0
        while (found := _BRACE.search(text, pos)) is not None:
            brace = found.start()
            chunks.append(text[pos:brace].replace("%", "%%"))
            if text.startswith(("{{", "}}"), brace):
                chunks.append(text[brace])
                pos = brace + 2
                continue
            if text[brace] == "}":
                raise TemplateSyntaxError(
                    "has no opening {: write }} for a literal }", text, brace, "}"
                )
            close = _placeholder_end(text, brace)
            name, default = _placeholder(text, brace, close)
            if name not in fields:
                fields.append(name)
            slots.append((fields.index(name), default))
            chunks.append("%s")
            pos = close + 1
        chunks.append(text[pos:].replace("%", "%%"))
        return cls(text, tuple(fields), "".join(chunks), tuple(slots))

    @property
    def literal_chars(self) -> int:
        """How many characters of the text are not placeholders: every message rendered
        from it has at least these."""
        return len(self._format % (("",) * len(self._slots)))

    @property
    def is_plain(self) -> bool:
        """True when the text has no field: every message gets the same, unescaped, text."""
        return not self.fields

    def render(self, values: Mapping[str, str | None]) -> str:
        """The text for one recipient; keys match field names case-insensitively.

        An absent key or a None value counts as empty. Raises MissingField for a field
        without default that is empty, and TemplateError when two keys match one field.
        """
        return self.render_values([_lookup(values, name) for name in self.fields])

    def render_values(self, values: Sequence[str]) -> str:
        """The text for one recipient, from values given in `fields` order (the fast path)."""
        if len(values) != len(self.fields):
            raise ValueError(f"expected {len(self.fields)} values, in the order {self.fields}")
        resolved = []
        for index, default in self._slots:
            value = values[index]
            if not value or value.isspace():
                if default is None:
                    raise MissingField(self.fields[index])
                value = default
            resolved.append(value)
        return self._format % tuple(resolved)

    def row_renderer(self, columns: Sequence[int]) -> Callable[[Sequence[str]], str]:
        """render_values for values picked from a row of cells: field k's value is
        row[columns[k]] ('' past the row's end), `columns` as column_indexes gives them.

        The same text, defaults and MissingField as render_values; a row whose values are
        all there is formatted at once (a million rows of two fields: 0.44 s, against 0.58 s
        picking the values into a list for render_values)."""
        if len(columns) != len(self.fields):
            raise ValueError(f"expected {len(self.fields)} columns, in the order {self.fields}")
        picks = tuple(columns[index] for index, _ in self._slots)
        width = max(picks, default=-1) + 1
        pick = operator.itemgetter(*picks) if picks else (lambda row: ())
        single = len(picks) == 1
        text, render_values = self._format, self.render_values
        isspace = str.isspace

        def render(row: Sequence[str]) -> str:
            if len(row) >= width:
                values = pick(row)
                if single:
                    values = (values,)
                if "" not in values and not any(map(isspace, values)):
                    return text % values
            return render_values([row[c] if c < len(row) else "" for c in columns])

        return render

    def column_indexes(self, header: Sequence[str]) -> tuple[int, ...]:
        """Where each of `fields` is in a recipients file's `header`, in `fields` order.

        Header cells match field names ignoring case and surrounding spaces. A field with no
        column raises MissingField, even one with a default: it is more likely a typo than a
        wish to send the default to everyone. A field matching two columns is an error.
        """
        names = [cell.strip().lower() for cell in header]
        indexes = []
        for name in self.fields:
            found = [index for index, cell in enumerate(names) if cell == name]
            if not found:
                columns = ", ".join(repr(cell.strip()) for cell in header) or "none"
                raise MissingField(
                    name,
                    f"the text uses {{{name}}}, but the recipients file has no column "
                    f"named {name!r} (its columns: {columns})",
                )
            if len(found) > 1:
                raise TemplateError(
                    f"the text uses {{{name}}}, but the recipients file has "
                    f"{len(found)} columns named {name!r}"
                )
            indexes.append(found[0])
        return tuple(indexes)


def _placeholder_end(text: str, start: int) -> int:
    """The index of the `}` closing the placeholder that opens at `start`."""
    close = text.find("}", start + 1)
    if close == -1:
        raise TemplateSyntaxError(
            "is never closed: end it with }, or write {{ for a literal {",
            text,
            start,
            text[start : start + _FRAGMENT_CHARS],
        )
    if text.find("{", start + 1, close) != -1:
        raise TemplateSyntaxError(
            "has a { inside a placeholder: placeholders do not nest; write {{ for a literal {",
            text,
            start,
            text[start : close + 1],
        )
    return close


def _placeholder(text: str, start: int, close: int) -> tuple[str, str | None]:
    """The lower-cased field name and the default (None without one) of `{...}`."""
    inside = text[start + 1 : close]
    match = _PLACEHOLDER.fullmatch(inside)
    if match is None:
        if not inside.strip(_BLANKS):
            problem = "is empty: put a column name inside, or write {{ and }} for literal braces"
        elif inside.count("|") > 1:
            problem = "has more than one |: a default text cannot contain |"
        else:
            problem = (
                "is not a placeholder: write {column} or {column|default text}, where a column"
                " name is letters, digits and _ not starting with a digit (no conversions,"
                " format specs, attributes or indexes); write {{ and }} for literal braces"
            )
        raise TemplateSyntaxError(problem, text, start, text[start : close + 1])
    name, default = match.groups()
    return name.lower(), None if default is None else default.strip(_BLANKS)


def _lookup(values: Mapping[str, str | None], name: str) -> str:
    """The value of field `name` in `values`, matching keys case-insensitively; "" if absent."""
    if name in values:
        return values[name] or ""
    found = [value for key, value in values.items() if key.strip().lower() == name]
    if len(found) > 1:
        raise TemplateError(f"the values have {len(found)} keys that match the field {name!r}")
    return (found[0] or "") if found else ""
