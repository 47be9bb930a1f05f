"""What every part of the Ledger stands on: the Redis client, the settings, the registered
scripts and the events stream. The Ledger (ledger/store.py) is assembled from one class per
concern, each built on this one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from ledger.connection import replicas_listed, replicas_to_wait_for
from ledger.errors import NotReplicated
from ledger.scripts import register
from ledger.settings import Settings


class LedgerCore:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.scripts: dict[str, Any] = register(redis)
        self.stream = settings.events_stream
        self.maxlen = settings.events_maxlen
        # Replicas the primary listed at the last durable call (None: none made yet).
        self._replicas: int | None = None

    async def durably(self, script: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run a script whose effect smsq acts on outside Redis (a request written, an answer
        given, a batch task acknowledged). With SMSQ_REDIS_MIN_REPLICAS, WAIT follows it on
        the same connection in the same round trip, and NotReplicated (carrying the script's
        reply) says too few replicas have it: a failover could still take it back. A replica
        holds a prefix of the primary's writes, so everything written before is covered too.
        docs/reliability.md "Redis: failover, memory, durability"."""
        if not self.settings.redis_min_replicas:
            return await self.scripts[script](keys=keys, args=args)
        wanted = replicas_to_wait_for(self.settings, self._replicas)
        async with self.redis.pipeline(transaction=False) as pipe:
            await self.scripts[script](keys=keys, args=args, client=pipe)
            if wanted:
                pipe.wait(wanted, self.settings.redis_wait_ms)
            pipe.role()
            found = await pipe.execute()
        self._replicas = replicas_listed(found[-1])
        if wanted and found[1] < min(wanted, self._replicas):
            raise NotReplicated(found[1], wanted, found[0])
        return found[0]
