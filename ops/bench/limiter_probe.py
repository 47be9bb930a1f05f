"""One process of the limiter comparison: take rate-limit grants as fast as a limiter gives
them, for a fixed time, and print their times and the CPU this process spent.

python -m ops.bench.limiter_probe smsq|limits REDIS_URL --rate 100 --duration-s 10 --start-at T
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from redis.asyncio import Redis

from worker.limiter import RateLimiter

# Waiters per process, like a worker's requests in flight.
COROUTINES = 20
# How long a `limits` caller sleeps after a refusal: it can only ask again.
LIMITS_RETRY_S = 0.01


async def _smsq(url: str, rate: float, stop_at: float, grants: list[float]) -> None:
    redis = Redis.from_url(url)
    limiter = RateLimiter(redis, 1.0 / rate)

    async def one() -> None:
        while time.time() < stop_at:
            await limiter.acquire()
            grants.append(time.time())

    try:
        await asyncio.gather(*(one() for _ in range(COROUTINES)))
    finally:
        await redis.aclose()


async def _limits(url: str, rate: float, stop_at: float, grants: list[float]) -> None:
    # Imported here: `limits` is in the bench extra, and the smsq side runs without it.
    from limits import RateLimitItemPerSecond
    from limits.aio.storage import RedisStorage
    from limits.aio.strategies import MovingWindowRateLimiter

    storage = RedisStorage(f"async+{url}", implementation="redispy")
    limiter = MovingWindowRateLimiter(storage)
    item = RateLimitItemPerSecond(int(rate))

    async def one() -> None:
        while time.time() < stop_at:
            if await limiter.hit(item, "trunk"):
                grants.append(time.time())
            else:
                await asyncio.sleep(LIMITS_RETRY_S)

    await asyncio.gather(*(one() for _ in range(COROUTINES)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.bench.limiter_probe")
    parser.add_argument("kind", choices=["smsq", "limits"])
    parser.add_argument("redis_url")
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--start-at", type=float, default=0.0, help="Unix time to begin at")
    args = parser.parse_args(argv)
    time.sleep(max(0.0, args.start_at - time.time()))
    grants: list[float] = []
    stop_at = time.time() + args.duration_s
    run = _smsq if args.kind == "smsq" else _limits
    cpu_before = time.process_time()
    asyncio.run(run(args.redis_url, args.rate, stop_at, grants))
    # Grants taken after the deadline by waiters already in line are not counted.
    grants = [t for t in grants if t < stop_at]
    print(json.dumps({"grants": grants, "cpu_s": time.process_time() - cpu_before}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
