"""The root of every error smsq raises on purpose, the configuration error, and the Redis
error of a write that too few replicas acknowledged.

SmsqError
├── ConfigError            a setting is missing or malformed; the component stops at start
├── InputError             (producer) bad text, source, numbers or recipients file
│   └── CampaignFinished   pause, resume or cancel of a campaign that has ended
└── DidwwError             (worker.errors) an outcome of a request to the DIDWW API
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import RedisError


class SmsqError(Exception):
    """Root of smsq's own errors; their text never contains a secret."""


class ConfigError(SmsqError):
    """A setting is missing or malformed; the message names the environment variable."""


# The code of an InputError that names none: producer/problems.py's table has every code.
INVALID_INPUT = "invalid_input"


class InputError(SmsqError):
    """Input the producer refuses: the message says what is wrong and where; `code` is the
    stable name a program reads (producer/problems.py, the HTTP API's and `--json`'s errors)."""

    code: str = INVALID_INPUT

    def __init__(self, *args: object, code: str | None = None) -> None:
        super().__init__(*args)
        if code is not None:
            self.code = code


class CampaignFinished(InputError):
    """The campaign has ended (cancelled or done): it cannot be paused, resumed or cancelled."""

    code = "campaign_finished"


class NotReplicated(RedisError):
    """A write that fewer than SMSQ_REDIS_MIN_REPLICAS replicas acknowledged within
    SMSQ_REDIS_WAIT_MS: the primary applied it, but a failover now could take it back. A
    RedisError, so callers that retry Redis errors retry it; `reply` is the write's own."""

    def __init__(self, acknowledged: int, wanted: int, reply: Any = None) -> None:
        super().__init__(f"{acknowledged} of {wanted} replicas acknowledged the write in time")
        self.acknowledged = acknowledged
        self.wanted = wanted
        self.reply = reply
