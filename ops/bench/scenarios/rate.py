"""Target 4: four worker processes under a limit of 100/s keep every one-second window at
102 or less and a mean of at least 97/s over 3,000 messages.

Both sides run four single-process workers, as four hosts would: smsq's limit is one for
the trunk; Celery's `rate_limit` is per worker, so the baseline's four limits add up.
"""

from __future__ import annotations

import time

from ops.bench import baseline
from ops.bench.harness import (
    SOURCE,
    TEXT,
    BenchStack,
    Context,
    first_arrival,
    mean_rate,
    numbers,
    wait_until,
)
from ops.bench.report import Row, ScenarioResult
from ops.stack import max_in_any_window
from producer.enqueue import Producer
from producer.numbers import normalize_many

NAME = "rate"
WORKERS = 4
LIMIT_PER_S = 100
TARGET_MAX_WINDOW = 102
TARGET_MEAN = 97
# Fast enough that the baseline's four processes could pass the limit (4 x 50/s).
LATENCY_MS = 20.0


def run(ctx: Context) -> ScenarioResult:
    count = ctx.sizes.rate_messages
    with ctx.stack(NAME, SMSQ_RATE_LIMIT=str(LIMIT_PER_S)) as bench:
        bench.start_simulator(LATENCY_MS)
        bench.smsq_workers(WORKERS, 1)
        producer = Producer(bench.settings())
        try:
            producer.enqueue(SOURCE, TEXT, normalize_many(numbers(count)), name="bench")
        finally:
            producer.close()
        smsq_times = _collect(bench, count, count / LIMIT_PER_S + 30)

    with ctx.stack(f"{NAME}-baseline") as bench:
        bench.start_simulator(LATENCY_MS)
        baseline.enqueue(bench.baseline_task(), SOURCE, TEXT, numbers(count))
        bench.baseline_workers(WORKERS, 1, rate_limit=f"{LIMIT_PER_S}/s")
        started = first_arrival(bench)
        wait_until(
            lambda: (
                bench.sim_stats()["accepted"] >= count
                or time.time() > started + ctx.sizes.baseline_rate_max_s
            ),
            ctx.sizes.baseline_rate_max_s + 5,
        )
        base_times = bench.arrivals()

    result = ScenarioResult(NAME)
    smsq_max, base_max = max_in_any_window(smsq_times), max_in_any_window(base_times)
    smsq_mean, base_mean = mean_rate(smsq_times), mean_rate(base_times)
    result.rows = [
        Row(NAME, "most requests in any 1 s window", "req", smsq_max, base_max,
            TARGET_MAX_WINDOW, better="lower"),
        Row(NAME, "mean rate, first to last request", "msg/s", smsq_mean, base_mean, TARGET_MEAN),
    ]  # fmt: skip
    result.notes = [
        f"{WORKERS} workers of one process each, limit {LIMIT_PER_S}/s, simulator latency "
        f"{LATENCY_MS:.0f} ms; windows slide, each starting at a request's arrival",
        f"smsq: SMSQ_RATE_LIMIT={LIMIT_PER_S} (paced at SMSQ_RATE_HEADROOM 0.98 of it), "
        f"{len(smsq_times):,} messages",
        f"baseline: rate_limit='{LIMIT_PER_S}/s' on the task; Celery enforces it per worker, so "
        f"four workers may send up to {WORKERS * LIMIT_PER_S}/s together; "
        f"{len(base_times):,} of {count:,} sent in the "
        f"{ctx.sizes.baseline_rate_max_s:.0f} s it was given",
    ]
    return result


def _collect(bench: BenchStack, count: int, timeout_s: float) -> list[float]:
    """Arrival times once all `count` messages reached the simulator (or time ran out)."""

    def done() -> bool:
        bench.check_alive()
        return int(bench.sim_stats()["accepted"]) >= count

    if not wait_until(done, timeout_s, poll_s=0.5):
        raise RuntimeError(f"only {bench.sim_stats()['accepted']} of {count} sent in time")
    return bench.arrivals()
