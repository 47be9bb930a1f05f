"""normalize against phonenumbers itself on a corpus of 100,000 and more varied numbers.

normalize answers most numbers from a table built from phonenumbers' metadata and hands the
rest to phonenumbers (producer/numbers.py); here both paths must give what phonenumbers gives:
the same refusals and the same E.164 digits.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from functools import cache

import phonenumbers
from phonenumbers import (
    COUNTRY_CODE_TO_REGION_CODE,
    SUPPORTED_REGIONS,
    NumberParseException,
    PhoneMetadata,
    PhoneNumberFormat,
    PhoneNumberType,
    ValidationResult,
)

from producer.e164 import MAX_DIGITS
from producer.numbers import InvalidNumber, normalize

SEED = 19
CORPUS_MIN = 100_000
# Random national numbers of each length for each code; with the examples and their variants
# this makes the corpus a little over CORPUS_MIN.
PER_LENGTH = 14
CODES = sorted(str(code) for code in COUNTRY_CODE_TO_REGION_CODE)
# Three-digit codes none of whose starts is a known code: what phonenumbers refuses.
UNKNOWN_CODES = [
    code for code in map(str, range(100, 1000)) if not any(code[:n] in CODES for n in (1, 2, 3))
]
PREFIXES = ["+", "00", "", "+ ", "00 "]
SEPARATORS = [" ", "-", ".", " - ", "  "]


def expected(written: str) -> str | None:
    """What phonenumbers makes of a number written after an international prefix: its E.164
    digits if its length is possible (not only locally) and E.164's 15 digits hold it."""
    try:
        parsed = phonenumbers.parse("+" + written)
    except NumberParseException:
        return None
    if phonenumbers.is_possible_number_with_reason(parsed) != ValidationResult.IS_POSSIBLE:
        return None
    number = phonenumbers.format_number(parsed, PhoneNumberFormat.E164)[1:]
    return number if len(number) <= MAX_DIGITS else None


@cache
def national_prefix(code: str) -> str:
    region = phonenumbers.region_code_for_country_code(int(code))
    metadata = PhoneMetadata.metadata_for_region_or_calling_code(int(code), region)
    return (metadata.national_prefix or "") if metadata is not None else ""


def examples() -> Iterator[tuple[str, str]]:
    """(code, national number) of every example phonenumbers has, per region and type."""
    for region in sorted(SUPPORTED_REGIONS):
        for kind in sorted(PhoneNumberType.values()):
            example = phonenumbers.example_number_for_type(region, kind)
            if example is not None:
                yield str(example.country_code), phonenumbers.national_significant_number(example)
    for code in sorted(phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS):
        example = phonenumbers.example_number_for_non_geo_entity(code)
        if example is not None:
            yield str(code), phonenumbers.national_significant_number(example)


def written(rng: random.Random, code: str, national: str) -> str:
    """The number as a person might type it after the international prefix."""
    style = rng.randrange(6)
    if style == 0 or not national:
        return code + national
    separator = rng.choice(SEPARATORS)
    groups = []
    rest = national
    while rest:
        size = rng.randint(1, 4)
        groups.append(rest[:size])
        rest = rest[size:]
    if style == 1:
        groups[0] = f"({groups[0]})"
    elif style == 2 and national_prefix(code):
        groups.insert(0, f"({national_prefix(code)})")
    elif style == 3:
        return f"({code}){separator}{separator.join(groups)}"
    return code + separator + separator.join(groups)


@cache
def corpus() -> list[tuple[str, str]]:
    """(what is given to normalize, what phonenumbers is given after '+'), deterministic."""
    rng = random.Random(SEED)
    numbers: list[tuple[str, str]] = []
    for code, national in examples():
        prefix = national_prefix(code)
        variants = [
            national,
            prefix + national,
            national[:-1],
            national[:-2],
            national + rng.choice("0123456789"),
            national + str(rng.randrange(100)).zfill(2),
            "0" + national,
        ]
        for variant in variants:
            for _ in range(3):
                numbers.append((code, variant))
    for code in CODES + UNKNOWN_CODES:
        prefix = national_prefix(code)
        for length in range(1, 18):
            for i in range(PER_LENGTH):
                digits = "".join(rng.choice("0123456789") for _ in range(length))
                # A quarter start with the national prefix, which phonenumbers may drop.
                if prefix and i % 4 == 0:
                    digits = (prefix + digits)[:length]
                numbers.append((code, digits))
    cases = []
    for code, national in numbers:
        typed = written(rng, code, national)
        cases.append((rng.choice(PREFIXES) + typed, typed))
    return cases


def test_corpus_is_large_and_varied() -> None:
    cases = corpus()
    assert len(cases) >= CORPUS_MIN
    accepted = {expected(typed) is not None for _, typed in cases[::97]}
    assert accepted == {True, False}
    assert len(UNKNOWN_CODES) > 10


def test_normalize_agrees_with_phonenumbers_on_the_corpus() -> None:
    disagreements = []
    for given, typed in corpus():
        want = expected(typed)
        try:
            got: str | None = normalize(given)
        except InvalidNumber as exc:
            assert exc.reason
            got = None
        if got != want:
            disagreements.append((given, got, want))
    assert disagreements[:10] == []
