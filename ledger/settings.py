"""smsq's configuration: environment variables prefixed SMSQ_, or a .env file for local use.

Every component loads it with load_settings(); a bad value stops the component with one line.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
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
# The shortest API, callback or metrics token an HTTP service accepts: 16 random characters
# are far beyond guessing, where a short word is not.
MIN_TOKEN_CHARS = 16


@dataclass(frozen=True, slots=True)
class TrunkConfig:
    """One DIDWW Outbound SMS trunk: where to post, as whom, how fast, the token of the
    callback URL given to DIDWW for it, and the source numbers routed to it."""

    name: str
    url: str
    username: str
    password: SecretStr
    rate_limit: float
    callback_token: SecretStr
    sources: frozenset[str] = frozenset()


# A trunk's name: lower-case letters, digits, - and _, as in SMSQ_TRUNKS=eu,us.
TRUNK_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
# The settings of a named trunk: SMSQ_TRUNK_<NAME>_<FIELD>.
TRUNK_FIELDS = ("URL", "USERNAME", "PASSWORD", "RATE_LIMIT", "CALLBACK_TOKEN", "SOURCES")


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
    # Redis behind Sentinel (ledger/connection.py; docs/reliability.md "Redis: failover, memory,
    # durability"): the sentinels as host:port,host:port and the name they know the primary by.
    # SMSQ_REDIS_URL then gives only the password, database and TLS (rediss://), not the host.
    redis_sentinels: str = ""
    redis_master_name: str = ""
    # The sentinels' own password (their requirepass), when they have one.
    redis_sentinel_password: SecretStr = SecretStr("")
    # A claim, a recorded answer, a held or parked batch, a stored callback and a stored
    # campaign count only once this many replicas have them (Redis WAIT, at most
    # redis_wait_ms): a failover then cannot take back what smsq acted on. 0: nothing waits.
    redis_min_replicas: int = Field(0, ge=0, le=16)
    redis_wait_ms: int = Field(100, ge=1, le=10_000)
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
    # Events older than this are trimmed too (the supervisors, every HOUSEKEEPING_S): a quiet
    # system keeps a day of events, not a million of them for months.
    events_retention_s: int = Field(86_400, ge=60)
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
    # More trunks, by name (SMSQ_TRUNKS=eu,us), each set by SMSQ_TRUNK_<NAME>_URL,
    # _USERNAME, _PASSWORD, _RATE_LIMIT, _CALLBACK_TOKEN and _SOURCES (see trunks()).
    trunk_names: str = Field("", validation_alias=AliasChoices("SMSQ_TRUNKS", "trunk_names"))
    # The source numbers of the single-trunk settings' trunk `default`, for routing.
    default_sources: str = ""
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
    # Callbacks for DIDWW ids not (yet) known are kept to be joined, about 160 bytes each;
    # beyond this many the oldest go (smsq_callback_results{result="orphans_dropped"}).
    orphans_max: int = Field(100_000, ge=100)
    # A callback settles an unknown message (whose 201 was lost) with the same source and
    # destination posted within this many seconds of DIDWW's time_start; the nearest wins.
    match_window_s: int = Field(600, ge=1, le=24 * 3600)
    callback_timeout_s: float = Field(DEFAULT_CALLBACK_TIMEOUT_S, gt=0)
    retention_s: float = Field(DEFAULT_RETENTION_S, ge=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Each worker's main process serves Prometheus metrics for all its pool processes here.
    metrics_port: int = Field(9808, ge=1, le=65535)
    # The callbacks service reads its /metrics figures from Redis at most once per this long.
    metrics_cache_s: float = Field(5.0, ge=0, le=300)
    # The callbacks service serves /metrics on this port only (0: on its main port, as before).
    callbacks_metrics_port: int = Field(0, ge=0, le=65535)
    # Bearer token the callbacks service's /metrics asks for (empty: it asks for none).
    metrics_token: SecretStr = SecretStr("")
    # The HTTP services close a connection whose request's headers and body have not all come
    # within this many seconds, so slow clients cannot hold connections; and answer 503 past
    # this many connections (and requests being handled) at once.
    http_read_timeout_s: float = Field(10.0, gt=0, le=600)
    http_max_connections: int = Field(1000, ge=1, le=100_000)
    # Webhooks (python -m webhooks, docs/webhooks.md). A delivery is retried for this long
    # after its first attempt, then recorded as failed (`smsq webhook failures`).
    webhook_retry_s: float = Field(24 * 3600, gt=0)
    # Retries wait a random time up to 1 s doubling per attempt, capped here (full jitter).
    webhook_backoff_max_s: float = Field(3600, gt=0)
    # Each attempt's whole request must be answered within this.
    webhook_timeout_s: float = Field(10.0, gt=0, le=60)
    # http:// URLs and loopback, private and link-local addresses are refused unless this is
    # true: a subscriber could otherwise make smsq post into its own network.
    webhook_allow_private: bool = False
    # Requests in flight to one subscription from one delivery process: a slow endpoint holds
    # only its own connections.
    webhook_connections: int = Field(16, ge=1, le=1000)
    # Deliveries one subscription may owe (about 0.8 KB each in Redis for a `sent` event: a
    # day of 11 events a second); past it, new events are recorded as failed at once (error
    # backlog_full), so a dead endpoint cannot fill Redis.
    webhook_max_pending: int = Field(1_000_000, ge=1)
    # Failed deliveries kept for `smsq webhook failures` (the oldest go first).
    webhook_failures_max: int = Field(10_000, ge=100)
    # Each delivery process serves Prometheus metrics here (0: none).
    webhooks_metrics_port: int = Field(9810, ge=0, le=65535)

    _trunks: dict[str, TrunkConfig] | None = None

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

    @field_validator("redis_sentinels")
    @classmethod
    def _redis_sentinels(cls, value: str) -> str:
        for item in value.split(","):
            if item.strip():
                _host_port(item.strip())
        return value

    @field_validator("redis_master_name")
    @classmethod
    def _redis_master_name(cls, value: str) -> str:
        if value and not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", value):
            raise ValueError("letters, digits, '.', '_' and '-' only")
        return value

    @model_validator(mode="after")
    def _sentinel_pair(self) -> Settings:
        if self.redis_sentinels.strip() and not self.redis_master_name:
            raise ValueError("SMSQ_REDIS_SENTINELS is set: SMSQ_REDIS_MASTER_NAME must be too")
        if self.redis_master_name and not self.redis_sentinels.strip():
            raise ValueError("SMSQ_REDIS_MASTER_NAME is set: SMSQ_REDIS_SENTINELS must be too")
        if self.redis_sentinels.strip() and urlsplit(self.redis_url).scheme == "unix":
            raise ValueError("SMSQ_REDIS_URL: a unix:// socket cannot be found through Sentinel")
        return self

    def sentinels(self) -> list[tuple[str, int]]:
        """SMSQ_REDIS_SENTINELS as (host, port) pairs; empty without Sentinel."""
        return [_host_port(i.strip()) for i in self.redis_sentinels.split(",") if i.strip()]

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
        """The configured trunks by name. The single-trunk settings (SMSQ_DIDWW_*,
        SMSQ_RATE_LIMIT, SMSQ_CALLBACK_TOKEN) are the trunk `default`; SMSQ_TRUNKS names more,
        each from SMSQ_TRUNK_<NAME>_* variables (environment first, then .env). Raises
        ConfigError with one line for a bad one."""
        if self._trunks is None:
            self._trunks = _read_trunks(self)
        return self._trunks

    def require_trunks(self) -> None:
        """Stop with a ConfigError naming the first trunk setting a worker needs that is
        missing (each trunk's username and password) or malformed."""
        for trunk in self.trunks().values():
            if trunk.name == DEFAULT_TRUNK:
                self.require("didww_username", "didww_password")
                continue
            prefix = f"{ENV_PREFIX}TRUNK_{trunk.name.upper().replace('-', '_')}_"
            if not trunk.username:
                raise ConfigError(f"{prefix}USERNAME is not set")
            if not trunk.password.get_secret_value():
                raise ConfigError(f"{prefix}PASSWORD is not set")

    def trunk_for_source(self, source: str) -> str | None:
        """The trunk whose SOURCES list this number, if one does."""
        for trunk in self.trunks().values():
            if source in trunk.sources:
                return trunk.name
        return None

    def require(self, *names: str) -> None:
        """Stop with a ConfigError naming the first of these settings that is empty."""
        for name in names:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if not value:
                raise ConfigError(f"{ENV_PREFIX}{name.upper()} is not set")

    def check_tokens(self) -> None:
        """Stop with a ConfigError naming the first API, callback or metrics token that is set
        but shorter than MIN_TOKEN_CHARS (an HTTP service checks them at start)."""
        tokens = [
            ("SMSQ_API_TOKEN", self.api_token),
            ("SMSQ_METRICS_TOKEN", self.metrics_token),
        ]
        for trunk in self.trunks().values():
            variable = (
                "SMSQ_CALLBACK_TOKEN"
                if trunk.name == DEFAULT_TRUNK
                else f"{ENV_PREFIX}TRUNK_{trunk.name.upper().replace('-', '_')}_CALLBACK_TOKEN"
            )
            tokens.append((variable, trunk.callback_token))
        for variable, token in tokens:
            value = token.get_secret_value()
            if value and len(value) < MIN_TOKEN_CHARS:
                raise ConfigError(
                    f"{variable}: at least {MIN_TOKEN_CHARS} characters, not {len(value)} "
                    "(make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"
                )

    def secrets(self) -> list[str]:
        """The secret values, so log and error output can be scrubbed of them."""
        values = [
            self.didww_password.get_secret_value(),
            self.callback_token.get_secret_value(),
            self.api_token.get_secret_value(),
            self.metrics_token.get_secret_value(),
        ]
        try:
            for trunk in self.trunks().values():
                values += [
                    trunk.password.get_secret_value(),
                    trunk.callback_token.get_secret_value(),
                ]
        except ConfigError:
            pass
        password = urlsplit(self.redis_url).password
        if password:
            values.append(password)
        values.append(self.redis_sentinel_password.get_secret_value())
        return list(dict.fromkeys(v for v in values if v))


def _host_port(item: str) -> tuple[str, int]:
    """host:port, or [v6 address]:port, as a pair; ValueError naming the item if not one."""
    parts = urlsplit(f"//{item}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None or parts.username or parts.path:
        raise ValueError(f"{item!r} is not host:port")
    return parts.hostname, port


def _dotenv() -> dict[str, str]:
    from dotenv import dotenv_values

    path = Path(".env")
    if not path.is_file():
        return {}
    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def _read_trunks(settings: Settings) -> dict[str, TrunkConfig]:
    default = TrunkConfig(
        DEFAULT_TRUNK,
        settings.didww_url,
        settings.didww_username,
        settings.didww_password,
        settings.rate_limit,
        settings.callback_token,
        _numbers("SMSQ_DEFAULT_SOURCES", settings.default_sources),
    )
    found = {DEFAULT_TRUNK: default}
    names = [n.strip() for n in settings.trunk_names.split(",") if n.strip()]
    if not names:
        return found
    if not settings.didww_username:
        # Named trunks only: `default` exists when its single-trunk settings are given.
        found = {}
    values = {**_dotenv(), **os.environ}
    for name in names:
        if not TRUNK_NAME.fullmatch(name):
            raise ConfigError(
                f"SMSQ_TRUNKS: {name!r} is not a trunk name (lower-case letters, digits, - and _)"
            )
        if name in found:
            raise ConfigError(f"SMSQ_TRUNKS: {name!r} is named twice (or is `default`)")
        prefix = f"{ENV_PREFIX}TRUNK_{name.upper().replace('-', '_')}_"
        get = {field: values.get(prefix + field, "").strip() for field in TRUNK_FIELDS}
        url = get["URL"] or "https://sms-out.didww.com"
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ConfigError(f"{prefix}URL: must be an http:// or https:// URL")
        try:
            rate = float(get["RATE_LIMIT"] or DEFAULT_RATE_PER_S)
        except ValueError:
            raise ConfigError(f"{prefix}RATE_LIMIT: must be a number") from None
        if not 0 < rate <= 10_000:
            raise ConfigError(f"{prefix}RATE_LIMIT: must be above 0 and at most 10000")
        found[name] = TrunkConfig(
            name,
            url.rstrip("/"),
            get["USERNAME"],
            SecretStr(get["PASSWORD"]),
            rate,
            SecretStr(get["CALLBACK_TOKEN"]),
            _numbers(prefix + "SOURCES", get["SOURCES"]),
        )
    owner: dict[str, str] = {}
    for trunk in found.values():
        for number in trunk.sources:
            if number in owner:
                raise ConfigError(
                    f"source {number} is routed to two trunks: {owner[number]} and {trunk.name}"
                )
            owner[number] = trunk.name
    return found


def _numbers(variable: str, text: str) -> frozenset[str]:
    """Source numbers listed in a setting: E.164 digits, comma separated (a + is dropped)."""
    found = set()
    for part in text.split(","):
        number = part.strip().removeprefix("+")
        if not number:
            continue
        if not number.isdigit() or not 8 <= len(number) <= 15:
            raise ConfigError(f"{variable}: {part.strip()!r} is not a number (8 to 15 digits)")
        found.add(number)
    return frozenset(found)


def load_settings(**overrides: object) -> Settings:
    """Read the settings; a bad value raises ConfigError with one line naming the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        if not first["loc"]:
            # A check across settings (model_validator): its message names them.
            raise ConfigError(message) from None
        field = str(first["loc"][0])
        raise ConfigError(f"{ENV_PREFIX}{field.upper()}: {message}") from None
