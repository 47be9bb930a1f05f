"""The opt-out list: numbers that are never sent. Kept as 65,536 Redis sets of integers
(intsets, 8 bytes a number) so millions fit compactly; the claim script checks it with one
SISMEMBER inside the same round trip (ledger/lua/claim.lua).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING

from ledger import keys

if TYPE_CHECKING:
    from ledger.store import Ledger

# Numbers per script call when adding or removing many.
CHUNK = 2000


class OptOuts:
    """Mixed into ledger.store.Ledger. Numbers are normalised (E.164 digits) by the caller."""

    async def optout_change(self: Ledger, action: str, numbers: Iterable[str]) -> int:
        """action 'add' or 'remove'; returns how many were added or removed."""
        changed, chunk = 0, []
        for number in numbers:
            chunk.append(number)
            if len(chunk) >= CHUNK:
                changed += int(
                    await self.scripts["optout"](keys=[keys.optout_count()], args=[action, *chunk])
                )
                chunk = []
        if chunk:
            changed += int(
                await self.scripts["optout"](keys=[keys.optout_count()], args=[action, *chunk])
            )
        return changed

    async def optout_contains(self: Ledger, numbers: list[str]) -> list[bool]:
        pipe = self.redis.pipeline(transaction=False)
        for number in numbers:
            pipe.sismember(keys.optout(int(number)), number)
        return [bool(x) for x in await pipe.execute()]

    async def optout_count(self: Ledger) -> int:
        return int(await self.redis.get(keys.optout_count()) or 0)

    async def optout_numbers(self: Ledger) -> AsyncIterator[str]:
        """Every number on the list (unordered), a bucket at a time; only buckets that exist
        are read."""
        buckets = [k async for k in self.redis.scan_iter(match=keys.optout_pattern(), count=1000)]
        for start in range(0, len(buckets), 256):
            pipe = self.redis.pipeline(transaction=False)
            for bucket in buckets[start : start + 256]:
                pipe.smembers(bucket)
            for members in await pipe.execute():
                for m in members:
                    yield m.decode()
