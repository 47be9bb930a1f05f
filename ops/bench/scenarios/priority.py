"""Target 5: a single message sent while a 100,000-message campaign drains at its limit
reaches the API within 1 s, at the 99th percentile of 20 tries.

Latency is the simulator's arrival time of that destination minus the moment
enqueue_campaign() was called (one destination: it goes on the priority queue).
"""

from __future__ import annotations

import random
import time

from ops.bench import baseline
from ops.bench.harness import (
    SOURCE,
    TEXT,
    BenchStack,
    Context,
    first_arrival,
    numbers,
    percentile,
    wait_until,
)
from ops.bench.report import Row, ScenarioResult
from producer.enqueue import Producer, enqueue_campaign
from producer.numbers import normalize_many

NAME = "priority"
PROCESSES = 2
LATENCY_MS = 20.0
TARGET_P99_S = 1.0
URGENT_TEXT = "Your code is 123456"


def run(ctx: Context) -> ScenarioResult:
    sizes = ctx.sizes
    urgent = numbers(sizes.priority_tries, prefix="4477")
    limit = sizes.priority_rate_per_s
    with ctx.stack(NAME, SMSQ_RATE_LIMIT=str(limit)) as bench:
        bench.start_simulator(LATENCY_MS)
        bench.smsq_worker("w", PROCESSES)
        settings = bench.settings()
        producer = Producer(settings)
        try:
            campaign = numbers(sizes.priority_campaign)
            producer.enqueue(SOURCE, TEXT, normalize_many(campaign), name="bench")
        finally:
            producer.close()
        time.sleep(max(0.0, first_arrival(bench) + sizes.priority_drain_s - time.time()))
        rng = random.Random(4)
        sent_at: dict[str, float] = {}
        for destination in urgent:
            sent_at[destination] = time.time()
            enqueue_campaign(SOURCE, URGENT_TEXT, [destination], settings=settings)
            # Jitter, so the tries fall at every point of the workers' batches.
            time.sleep(sizes.priority_spacing_s * rng.uniform(0.5, 1.5))
        arrived = _arrivals(bench, set(urgent), sizes.priority_timeout_s)
        sent_total = int(bench.sim_stats()["accepted"])
    latencies = [arrived[d] - sent_at[d] for d in urgent if d in arrived]
    missing = len(urgent) - len(latencies)

    base_latency, base_text = _baseline(ctx)
    result = ScenarioResult(NAME)
    p99 = percentile(latencies, 99) if not missing else None
    result.rows = [
        Row(NAME, f"urgent message to API, p99 of {len(urgent)}", "s", p99, base_latency,
            TARGET_P99_S, better="lower", baseline_text=base_text),
    ]  # fmt: skip
    result.notes = [
        f"smsq: {PROCESSES} processes, SMSQ_RATE_LIMIT={limit}, default batch size and "
        f"concurrency (SMSQ_BATCH_SIZE={settings.batch_size}, "
        f"SMSQ_CONCURRENCY={settings.concurrency}); a {sizes.priority_campaign:,}-message "
        f"campaign draining ({sent_total:,} sent during the run), simulator latency "
        f"{LATENCY_MS:.0f} ms",
        "smsq latencies (s): "
        + ", ".join(f"{x:.2f}" for x in sorted(latencies))
        + (f"; {missing} never arrived" if missing else ""),
        f"p50 {percentile(latencies, 50):.2f} s, max {max(latencies):.2f} s"
        if latencies
        else "no urgent message arrived",
        f"baseline: one FIFO queue; an urgent message queued behind a backlog of "
        f"{sizes.baseline_priority_backlog:,} tasks, rate_limit '{limit}/s', "
        f"{PROCESSES} processes, watched for {sizes.baseline_priority_timeout_s:.0f} s",
    ]
    return result


def _arrivals(bench: BenchStack, wanted: set[str], timeout_s: float) -> dict[str, float]:
    """Arrival time of each wanted destination, once all arrived or time ran out."""
    found: dict[str, float] = {}

    def all_in() -> bool:
        bench.check_alive()
        for message in bench.messages():
            if message["destination"] in wanted:
                found.setdefault(message["destination"], float(message["arrived_at"]))
        return len(found) == len(wanted)

    wait_until(all_in, timeout_s, poll_s=0.5)
    return found


def _baseline(ctx: Context) -> tuple[float | None, str]:
    sizes = ctx.sizes
    with ctx.stack(f"{NAME}-baseline") as bench:
        bench.start_simulator(LATENCY_MS)
        task = bench.baseline_task()
        baseline.enqueue(task, SOURCE, TEXT, numbers(sizes.baseline_priority_backlog))
        bench.baseline_worker("b", PROCESSES, rate_limit=f"{sizes.priority_rate_per_s}/s")
        first_arrival(bench)
        destination = "447700000000"
        sent_at = time.time()
        baseline.enqueue(task, SOURCE, URGENT_TEXT, [destination])
        arrived = _arrivals(bench, {destination}, sizes.baseline_priority_timeout_s)
    if destination in arrived:
        return arrived[destination] - sent_at, ""
    return None, f"> {sizes.baseline_priority_timeout_s:.0f} s"
