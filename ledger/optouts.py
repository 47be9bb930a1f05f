"""The opt-out list: numbers that are never sent. Kept as 65,536 Redis sets of integers
(intsets, 8 bytes a number) so millions fit compactly; the claim script checks it with one
SISMEMBER inside the same round trip (ledger/lua/claim.lua).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from typing import TYPE_CHECKING

from ledger import keys, scripts
from ledger.core import LedgerCore

if TYPE_CHECKING:
    import redis
    import redis.client


# Numbers per script call when adding or removing many.
CHUNK = 2000
# Numbers per script call when checking many (a call of 1,000 keeps Redis busy about 1 ms; as
# fast in all as calls of 10,000, which hold other clients 11 ms), and calls per round trip.
CHECK_CHUNK = 1000
CHECK_CALLS_PER_ROUND_TRIP = 100

# Which of many numbers are on the list: lua/optout_check.lua, the numbers as one argument,
# the answer as one string. 1,000,000 numbers, half of them on the list, take 1.2 s this way
# against 8.9 s as pipelined SISMEMBERs (redis-py packs and parses each command in Python),
# on this project's 2-core machine.
# The events of numbers found on the list at enqueue (type suppressed), built whole by the
# producer, many per call of lua/publish.lua: 500,000 events take 1.7 s (building them
# included) against 9.6 s as one XADD each.


def listed(client: redis.Redis) -> int:
    """How many numbers are on the list (the count the optout script keeps with it): a
    campaign skips checking its numbers when it is 0."""
    return int(client.get(keys.optout_count()) or 0)


def on_list(client: redis.Redis, numbers: Sequence[str]) -> list[int]:
    """The positions in `numbers` (E.164 digits) of those on the opt-out list, in order."""
    check = client.register_script(scripts.source("optout_check"))
    found: list[int] = []
    step = CHECK_CHUNK * CHECK_CALLS_PER_ROUND_TRIP
    for start in range(0, len(numbers), step):
        pipe = client.pipeline(transaction=False)
        starts = range(start, min(start + step, len(numbers)), CHECK_CHUNK)
        for first in starts:
            check(keys=[], args=[",".join(numbers[first : first + CHECK_CHUNK])], client=pipe)
        for first, flags in zip(starts, pipe.execute(), strict=True):
            if len(flags) != min(CHECK_CHUNK, len(numbers) - first):
                raise ValueError("opt-out check: numbers must be E.164 digits")
            if b"1" in flags:
                found += [p for p, flag in enumerate(flags, first) if flag == 49]  # b"1"
    return found


def publish_suppressed(
    pipe: redis.client.Pipeline, stream: str, maxlen: int, events: Sequence[str]
) -> None:
    """Queue on `pipe` the publishing of events already encoded (ledger.events.encode), in
    one script call."""
    publish = pipe.register_script(scripts.source("publish"))
    publish(keys=[], args=[stream, maxlen, *events], client=pipe)


class OptOuts(LedgerCore):
    """Part of ledger.store.Ledger. Numbers are normalised (E.164 digits) by the caller."""

    async def optout_change(self, action: str, numbers: Iterable[str]) -> int:
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

    async def optout_contains(self, numbers: list[str]) -> list[bool]:
        pipe = self.redis.pipeline(transaction=False)
        for number in numbers:
            pipe.sismember(keys.optout(int(number)), number)
        return [bool(x) for x in await pipe.execute()]

    async def optout_count(self) -> int:
        return int(await self.redis.get(keys.optout_count()) or 0)

    async def optout_numbers(self) -> AsyncIterator[str]:
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
