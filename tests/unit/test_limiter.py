"""Tests for worker.limiter: reserved send slots on fakeredis are spaced by the interval,
and nobody reserves further ahead than max_ahead."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass
from typing import Any

import fakeredis.aioredis

from ledger import keys
from worker.limiter import RateLimiter

INTERVAL_S = 0.010
INTERVAL_US = 10_000
# asyncio may wake a sleeper up to a clock tick early, and a script call takes time.
TOLERANCE_S = 0.003


@dataclass
class Call:
    started_s: float
    granted: bool
    wait_us: int
    next_slot_us: int


def spy(limiter: RateLimiter, redis: fakeredis.aioredis.FakeRedis) -> list[Call]:
    """Record every script call with the next free slot it left behind."""
    calls: list[Call] = []
    script = limiter._script
    # Redis runs scripts one at a time; the lock keeps the GET with its own script call.
    lock = asyncio.Lock()

    async def recorded(keys: list[str], args: list[Any]) -> Any:
        async with lock:
            started = time.monotonic()
            reply = await script(keys=keys, args=args)
            after = await redis.get(keys[0])
        calls.append(Call(started, bool(int(reply[0])), int(reply[1]), int(after or 0)))
        return reply

    limiter._script = recorded
    return calls


def test_concurrent_acquisitions_are_spaced_by_the_interval(server) -> None:
    n = 30

    async def go() -> tuple[list[Call], list[float], float]:
        redis = fakeredis.aioredis.FakeRedis(server=server)
        limiter = RateLimiter(redis, INTERVAL_S, max_ahead_s=10.0)
        calls = spy(limiter, redis)
        began = time.monotonic()
        waits = await asyncio.gather(*(limiter.acquire() for _ in range(n)))
        elapsed = time.monotonic() - began
        await redis.aclose()
        return calls, list(waits), elapsed

    calls, waits, elapsed = asyncio.run(go())
    assert len(calls) == n and all(c.granted for c in calls)
    # Exact, on Redis's clock: each reservation took the slot after the previous one.
    slots_us = [c.next_slot_us - INTERVAL_US for c in calls]
    assert all(b - a == INTERVAL_US for a, b in itertools.pairwise(slots_us))
    # From the waits the callers saw: reserved times never closer than one interval.
    reserved_s = sorted(c.started_s + c.wait_us / 1e6 for c in calls)
    gaps = [b - a for a, b in itertools.pairwise(reserved_s)]
    assert min(gaps) >= INTERVAL_S - TOLERANCE_S
    assert sorted(round(w * 1e6) for w in waits) == sorted(c.wait_us for c in calls)
    # At most one slot in any one interval: n slots need (n - 1) intervals.
    assert elapsed >= (n - 1) * INTERVAL_S - TOLERANCE_S
    assert elapsed < (n - 1) * INTERVAL_S + 1.0


def test_sequential_acquisitions_wait_out_the_interval(server) -> None:
    async def go() -> list[float]:
        redis = fakeredis.aioredis.FakeRedis(server=server)
        limiter = RateLimiter(redis, INTERVAL_S)
        done = []
        for _ in range(10):
            await limiter.acquire()
            done.append(time.monotonic())
        await redis.aclose()
        return done

    done = asyncio.run(go())
    gaps = [b - a for a, b in itertools.pairwise(done)]
    assert min(gaps) >= INTERVAL_S - TOLERANCE_S


def test_an_idle_limiter_grants_at_once(server) -> None:
    async def go() -> tuple[float, int]:
        redis = fakeredis.aioredis.FakeRedis(server=server)
        waited = await RateLimiter(redis, 1.0).acquire()
        ttl_ms = await redis.pttl(keys.rate_limiter())
        await redis.aclose()
        return waited, ttl_ms

    waited, ttl_ms = asyncio.run(go())
    assert waited == 0.0
    # The slot key expires on its own once the trunk is idle.
    assert 0 < ttl_ms <= 2000 + 100


def test_max_ahead_makes_callers_wait_and_ask_again(server) -> None:
    n = 12
    max_ahead_s = 0.030

    async def go() -> list[Call]:
        redis = fakeredis.aioredis.FakeRedis(server=server)
        limiter = RateLimiter(redis, INTERVAL_S, max_ahead_s=max_ahead_s)
        calls = spy(limiter, redis)
        await asyncio.gather(*(limiter.acquire() for _ in range(n)))
        await redis.aclose()
        return calls

    calls = asyncio.run(go())
    granted = [c for c in calls if c.granted]
    refused = [c for c in calls if not c.granted]
    assert len(granted) == n
    # Only the first few fit within max_ahead; the rest were refused and came back.
    assert refused
    assert all(c.wait_us <= max_ahead_s * 1e6 for c in granted)
    assert all(c.wait_us > 0 for c in refused)
    # A refusal reserves nothing: the slots stay exactly one interval apart.
    slots_us = sorted(c.next_slot_us - INTERVAL_US for c in granted)
    assert all(b - a == INTERVAL_US for a, b in itertools.pairwise(slots_us))
    for c in refused:
        assert c.next_slot_us in {g.next_slot_us for g in granted}


def test_max_ahead_never_below_one_interval(server) -> None:
    async def go() -> RateLimiter:
        redis = fakeredis.aioredis.FakeRedis(server=server)
        limiter = RateLimiter(redis, 2.0, max_ahead_s=0.1)
        await redis.aclose()
        return limiter

    limiter = asyncio.run(go())
    assert limiter.interval_us == 2_000_000
    assert limiter.max_ahead_us == 2_000_000
