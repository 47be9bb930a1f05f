"""What one worker process keeps between tasks: a thread running an event loop (uvloop) with
the sending engine on it, its Redis client and DIDWW clients, created lazily after the fork.

Celery's prefork pool runs a task in the process's main thread; the task hands its batch to
the engine and returns, while the engine's thread goes on posting and recording.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

from ledger import connection
from ledger.settings import Settings
from ledger.store import Ledger
from worker.engine import Engine

T = TypeVar("T")

# Redis connections per process: the engine's claim loops, its recorder and heartbeat, and
# tasks handing over batches; each call carries many messages, so few are enough.
REDIS_CONNECTIONS = 16


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.pid = os.getpid()
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="smsq-engine", daemon=True
        )
        self._thread.start()
        self.redis = connection.async_bounded_client(
            settings, REDIS_CONNECTIONS, settings.connect_timeout_s, health_check_interval=30
        )
        self.ledger = Ledger(self.redis, settings)
        name = f"{socket.gethostname()}:{self.pid}"
        self.engine: Engine = self.run(Engine.create(settings, self.ledger, name))

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        """Run a coroutine on the engine's loop and wait for its result (from another thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self, drain_timeout_s: float) -> None:
        try:
            self.run(self.engine.drain(drain_timeout_s), drain_timeout_s + 10)
            self.run(self.redis.aclose(), 5)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)


_current: Runtime | None = None
_lock = threading.Lock()


def runtime(settings: Settings) -> Runtime:
    """This process's runtime; a forked child never reuses its parent's connections."""
    global _current
    with _lock:
        if _current is None or _current.pid != os.getpid():
            _current = Runtime(settings)
        return _current


def shutdown(drain_timeout_s: float) -> None:
    global _current
    with _lock:
        if _current is not None and _current.pid == os.getpid():
            _current.close(drain_timeout_s)
        _current = None
