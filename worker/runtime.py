"""What one worker process keeps between tasks: an event loop, a Redis client, the DIDWW
client (one connection pool) and the rate limiter, created lazily after the fork.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Coroutine
from typing import Any, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis

from ledger.settings import Settings
from ledger.store import Ledger
from worker.didww import DidwwClient
from worker.limiter import RateLimiter
from worker.sender import Sender

T = TypeVar("T")


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.pid = os.getpid()
        # Names this process in its claims and heartbeats: unique across hosts and processes.
        self.owner = f"{socket.gethostname()}:{self.pid}"
        self.loop = asyncio.new_event_loop()
        # A blocking pool: SMSQ_CONCURRENCY requests may need Redis at once, and redis-py's
        # default pool raises past its limit instead of waiting for a connection.
        pool = BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=settings.concurrency + 10,
            timeout=settings.connect_timeout_s,
            health_check_interval=30,
        )
        self.redis = Redis(connection_pool=pool)
        self.ledger = Ledger(self.redis, settings)
        self.client = DidwwClient(settings)
        self.limiter = RateLimiter(self.redis, settings.send_interval_s)
        self.sender = Sender(self.ledger, self.client, self.limiter, settings, self.owner)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.run(self.client.aclose())
        self.run(self.redis.aclose())
        self.loop.close()


_current: Runtime | None = None


def runtime(settings: Settings) -> Runtime:
    """This process's runtime; a forked child never reuses its parent's connections."""
    global _current
    if _current is None or _current.pid != os.getpid():
        _current = Runtime(settings)
    return _current


def shutdown() -> None:
    global _current
    if _current is not None and _current.pid == os.getpid():
        _current.close()
    _current = None
