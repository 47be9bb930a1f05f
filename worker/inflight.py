"""Requests in flight, counted in one place: for the process (against SMSQ_MAX_IN_FLIGHT),
per trunk (its lane) and per held batch (which cannot finish while one is out).
docs/architecture.md §6.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol


class Counted(Protocol):
    in_flight: int


class InFlight:
    """The one owner of every in-flight count: a request is added when its claim is written
    and done when its answer (or error) is in."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self._room = asyncio.Event()

    @property
    def free(self) -> int:
        return self.limit - self.count

    def add(self, lane: Counted, held: Counted) -> None:
        held.in_flight += 1
        lane.in_flight += 1
        self.count += 1

    def done(self, lane: Counted, held: Counted) -> None:
        held.in_flight -= 1
        lane.in_flight -= 1
        self.count -= 1
        self._room.set()

    async def wait_for_room(self) -> None:
        """Until a request in flight is done (or wake() is called)."""
        self._room.clear()
        await self._room.wait()

    def wake(self) -> None:
        self._room.set()

    async def wait_empty(self, timeout_s: float, poll_s: float = 0.05) -> bool:
        """Until nothing is in flight, at most timeout_s; True if nothing is."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.count and loop.time() < deadline:
            self._room.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), min(poll_s, deadline - loop.time()))
        return self.count == 0
