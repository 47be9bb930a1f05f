"""Tests for producer.recipients: reading one-per-line and CSV recipients files."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from producer import recipients
from producer.numbers import Rejection
from producer.recipients import RecipientsFileError, read_recipients

UK = "442079460958"
FR = "33612345678"
US = "15550109999"


def write(tmp_path: Path, content: str | bytes, name: str = "to.txt") -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    return path


def test_one_number_per_line(tmp_path: Path) -> None:
    path = write(tmp_path, "+44 20 7946 0958\n33 6 12 34 56 78\n0015550109999\n")
    result = read_recipients(path)
    assert result.numbers == [UK, FR, US]
    assert result.rejections == []
    assert result.duplicates == 0
    assert result.lines == 3


def test_accepts_a_str_path(tmp_path: Path) -> None:
    path = write(tmp_path, f"{UK}\n")
    assert read_recipients(str(path)).numbers == [UK]


def test_per_line_rejections_have_file_line_numbers(tmp_path: Path) -> None:
    path = write(tmp_path, f"{UK}\n\nabc\n  \n1234567\n{FR}")
    result = read_recipients(path)
    assert result.numbers == [UK, FR]
    assert result.rejections == [
        Rejection(3, "abc", "contains 'a', which is not a digit"),
        Rejection(
            5, "1234567", "too short for +1 (US, AG, AI, \u2026): 6 digits after +1, need 10"
        ),
    ]
    assert result.lines == 4


def test_first_line_that_is_not_a_number_is_a_rejected_line(tmp_path: Path) -> None:
    path = write(tmp_path, f"Recipients\n{UK}\n")
    result = read_recipients(path)
    assert result.numbers == [UK]
    assert result.rejections == [Rejection(1, "Recipients", "contains 'R', which is not a digit")]
    assert result.lines == 2


def test_first_line_with_tab_separated_number_is_a_number(tmp_path: Path) -> None:
    path = write(tmp_path, f"+44\t20 7946 0958\n{FR}\n")
    assert read_recipients(path).numbers == [UK, FR]


def test_duplicates_are_counted_after_normalisation(tmp_path: Path) -> None:
    path = write(tmp_path, f"{UK}\n+44 20 7946 0958\n{FR}\n0044-20-7946-0958\n{FR}\n")
    result = read_recipients(path)
    assert result.numbers == [UK, FR]
    assert result.duplicates == 3
    assert result.lines == 5


@pytest.mark.parametrize("column", ["destination", "phone", "number", "msisdn"])
def test_csv_with_each_recognised_column(tmp_path: Path, column: str) -> None:
    path = write(tmp_path, f"name,{column},city\nAnn,+44 20 7946 0958,London\nBob,bad,Paris\n")
    result = read_recipients(path)
    assert result.numbers == [UK]
    assert result.rejections == [Rejection(3, "bad", "contains 'b', which is not a digit")]
    assert result.lines == 2


@pytest.mark.parametrize("header", ["Phone", " PHONE ", "MsIsdn", '"Phone"'])
def test_column_names_ignore_case_and_spaces(tmp_path: Path, header: str) -> None:
    path = write(tmp_path, f"name,{header}\nAnn,{UK}\n")
    assert read_recipients(path).numbers == [UK]


@pytest.mark.parametrize(
    "header", ["phone number", "Phone Number", " PHONE  NUMBER ", "phone_number", "Phone-Number"]
)
def test_notify_phone_number_header(tmp_path: Path, header: str) -> None:
    # GOV.UK Notify's CSV: its number column is "phone number", compared as Notify does.
    path = write(tmp_path, f"{header},name\n+44 20 7946 0958,Ann\n{FR},Bob\n")
    result = read_recipients(path)
    assert result.numbers == [UK, FR]
    assert result.columns == ("name",)


def test_a_named_column_is_read_whatever_the_others(tmp_path: Path) -> None:
    path = write(tmp_path, f"phone,Mobile Phone\n{FR},{UK}\n")
    result = read_recipients(path, column="mobile phone")
    assert result.numbers == [UK]
    # The recognised name the column did not pick is a field like any other.
    assert result.columns == ("phone",)


def test_a_named_column_that_is_missing_lists_the_columns(tmp_path: Path) -> None:
    path = write(tmp_path, f"\nname;phone;city\nAnn;{UK};London\n")
    with pytest.raises(RecipientsFileError) as caught:
        read_recipients(path, column="mobile")
    assert str(caught.value) == (
        f"recipients file '{path}' has no column named 'mobile'; the columns of its header "
        "(line 2) are 'name', 'phone', 'city'"
    )


def test_a_named_column_needs_a_header(tmp_path: Path) -> None:
    path = write(tmp_path, f"{UK}\n{FR}\n")
    with pytest.raises(RecipientsFileError, match=f"no column named 'phone'.* are '{UK}'"):
        read_recipients(path, column="phone")


def test_a_stream_is_read_and_left_open() -> None:
    stream = io.BytesIO(f"name,phone\nAnn,{UK}\nBob,bad\n".encode())
    result = read_recipients(stream)
    assert result.numbers == [UK]
    assert result.rejections == [Rejection(3, "bad", "contains 'b', which is not a digit")]
    assert not stream.closed


def test_a_stream_of_numbers_with_a_named_column() -> None:
    stream = io.BytesIO(f"Tel\n{UK}\n{FR}\n".encode())
    assert read_recipients(stream, column="tel").numbers == [UK, FR]


@pytest.mark.parametrize(
    ("content", "phrase"),
    [
        (b"", "recipients on standard input is empty"),
        (b"\x00\x01PK", "recipients on standard input is not a UTF-8 text file"),
        (UK.encode() + b"\ncaf\xe9\n", "recipients on standard input is not a UTF-8 text file"),
    ],
)
def test_unusable_standard_input_says_so(content: bytes, phrase: str) -> None:
    with pytest.raises(RecipientsFileError, match=phrase):
        read_recipients(io.BytesIO(content))


def test_first_recognised_column_wins(tmp_path: Path) -> None:
    path = write(tmp_path, f"msisdn,phone\n{UK},{FR}\n")
    assert read_recipients(path).numbers == [UK]


def test_single_column_csv(tmp_path: Path) -> None:
    path = write(tmp_path, f'phone\n{UK}\n"+33 6 12 34 56 78"\n')
    result = read_recipients(path)
    assert result.numbers == [UK, FR]
    assert result.lines == 2


def test_semicolon_csv(tmp_path: Path) -> None:
    path = write(tmp_path, f"Name;Phone;Note\nAnn;+44 20 7946 0958;a, b\nBob;{FR};\n")
    result = read_recipients(path)
    assert result.numbers == [UK, FR]
    assert result.rejections == []


def test_tab_separated_csv(tmp_path: Path) -> None:
    path = write(tmp_path, f"name\tdestination\nAnn\t{UK}\n")
    assert read_recipients(path).numbers == [UK]


def test_quoted_csv_fields(tmp_path: Path) -> None:
    path = write(tmp_path, f'name,phone\n"Smith, Ann","+44 20 7946 0958"\n"Bob",{FR}\n')
    assert read_recipients(path).numbers == [UK, FR]


def test_csv_line_numbers_count_the_header_as_line_one(tmp_path: Path) -> None:
    path = write(tmp_path, f"name,phone\nAnn,x1\n\nBob,{UK}\nCy,0207946\n")
    result = read_recipients(path)
    assert [r.line for r in result.rejections] == [2, 5]
    assert result.lines == 3


def test_csv_after_leading_blank_lines_and_quoted_newline(tmp_path: Path) -> None:
    path = write(tmp_path, f'\n\nnote,phone\n"two\nlines",{UK}\nx,bad\n')
    result = read_recipients(path)
    assert result.numbers == [UK]
    assert result.rejections == [Rejection(6, "bad", "contains 'b', which is not a digit")]


def test_csv_row_without_the_column_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, f"name,Phone\nAnn\nBob,\nCy,{UK}\n")
    result = read_recipients(path)
    assert result.numbers == [UK]
    assert result.rejections == [
        Rejection(2, "Ann", "no value in column 'Phone'"),
        Rejection(3, "Bob,", "no value in column 'Phone'"),
    ]


def test_csv_rows_with_no_content_are_skipped(tmp_path: Path) -> None:
    path = write(tmp_path, f"name;phone\nAnn;{UK}\n;\n;;\n")
    result = read_recipients(path)
    assert result.numbers == [UK]
    assert result.rejections == []
    assert result.lines == 1


def test_utf8_bom_is_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, b"\xef\xbb\xbfphone\r\n" + UK.encode() + b"\r\n")
    assert read_recipients(path).numbers == [UK]


def test_utf8_bom_before_a_number(tmp_path: Path) -> None:
    path = write(tmp_path, b"\xef\xbb\xbf" + UK.encode() + b"\n")
    result = read_recipients(path)
    assert result.numbers == [UK]
    assert result.rejections == []


def test_crlf_line_endings(tmp_path: Path) -> None:
    path = write(tmp_path, f"{UK}\r\nbad\r\n{FR}\r\n")
    result = read_recipients(path)
    assert result.numbers == [UK, FR]
    assert result.rejections == [Rejection(2, "bad", "contains 'b', which is not a digit")]


def test_crlf_csv(tmp_path: Path) -> None:
    path = write(tmp_path, f"name;msisdn\r\nAnn;{UK}\r\n\r\nBob;x\r\n")
    result = read_recipients(path)
    assert result.numbers == [UK]
    assert result.rejections == [Rejection(4, "x", "contains 'x', which is not a digit")]


def test_long_rejected_value_is_truncated(tmp_path: Path) -> None:
    path = write(tmp_path, "9" * 200 + "x\n")
    (rejection,) = read_recipients(path).rejections
    assert len(rejection.value) == 40


def test_file_of_only_bad_lines_is_not_an_error(tmp_path: Path) -> None:
    result = read_recipients(write(tmp_path, "hello\nworld\n"))
    assert result.numbers == []
    assert [r.line for r in result.rejections] == [1, 2]


# Each case: file content (None: do not create the file) and a phrase the message must contain.
@pytest.mark.parametrize(
    ("content", "phrase"),
    [
        (None, "does not exist"),
        (b"", "is empty"),
        (b"\n \r\n\t\n", "is empty"),
        (b"name,phone\n", "has a header but no data lines"),
        (b"name;phone\n\n;;\n", "has a header but no data lines"),
        (b"\x00\x01\x02PK\x03\x04", "not a UTF-8 text file (binary?)"),
        (UK.encode() + b"\n" * 9000 + b"\x00\n", "not a UTF-8 text file (binary?)"),
        (b"\xff\xfe4\x004\x00", "not a UTF-8 text file (binary?)"),
        (UK.encode() + b"\n" + b"caf\xe9\n", "not a UTF-8 text file (binary?)"),
        (
            b"name,email\nAnn,a@example.com\n",
            "no column named destination, phone, phone number, number or msisdn",
        ),
        (b"nom;t\xc3\xa9l\xc3\xa9phone\n", "header (line 1)"),
    ],
)
def test_unusable_files_raise_with_the_file_named(
    tmp_path: Path, content: bytes | None, phrase: str
) -> None:
    path = tmp_path / "recipients.csv"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(RecipientsFileError) as caught:
        read_recipients(path)
    assert phrase in str(caught.value)
    assert str(path) in str(caught.value)


def test_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(RecipientsFileError, match="is a directory"):
        read_recipients(tmp_path)


def test_unreadable_file_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, f"{UK}\n")

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(recipients, "open", refuse, raising=False)
    with pytest.raises(RecipientsFileError, match="cannot be read: permission denied"):
        read_recipients(path)


def test_other_os_errors_raise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, f"{UK}\n")

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(recipients, "open", fail, raising=False)
    with pytest.raises(RecipientsFileError, match="cannot be read: Input/output error"):
        read_recipients(path)
