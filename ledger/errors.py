"""The root of every error smsq raises on purpose, the configuration error, and the Redis
error of a write that too few replicas acknowledged.

SmsqError
├── ConfigError            a setting is missing or malformed; the component stops at start
├── InputError             (producer) bad text, source, numbers or recipients file
└── DidwwError             (worker.errors) an outcome of a request to the DIDWW API
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import RedisError


class SmsqError(Exception):
    """Root of smsq's own errors; their text never contains a secret."""


class ConfigError(SmsqError):
    """A setting is missing or malformed; the message names the environment variable."""


class InputError(SmsqError):
    """Input the producer refuses: the message says what is wrong and where."""


class NotReplicated(RedisError):
    """A write that fewer than SMSQ_REDIS_MIN_REPLICAS replicas acknowledged within
    SMSQ_REDIS_WAIT_MS: the primary applied it, but a failover now could take it back. A
    RedisError, so callers that retry Redis errors retry it; `reply` is the write's own."""

    def __init__(self, acknowledged: int, wanted: int, reply: Any = None) -> None:
        super().__init__(f"{acknowledged} of {wanted} replicas acknowledged the write in time")
        self.acknowledged = acknowledged
        self.wanted = wanted
        self.reply = reply
