"""smsq's configuration: environment variables prefixed SMSQ_, or a .env file for local use.

Every component loads it with load_settings(); a bad value stops the component with one line.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ledger.errors import ConfigError

ENV_PREFIX = "SMSQ_"

# DIDWW publishes no number; one public client keeps under 10 requests/s per trunk.
DEFAULT_RATE_PER_S = 8.0
# One batch task claims at most this many messages: small enough to spread over workers,
# large enough that a million recipients cost ten thousand broker messages, not a million.
DEFAULT_BATCH_SIZE = 100
# The most requests in flight per worker process. Below it, what is in flight follows the
# trunk's rate times DIDWW's latency by itself (Little's law); 128 lets one process post 640
# messages/s at 200 ms.
DEFAULT_MAX_IN_FLIGHT = 128
# A campaign message not posted within a day is stale for most senders.
DEFAULT_TTL_S = 24 * 3600
# DIDWW keeps trying a message "during TTL" (callback codes 100 and 101) and does not publish
# that TTL; SMS networks' usual validity period is a day. A final callback may so come up to a
# day after acceptance; one more hour covers DIDWW's callback retries and a short ingester
# outage. After that, an accepted message without a callback is unconfirmed.
DEFAULT_CALLBACK_TIMEOUT_S = 25 * 3600
# A finished campaign is kept this long for `smsq report` and `smsq resend`, then purged.
DEFAULT_RETENTION_S = 7 * 24 * 3600
# The trunk that the single-trunk settings (SMSQ_DIDWW_*, SMSQ_RATE_LIMIT) describe.
DEFAULT_TRUNK = "default"
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


@dataclass(frozen=True, slots=True)
class TrunkConfig:
    """One DIDWW Outbound SMS trunk: where to post, as whom, how fast, and the token of the
    callback URL given to DIDWW for it."""

    name: str
    url: str
    username: str
    password: SecretStr
    rate_limit: float
    callback_token: SecretStr


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    """All settings; each field is the environment variable SMSQ_<FIELD NAME>."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
    )

    redis_url: str = "redis://127.0.0.1:6379/0"
    didww_url: str = "https://sms-out.didww.com"
    didww_username: str = ""
    didww_password: SecretStr = SecretStr("")
    rate_limit: float = Field(DEFAULT_RATE_PER_S, gt=0, le=10_000)
    # Pace at this share of rate_limit so network and scheduling jitter cannot push
    # any one-second window seen by DIDWW over the limit.
    rate_headroom: float = Field(0.98, gt=0.5, le=1.0)
    callback_token: SecretStr = SecretStr("")
    # Bearer token for the HTTP API (python -m producer.http); the API refuses to start without it.
    api_token: SecretStr = SecretStr("")
    events_stream: str = Field("smsq:events", min_length=1)
    # Approximate cap on the events stream; consumers must read faster than this fills.
    events_maxlen: int = Field(1_000_000, ge=1000)
    batch_size: int = Field(DEFAULT_BATCH_SIZE, ge=1, le=1000)
    # SMSQ_CONCURRENCY is its name before the sending engine adapted what is in flight.
    max_in_flight: int = Field(
        DEFAULT_MAX_IN_FLIGHT,
        ge=1,
        le=4096,
        validation_alias=AliasChoices("SMSQ_MAX_IN_FLIGHT", "SMSQ_CONCURRENCY"),
    )
    # What the rate limit counts: a message, or each SMS segment of it.
    rate_unit: Literal["message", "segment"] = "message"
    # An http:// DIDWW URL sends the trunk's password in clear text; only loopback (the
    # simulator) may use one, unless this says otherwise.
    allow_insecure_url: bool = False
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(30.0, gt=0)
    retry_attempts: int = Field(5, ge=1, le=50)
    retry_max_wait_s: float = Field(30.0, gt=0)
    # A batch whose retries ran out is tried again this much later (parked, not failed).
    retry_later_s: int = Field(30, ge=1, le=600)
    ambiguous: Literal["unknown", "resend"] = "unknown"
    # While halted (401) or backing off (DIDWW unavailable), one worker probes this often.
    probe_interval_s: float = Field(10.0, gt=0)
    ttl_s: int = Field(DEFAULT_TTL_S, ge=1)
    max_segments: int = Field(10, ge=1, le=255)
    didww_id_ttl_s: int = Field(7 * 24 * 3600, ge=60)
    orphan_ttl_s: int = Field(24 * 3600, ge=60)
    # A callback settles an unknown message (whose 201 was lost) with the same source and
    # destination posted within this many seconds of DIDWW's time_start; the nearest wins.
    match_window_s: int = Field(600, ge=1, le=24 * 3600)
    callback_timeout_s: float = Field(DEFAULT_CALLBACK_TIMEOUT_S, gt=0)
    retention_s: float = Field(DEFAULT_RETENTION_S, ge=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Each worker's main process serves Prometheus metrics for all its pool processes here.
    metrics_port: int = Field(9808, ge=1, le=65535)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"redis", "rediss", "unix"}:
            raise ValueError("must start with redis://, rediss:// or unix://")
        if parts.scheme != "unix" and not parts.hostname:
            raise ValueError("has no host")
        try:
            parts.port  # noqa: B018 - urlsplit validates the port lazily
        except ValueError as exc:
            raise ValueError("has an invalid port") from exc
        return value

    @field_validator("didww_url")
    @classmethod
    def _didww_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    def check_url_security(self) -> None:
        """An http:// DIDWW URL is refused unless its host is loopback or
        SMSQ_ALLOW_INSECURE_URL is true: it would send the trunk's password in clear."""
        for trunk in self.trunks().values():
            parts = urlsplit(trunk.url)
            if parts.scheme == "https" or self.allow_insecure_url:
                continue
            if not is_loopback(parts.hostname or ""):
                name = (
                    "SMSQ_DIDWW_URL"
                    if trunk.name == DEFAULT_TRUNK
                    else (f"{ENV_PREFIX}TRUNK_{trunk.name.upper()}_URL")
                )
                raise ConfigError(
                    f"{name}: must be https:// (http:// sends the trunk password in clear text;"
                    " set SMSQ_ALLOW_INSECURE_URL=true to allow it)"
                )

    def trunks(self) -> dict[str, TrunkConfig]:
        """The configured trunks by name: the single-trunk settings are the trunk `default`."""
        default = TrunkConfig(
            DEFAULT_TRUNK,
            self.didww_url,
            self.didww_username,
            self.didww_password,
            self.rate_limit,
            self.callback_token,
        )
        return {DEFAULT_TRUNK: default}

    def require(self, *names: str) -> None:
        """Stop with a ConfigError naming the first of these settings that is empty."""
        for name in names:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if not value:
                raise ConfigError(f"{ENV_PREFIX}{name.upper()} is not set")

    def secrets(self) -> list[str]:
        """The secret values, so log and error output can be scrubbed of them."""
        values = [
            self.didww_password.get_secret_value(),
            self.callback_token.get_secret_value(),
            self.api_token.get_secret_value(),
        ]
        password = urlsplit(self.redis_url).password
        if password:
            values.append(password)
        return [v for v in values if v]


def load_settings(**overrides: object) -> Settings:
    """Read the settings; a bad value raises ConfigError with one line naming the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "?"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{ENV_PREFIX}{field.upper()}: {message}") from None
