"""Input is bounded: a campaign's name, its text, how many fields its recipients carry and how
long a value is. Each bound is refused with a clear error, and reading fields stays linear in
the number of recipients however their field names vary."""

from __future__ import annotations

from pathlib import Path

import fakeredis
import pytest
from smsq_testing import make_settings

from ledger.errors import InputError
from producer.numbers import MAX_FIELDS, MAX_VALUE_CHARS, normalize_recipients
from producer.plan import MAX_NAME_CHARS, SEGMENT_MAX_CHARS, Options, Planner
from producer.recipients import RecipientsFileError, read_recipients

SOURCE = "37041123456"


def planner(**settings: object) -> Planner:
    return Planner(make_settings(**settings), fakeredis.FakeRedis())


def recipient(n: int, **fields: str) -> dict[str, object]:
    return {"destination": f"3706{n:07d}", "fields": fields}


def test_at_most_64_distinct_fields_from_the_apis() -> None:
    fine = [recipient(i, **{f"f{i}": "x"}) for i in range(MAX_FIELDS)]
    assert len(normalize_recipients(fine).columns) == MAX_FIELDS
    over = [recipient(i, **{f"f{i}": "x"}) for i in range(MAX_FIELDS + 1)]
    with pytest.raises(InputError, match="more than 64 distinct fields; a campaign may have"):
        normalize_recipients(over)


def test_many_recipients_each_with_its_own_field_are_refused_without_the_quadratic_work() -> None:
    # 4,000 recipients, each naming a field of its own: refused as soon as the 65th appears,
    # not after building 4,000 rows of 4,000 values.
    many = [recipient(i, **{f"field_{i}": "v"}) for i in range(4000)]
    with pytest.raises(InputError, match="more than 64"):
        normalize_recipients(many)


def test_a_value_over_1000_characters_rejects_its_recipient_only() -> None:
    found = normalize_recipients(
        [recipient(0, name="a" * MAX_VALUE_CHARS), recipient(1, name="a" * (MAX_VALUE_CHARS + 1))]
    )
    assert found.numbers == ["37060000000"]
    [rejected] = found.rejections
    assert rejected.line == 2
    assert rejected.reason == "field 'name' is 1,001 characters long; at most 1,000"


def test_a_recipients_file_with_over_64_columns_is_refused(tmp_path: Path) -> None:
    header = ",".join(["phone", *(f"c{i}" for i in range(MAX_FIELDS + 1))])
    path = tmp_path / "wide.csv"
    path.write_text(header + "\n37060000000" + "," * (MAX_FIELDS + 1) + "\n")
    with pytest.raises(RecipientsFileError, match="its columns name more than 64 distinct"):
        read_recipients(path)


def test_a_recipients_file_line_with_a_long_value_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "long.csv"
    path.write_text(
        "phone,name,code\n"
        f"37060000000,Ana,{'9' * MAX_VALUE_CHARS}\n"
        f"37060000001,Bo,{'9' * (MAX_VALUE_CHARS + 1)}\n"
    )
    found = read_recipients(path)
    assert found.numbers == ["37060000000"]
    [rejected] = found.rejections
    assert (rejected.line, rejected.value) == (3, "37060000001")
    assert rejected.reason == "field 'code' is 1,001 characters long; at most 1,000"


def test_a_campaign_name_over_200_characters_is_refused() -> None:
    numbers = normalize_recipients(["37060000000"])
    plan = planner().plan(SOURCE, "hi", numbers, Options(name="n" * MAX_NAME_CHARS))
    assert plan.name == "n" * MAX_NAME_CHARS
    with pytest.raises(InputError, match="the campaign name is 1,000,000 characters long"):
        planner().plan(SOURCE, "hi", numbers, Options(name="n" * 1_000_000))


def test_a_text_longer_than_the_segments_allow_is_refused_before_any_work() -> None:
    numbers = normalize_recipients(["37060000000"])
    most = 2 * SEGMENT_MAX_CHARS
    with pytest.raises(InputError, match="2 SMS segments \\(SMSQ_MAX_SEGMENTS\\) hold at most 320"):
        planner(max_segments=2).plan(SOURCE, "x" * 1_000_000, numbers, Options())
    # A template's placeholders do not count: its literal text is what every message holds.
    with pytest.raises(InputError, match="hold at most 320"):
        planner(max_segments=2).plan(SOURCE, "{name}" + "x" * (most + 1), numbers, Options())
    long_default = "{name|" + "d" * 400 + "} hi"
    rows = normalize_recipients([recipient(0, name="Ana")])
    plan = planner(max_segments=2).plan(SOURCE, long_default, rows, Options())
    assert plan.messages == 1
