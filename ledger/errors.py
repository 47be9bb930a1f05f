"""The root of every error smsq raises on purpose, and the configuration error.

SmsqError
├── ConfigError            a setting is missing or malformed; the component stops at start
├── InputError             (producer) bad text, source, numbers or recipients file
└── DidwwError             (worker.errors) an outcome of a request to the DIDWW API
"""

from __future__ import annotations


class SmsqError(Exception):
    """Root of smsq's own errors; their text never contains a secret."""


class ConfigError(SmsqError):
    """A setting is missing or malformed; the message names the environment variable."""


class InputError(SmsqError):
    """Input the producer refuses: the message says what is wrong and where."""
