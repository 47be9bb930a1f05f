"""The demo: a 1,000-message campaign through the DIDWW simulator with a real Redis, a real
Celery worker and the real callback ingester, then the final status. Run: make demo.
"""

from __future__ import annotations

import collections
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import redis

from ops.stack import (
    RedisServer,
    Stack,
    StackError,
    default_settings_env,
    temporary_workdir,
)

CAMPAIGN_SIZE = 1000
# Fast enough to finish in seconds, slow enough to watch the rate limiter work.
DEMO_RATE_PER_S = "200"


def write_recipients(path: Path) -> None:
    """1,000 valid numbers in assorted formats, plus two duplicates and two bad lines."""
    rng = random.Random(7)
    lines = ["name,phone"]
    for i in range(CAMPAIGN_SIZE):
        number = f"3706{i:07d}"
        style = rng.choice(["+{}", "00{}", "{}", "+{} ", "({})"])
        lines.append(f"customer {i},{style.format(number)}")
    lines += ["duplicate,+37060000001", "duplicate,0037060000002", "typo,+3706OOO12", "short,12345"]
    path.write_text("\n".join(lines) + "\n")


def find_redis(workdir: Path) -> tuple[str, RedisServer | None]:
    url = os.environ.get("SMSQ_REDIS_URL")
    if url:
        client = redis.Redis.from_url(url)
        try:
            client.ping()
        except redis.RedisError as exc:
            raise StackError(
                f"SMSQ_REDIS_URL={url} is set but Redis does not answer: {exc}"
            ) from None
        finally:
            client.close()
        print(f"using the Redis at SMSQ_REDIS_URL ({url})")
        return url, None
    server = RedisServer(workdir).start()
    print(f"started a private redis-server on port {server.port}")
    return server.url, server


def main() -> int:
    with temporary_workdir("smsq-demo-") as workdir:
        server: RedisServer | None = None
        stack: Stack | None = None
        try:
            redis_url, server = find_redis(workdir)
            env = default_settings_env(redis_url, SMSQ_RATE_LIMIT=DEMO_RATE_PER_S)
            stack = Stack(workdir, redis_url, env)
            stack.start_callbacks()
            print(f"callback ingester on {stack.callbacks_url}")
            stack.start_simulator(
                "--latency-ms", "30", "--latency-jitter-ms", "10",
                "--callback-delay-ms", "300", "--callback-failure-ratio", "0.05",
            )  # fmt: skip
            print(f"DIDWW simulator on {stack.simulator_url}")
            stack.start_worker("demo", concurrency=2)
            print("Celery worker ready (2 processes)")
            recipients = workdir / "recipients.csv"
            write_recipients(recipients)
            print(f"\nsmsq send --recipients recipients.csv --wait  (rate {DEMO_RATE_PER_S}/s)\n")
            sys.stdout.flush()
            smsq = Path(sys.executable).with_name("smsq")
            done = subprocess.run(
                [str(smsq), "send", "--source", "37041123456", "--recipients", str(recipients),
                 "--text", "Hello from the smsq demo!", "--name", "demo", "--wait"],
                env=stack.env(), timeout=300, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                print(f"smsq send exited {done.returncode}", file=sys.stderr)
                return done.returncode
            summarize_events(redis_url)
            stats = stack.sim("stats")
            print(f"\nthe simulator accepted {stats['accepted']} messages")
            return 0
        except StackError as exc:
            print(f"demo: {exc}", file=sys.stderr)
            return 1
        finally:
            if stack:
                stack.stop()
            if server:
                server.stop()


def summarize_events(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        types: collections.Counter[str] = collections.Counter()
        for _, fields in client.xrange("smsq:events"):
            types[json.loads(fields[b"data"])["type"]] += 1
    finally:
        client.close()
    print("\nevents on smsq:events: " + ", ".join(f"{k} {v}" for k, v in sorted(types.items())))


if __name__ == "__main__":
    sys.exit(main())
