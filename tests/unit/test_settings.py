"""Tests for ledger.settings: bad values name their SMSQ_ variable and never show a secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger.errors import ConfigError
from ledger.rate import RateParams
from ledger.settings import DEFAULT_RATE_PER_S, load_settings

PASSWORD = "pw-SECRET"


@pytest.fixture(autouse=True)
def _no_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run where no .env file is, and with the password set in the environment."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SMSQ_DIDWW_PASSWORD", PASSWORD)
    return tmp_path


def config_error(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> str:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    text = str(info.value)
    assert PASSWORD not in text
    # Raised from None: no pydantic error with the input value rides along.
    assert info.value.__cause__ is None and info.value.__suppress_context__
    return text


@pytest.mark.parametrize("value", ["0", "-1", "abc", "10001"])
def test_bad_rate_limit_names_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    assert config_error(monkeypatch, "SMSQ_RATE_LIMIT", value).startswith("SMSQ_RATE_LIMIT:")


@pytest.mark.parametrize(
    "value",
    [
        "http://127.0.0.1:6379/0",
        "localhost:6379",
        "redis://",
        "redis://127.0.0.1:notaport/0",
        f"redis://:{PASSWORD}@127.0.0.1:99999/0",
    ],
)
def test_malformed_redis_url_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    text = config_error(monkeypatch, "SMSQ_REDIS_URL", value)
    assert text.startswith("SMSQ_REDIS_URL:")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SMSQ_DIDWW_URL", "ftp://didww"),
        ("SMSQ_AMBIGUOUS", "maybe"),
        ("SMSQ_BATCH_SIZE", "0"),
        ("SMSQ_EVENTS_MAXLEN", "10"),
        ("SMSQ_LOG_LEVEL", "LOUD"),
    ],
)
def test_other_bad_values_name_their_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    assert config_error(monkeypatch, name, value).startswith(f"{name}:")


def test_require_names_a_missing_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SMSQ_DIDWW_PASSWORD")
    monkeypatch.setenv("SMSQ_DIDWW_USERNAME", "u")
    settings = load_settings()
    with pytest.raises(ConfigError, match="SMSQ_DIDWW_PASSWORD"):
        settings.require("didww_username", "didww_password")


def test_require_names_the_first_missing_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings().require("didww_username", "didww_password")
    assert str(info.value) == "SMSQ_DIDWW_USERNAME is not set"


def test_require_passes_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMSQ_DIDWW_USERNAME", "u")
    load_settings().require("didww_username", "didww_password")


def test_the_password_stays_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert settings.didww_password.get_secret_value() == PASSWORD
    assert PASSWORD not in repr(settings)
    assert PASSWORD not in str(settings.model_dump())


def test_defaults_and_derived_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMSQ_DIDWW_URL", "https://us.sms-out.didww.com/")
    settings = load_settings()
    assert settings.rate_limit == DEFAULT_RATE_PER_S
    assert settings.didww_url == "https://us.sms-out.didww.com"
    assert settings.events_stream == "smsq:events"
    assert settings.ambiguous == "unknown"
    assert settings.max_in_flight == 128
    assert settings.rate_unit == "message"
    trunk = settings.trunks()["default"]
    assert (trunk.url, trunk.rate_limit) == ("https://us.sms-out.didww.com", DEFAULT_RATE_PER_S)


def test_the_old_concurrency_name_still_sets_the_in_flight_ceiling(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SMSQ_CONCURRENCY", "40")
    assert load_settings().max_in_flight == 40
    monkeypatch.setenv("SMSQ_MAX_IN_FLIGHT", "50")
    assert load_settings().max_in_flight == 50


def test_rate_params_pace_inside_a_window_longer_than_a_second() -> None:
    rate = RateParams.of(100, 0.98)
    assert rate.limit == 100
    # A second plus 3/4 of the headroom (hotpath.CAP_MARGIN keeps the last quarter).
    assert rate.window_us == pytest.approx(1_000_000 + 0.75 * (1_000_000 / 0.98 - 1_000_000), abs=1)
    assert rate.per_s == pytest.approx(98, rel=1e-3)
    slow = RateParams.of(0.5, 1.0)
    assert (slow.limit, slow.window_us) == (1, 2_000_000)
    assert RateParams.of(10, 0.98, "segment").by_segment


def test_secrets_lists_every_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMSQ_CALLBACK_TOKEN", "tok")
    monkeypatch.setenv("SMSQ_REDIS_URL", "redis://:redispw@127.0.0.1:6379/0")
    assert sorted(load_settings().secrets()) == sorted([PASSWORD, "tok", "redispw"])


def test_dotenv_is_read_and_the_environment_wins(
    monkeypatch: pytest.MonkeyPatch, _no_dotenv: Path
) -> None:
    (_no_dotenv / ".env").write_text("SMSQ_RATE_LIMIT=5\nSMSQ_BATCH_SIZE=7\n", encoding="utf-8")
    monkeypatch.setenv("SMSQ_BATCH_SIZE", "9")
    settings = load_settings()
    assert settings.rate_limit == 5
    assert settings.batch_size == 9


def test_overrides_are_validated_too() -> None:
    with pytest.raises(ConfigError, match="SMSQ_RATE_LIMIT"):
        load_settings(rate_limit=0)
