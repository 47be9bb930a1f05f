"""Tests for ledger.templates: parsing, rendering and refusing operators' text templates."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.errors import InputError
from ledger.templates import MissingField, Template, TemplateError, TemplateSyntaxError

GREETING = "Hi {name}, your table is at {time}"


def render(text: str, **values: str) -> str:
    return Template.parse(text).render(values)


def syntax_error(text: str) -> TemplateSyntaxError:
    with pytest.raises(TemplateSyntaxError) as caught:
        Template.parse(text)
    return caught.value


# Parsing


def test_fields_are_distinct_lower_cased_and_in_first_use_order() -> None:
    template = Template.parse("{Time} {name} {TIME|soon} {Name} {city|here}")
    assert template.fields == ("time", "name", "city")
    assert not template.is_plain


def test_a_text_without_fields_is_plain_and_renders_unescaped() -> None:
    template = Template.parse("Sale today: {{50%}} off, code {{SALE}}")
    assert template.is_plain
    assert template.fields == ()
    assert template.render({}) == "Sale today: {50%} off, code {SALE}"
    assert template.render_values(()) == "Sale today: {50%} off, code {SALE}"


def test_templates_compare_by_text_and_are_frozen() -> None:
    assert Template.parse(GREETING) == Template.parse(GREETING)
    assert Template.parse(GREETING) != Template.parse("Hi {name}")
    template = Template.parse(GREETING)
    with pytest.raises(dataclasses.FrozenInstanceError):
        template.fields = ("other",)  # type: ignore[misc]


@pytest.mark.parametrize(
    "name", ["name", "_", "_private", "__class__", "a1", "A_B_9", "NAME", "x" * 100]
)
def test_valid_field_names(name: str) -> None:
    assert Template.parse("{" + name + "}").fields == (name.lower(),)


@pytest.mark.parametrize("text", ["{ name }", "{\tname\t}", "{name }", "{  name}"])
def test_spaces_inside_the_braces_are_ignored(text: str) -> None:
    assert Template.parse(text).fields == ("name",)
    assert Template.parse(text).render({"name": "Ada"}) == "Ada"


# Escapes


@pytest.mark.parametrize(
    ("text", "rendered"),
    [
        ("{{", "{"),
        ("}}", "}"),
        ("{{}}", "{}"),
        ("{{name}}", "{name}"),
        ("{{ config }}", "{ config }"),
        ("{{{name}}}", "{Ada}"),
        ("{{{{name}}}}", "{{name}}"),
        ("a {{ b }} {name} c", "a { b } Ada c"),
    ],
)
def test_doubled_braces_are_literal(text: str, rendered: str) -> None:
    assert render(text, name="Ada") == rendered


# Defaults


def test_default_is_used_for_an_empty_whitespace_or_absent_value() -> None:
    template = Template.parse("Hi {name|dear customer}!")
    assert template.render({"name": "Ada"}) == "Hi Ada!"
    assert template.render({"name": ""}) == "Hi dear customer!"
    assert template.render({"name": " \t\n\u00a0"}) == "Hi dear customer!"
    assert template.render({"name": None}) == "Hi dear customer!"
    assert template.render({}) == "Hi dear customer!"
    assert template.render_values([""]) == "Hi dear customer!"


def test_a_value_is_inserted_as_it_is_including_its_spaces() -> None:
    assert render("[{name}]", name="  Ada ") == "[  Ada ]"


@pytest.mark.parametrize(
    ("text", "rendered"),
    [
        ("{name|friend}", "friend"),
        ("{name| friend }", "friend"),
        ("{ name | dear friend }", "dear friend"),
        ("{name|}", ""),
        ("{name| }", ""),
        (
            "{name|Mr. O'Brien & co: 100% #1 (ok) $x \\ 'q' \"d\" \u00e9\U0001f600}",
            "Mr. O'Brien & co: 100% #1 (ok) $x \\ 'q' \"d\" \u00e9\U0001f600",
        ),
        ("{name|line\nbreak}", "line\nbreak"),
        ("{name|%s %(x)s %d}", "%s %(x)s %d"),
        ("{name|$other}", "$other"),
    ],
)
def test_default_text_is_literal(text: str, rendered: str) -> None:
    assert render(text, name="") == rendered


def test_each_use_of_a_field_has_its_own_default() -> None:
    template = Template.parse("{name|friend}, {name|you} and {name}")
    assert template.fields == ("name",)
    assert template.render({"name": "Ada"}) == "Ada, Ada and Ada"
    with pytest.raises(MissingField):
        template.render({"name": ""})
    assert Template.parse("{name|friend}, {name|you}").render({}) == "friend, you"


# Missing fields


@pytest.mark.parametrize("value", ["", " ", "\t", "\n", "\u3000"])
def test_an_empty_value_without_default_is_refused(value: str) -> None:
    template = Template.parse(GREETING)
    with pytest.raises(MissingField) as caught:
        template.render_values(["Ada", value])
    assert caught.value.field == "time"
    assert "{time}" in str(caught.value)
    assert "{time|" in str(caught.value)


def test_an_absent_or_none_value_without_default_is_refused() -> None:
    template = Template.parse(GREETING)
    with pytest.raises(MissingField) as caught:
        template.render({"name": "Ada"})
    assert caught.value.field == "time"
    with pytest.raises(MissingField):
        template.render({"name": "Ada", "time": None})


def test_errors_are_input_errors() -> None:
    assert issubclass(TemplateError, InputError)
    assert issubclass(TemplateSyntaxError, TemplateError)
    assert issubclass(MissingField, TemplateError)


def test_render_values_needs_one_value_per_field() -> None:
    template = Template.parse(GREETING)
    with pytest.raises(ValueError, match="expected 2 values"):
        template.render_values(["Ada"])
    with pytest.raises(ValueError, match="expected 2 values"):
        template.render_values(["Ada", "19:30", "extra"])


# Keys and columns, case-insensitively


def test_render_matches_keys_ignoring_case() -> None:
    template = Template.parse("Hi {Name}")
    assert template.render({"NAME": "Ada"}) == "Hi Ada"
    assert template.render({" Name ": "Ada"}) == "Hi Ada"
    assert template.render({"name": "exact", "NAME": "other"}) == "Hi exact"
    with pytest.raises(TemplateError, match="2 keys"):
        template.render({"Name": "Ada", "NAME": "Bob"})


def test_column_indexes_maps_fields_to_a_header() -> None:
    template = Template.parse("Hi {name}, at {Time|soon}")
    header = ["Phone", " TIME ", "Name", "City"]
    indexes = template.column_indexes(header)
    assert indexes == (2, 1)
    row = ["37041654321", "19:30", "Ada", "Vilnius"]
    assert template.render_values([row[index] for index in indexes]) == "Hi Ada, at 19:30"


def test_column_indexes_refuses_a_field_without_column_even_with_default() -> None:
    template = Template.parse("Hi {nmae|friend}")
    with pytest.raises(MissingField) as caught:
        template.column_indexes(["phone", "name"])
    assert caught.value.field == "nmae"
    assert "'phone', 'name'" in str(caught.value)


def test_column_indexes_refuses_two_columns_for_one_field() -> None:
    with pytest.raises(TemplateError, match="2 columns named 'name'"):
        Template.parse("{name}").column_indexes(["Name", "phone", "NAME"])


def test_a_plain_template_needs_no_column() -> None:
    assert Template.parse("Sale today").column_indexes(["phone"]) == ()


# Syntax errors


@pytest.mark.parametrize(
    ("text", "column", "fragment", "says"),
    [
        ("{}", 1, "{}", "is empty"),
        ("Hi { }", 4, "{ }", "is empty"),
        ("Hi {name!r}", 4, "{name!r}", "conversions"),
        ("{name:>10}", 1, "{name:>10}", "format specs"),
        ("{0}", 1, "{0}", "not starting with a digit"),
        ("{1name}", 1, "{1name}", "not starting with a digit"),
        ("{name.attr}", 1, "{name.attr}", "attributes"),
        ("{name.__class__}", 1, "{name.__class__}", "attributes"),
        ("{name[0]}", 1, "{name[0]}", "indexes"),
        ("{first name}", 1, "{first name}", "not a placeholder"),
        ("{na-me}", 1, "{na-me}", "not a placeholder"),
        ("{n\u00e4me}", 1, "{n\u00e4me}", "not a placeholder"),
        ("{name\n}", 1, "{name\n}", "not a placeholder"),
        ("{|default}", 1, "{|default}", "not a placeholder"),
        ("{name|a|b}", 1, "{name|a|b}", "more than one |"),
        ("Hi {name", 4, "{name", "never closed"),
        ("{", 1, "{", "never closed"),
        ("ok {{ then {", 12, "{", "never closed"),
        ("}", 1, "}", "no opening {"),
        ("a } b", 3, "}", "no opening {"),
        ("{name}}", 7, "}", "no opening {"),
        ("{name:{other}}", 1, "{name:{other}", "do not nest"),
        ("{name|{x}}", 1, "{name|{x}", "do not nest"),
        ("{{name}", 7, "}", "no opening {"),
    ],
)
def test_syntax_errors_name_the_column_and_the_text(
    text: str, column: int, fragment: str, says: str
) -> None:
    error = syntax_error(text)
    assert (error.line, error.column, error.fragment) == (1, column, fragment)
    assert f"column {column}:" in str(error)
    assert repr(fragment) in str(error)
    assert says in str(error)


def test_an_unclosed_placeholder_shows_only_its_start() -> None:
    error = syntax_error("Hi {name and then a very long text follows")
    assert error.fragment == "{name and then a ver"


def test_a_multi_line_text_names_the_line_too() -> None:
    error = syntax_error("Hello,\nyour table\nis at {time:%H}")
    assert (error.line, error.column) == (3, 7)
    assert str(error).startswith("text template, line 3, column 7: '{time:%H}'")


def test_the_first_mistake_is_reported() -> None:
    assert syntax_error("{ok} {bad!r} }").column == 6


# Injection attempts: nothing is evaluated, looked up on an object, or formatted


def test_dunder_names_are_plain_columns() -> None:
    template = Template.parse("{__class__} {__globals__|none}")
    assert template.fields == ("__class__", "__globals__")
    assert template.render({"__class__": "x"}) == "x none"
    with pytest.raises(MissingField) as caught:
        template.render({})
    assert caught.value.field == "__class__"


@pytest.mark.parametrize(
    ("text", "rendered"),
    [
        ("%s %d %(name)s %%", "%s %d %(name)s %%"),
        ("$name ${name}", "$name $Ada"),
        ("{{ config }} {{ name.__class__ }}", "{ config } { name.__class__ }"),
        ("{{7*7}} {{ ''.__class__.__mro__ }}", "{7*7} { ''.__class__.__mro__ }"),
        ("{{% for x in y %}}", "{% for x in y %}"),
        ("\\{{name}}", "\\{name}"),
        ("\\{name}", "\\Ada"),
    ],
)
def test_other_template_syntaxes_are_literal_text(text: str, rendered: str) -> None:
    assert render(text, name="Ada") == rendered


@pytest.mark.parametrize(
    "value",
    [
        "{x}",
        "{name}",
        "{{",
        "}",
        "%s",
        "%(name)s",
        "%",
        "${name}",
        "{0.__class__}",
        "{{ config }}",
        "{% if 1 %}",
        "\\n",
    ],
)
def test_values_are_inserted_literally(value: str) -> None:
    template = Template.parse("a {name} b {other|-} c")
    assert template.render({"name": value, "other": value}) == f"a {value} b {value} c"
    assert template.render_values([value, value]) == f"a {value} b {value} c"


@pytest.mark.parametrize(
    "value",
    [
        "\u00c5sa",
        "\u0410\u043b\u0435\u043a\u0441\u0430\u043d\u0434\u0440\u0430",
        "\u674e\u534e",
        "\u0645\u062d\u0645\u062f",
        "e\u0301",
        "\U0001f600\U0001f468\u200d\U0001f469\u200d\U0001f467",
        "\ud83d",
        "\u202eevil",
        "\x00",
    ],
)
def test_unicode_values(value: str) -> None:
    assert render("Hi {name}!", name=value) == f"Hi {value}!"


def test_unicode_in_the_template_text() -> None:
    template = Template.parse("Привет {name|друг} 😀")
    assert template.render({}) == "Привет друг 😀"


# Properties

NAMES = st.sampled_from(["name", "time", "city", "__class__", "x1"])
# Literal text free of braces and "|", the characters the syntax gives a meaning to.
LITERALS = st.text(st.characters(blacklist_characters="{}|"), max_size=8)
DEFAULTS = st.none() | st.text(st.characters(blacklist_characters="{}|"), max_size=6).map(
    lambda text: text.strip(" \t")
)
VALUES = st.one_of(
    st.just(""), st.just(" "), st.text(max_size=6), st.sampled_from(["{x}", "%s", "}}"])
)
PIECES = st.lists(
    st.one_of(
        LITERALS.map(lambda text: ("text", text, None)),
        st.sampled_from(["{", "}"]).map(lambda brace: ("brace", brace, None)),
        st.tuples(st.just("field"), NAMES, DEFAULTS),
    ),
    max_size=8,
)


def source_of(pieces: list[tuple[str, str, str | None]]) -> str:
    parts = []
    for kind, text, default in pieces:
        if kind == "text":
            parts.append(text)
        elif kind == "brace":
            parts.append(text * 2)
        else:
            parts.append("{" + text + ("" if default is None else "|" + default) + "}")
    return "".join(parts)


def reference_render(
    pieces: list[tuple[str, str, str | None]], values: dict[str, str]
) -> str | MissingField:
    """What the template means, piece by piece: a value, its default, or a missing field."""
    out = []
    for kind, text, default in pieces:
        if kind != "field":
            out.append(text)
            continue
        value = values.get(text, "")
        if value.strip():
            out.append(value)
        elif default is not None:
            out.append(default)
        else:
            return MissingField(text)
    return "".join(out)


@given(PIECES, st.dictionaries(NAMES, VALUES))
def test_render_and_render_values_agree_with_the_meaning(
    pieces: list[tuple[str, str, str | None]], values: dict[str, str]
) -> None:
    template = Template.parse(source_of(pieces))
    expected = reference_render(pieces, values)
    row = [values.get(name, "") for name in template.fields]
    for attempt in (lambda: template.render(values), lambda: template.render_values(row)):
        if isinstance(expected, MissingField):
            with pytest.raises(MissingField) as caught:
                attempt()
            assert caught.value.field == expected.field
        else:
            assert attempt() == expected


@given(st.text(max_size=40))
def test_any_text_with_its_braces_doubled_renders_to_itself(text: str) -> None:
    escaped = text.replace("{", "{{").replace("}", "}}")
    template = Template.parse(escaped)
    assert template.is_plain
    assert template.render_values(()) == text


@given(st.text(st.sampled_from("{}|ab _0.!:[] \n"), max_size=20))
def test_parse_either_succeeds_or_raises_a_syntax_error(text: str) -> None:
    try:
        Template.parse(text)
    except TemplateSyntaxError as error:
        # line and column point at the fragment's first character
        lines_before = text.split("\n")[: error.line - 1]
        offset = sum(len(line) + 1 for line in lines_before) + error.column - 1
        assert error.fragment
        assert text[offset:].startswith(error.fragment)
