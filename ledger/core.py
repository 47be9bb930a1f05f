"""What every part of the Ledger stands on: the Redis client, the settings, the registered
scripts and the events stream. The Ledger (ledger/store.py) is assembled from one class per
concern, each built on this one.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from ledger.scripts import register
from ledger.settings import Settings


class LedgerCore:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.scripts: dict[str, Any] = register(redis)
        self.stream = settings.events_stream
        self.maxlen = settings.events_maxlen
