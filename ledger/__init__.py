"""smsq's shared core: settings, the Redis key layout, the message ledger and its events.

The worker, producer and callbacks packages import this one and never each other.
"""

from ledger.errors import ConfigError, InputError, SmsqError
from ledger.settings import Settings, load_settings
from ledger.states import State

__all__ = ["ConfigError", "InputError", "Settings", "SmsqError", "State", "load_settings"]
