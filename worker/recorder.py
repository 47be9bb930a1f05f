"""Answers recorded many per Redis round trip (ledger/lua/record.lua): what the engine's posts
came to, the batches it is done with, and the messages given back for a retry, which are
offered again only once their `retry` is recorded. docs/architecture.md §6.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import structlog
from redis.exceptions import RedisError

from ledger.hotpath import Result
from ledger.store import Ledger

log = structlog.stdlib.get_logger("smsq.worker")

# Answers wait at most this long to be recorded together (one round trip for all of them).
FLUSH_S = 0.004
# After a Redis error the recorder waits this long before trying again, doubling to the max.
REDIS_RETRY_S, REDIS_RETRY_MAX_S = 0.2, 5.0

# What the engine needs back about a given-back message once its retry is recorded.
R = TypeVar("R")


class Recorder(Generic[R]):
    def __init__(self, ledger: Ledger, on_retry: Callable[[R], Awaitable[None]]) -> None:
        self.ledger = ledger
        self._on_retry = on_retry
        self._results: list[Result] = []
        self._forget: list[tuple[str, asyncio.Future[None] | None]] = []
        self._retries: list[R] = []
        self._wanted = asyncio.Event()

    @property
    def pending(self) -> bool:
        """Whether anything waits to be recorded."""
        return bool(self._results or self._forget or self._retries)

    def add(self, result: Result) -> None:
        self._results.append(result)
        self._wanted.set()

    def retry(self, result: Result, retry: R) -> None:
        """Record a message given back; `retry` goes to on_retry once it is recorded."""
        self._results.append(result)
        self._retries.append(retry)
        self._wanted.set()

    def forget(self, field: str, after: asyncio.Future[None] | None = None) -> None:
        """A held batch is finished here: forget its in-flight entry (ledger/lua/record.lua
        releases any claim of it whose reply was lost), once `after` (its park) is done; not
        at all if that failed (the entry, beating no more, has the batch recovered)."""
        self._forget.append((field, after))
        if after is not None:
            after.add_done_callback(lambda _: self._wanted.set())
        self._wanted.set()

    async def flush(self) -> None:
        """Record everything waiting, in one round trip, then hand each recorded retry to
        on_retry; on a Redis error what is not done stays waiting and the error is raised."""
        results, retries = self._results, self._retries
        forget, waiting = [], []
        for entry in self._forget:
            after = entry[1]
            (forget if after is None or after.done() else waiting).append(entry)
        self._results, self._forget, self._retries = [], waiting, []
        fields = [f for f, after in forget if after is None or _succeeded(after)]
        if results or fields:
            try:
                await self.ledger.record(results, fields)
            except RedisError:
                self._results[:0] = results
                self._forget[:0] = forget
                self._retries[:0] = retries
                raise
        for done, retry in enumerate(retries):
            try:
                await self._on_retry(retry)
            except RedisError:
                self._retries[:0] = retries[done:]
                raise

    async def run(self) -> None:
        """Flush whenever something waits, FLUSH_S after the first of it came; forever."""
        delay = REDIS_RETRY_S
        while True:
            await self._wanted.wait()
            await asyncio.sleep(FLUSH_S)
            self._wanted.clear()
            try:
                await self.flush()
            except RedisError as exc:
                log.warning(
                    "record_failed", results=len(self._results), error=str(exc), retry_in_s=delay
                )
                self._wanted.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, REDIS_RETRY_MAX_S)
                continue
            delay = REDIS_RETRY_S


def _succeeded(done: asyncio.Future[None]) -> bool:
    return not done.cancelled() and done.exception() is None
