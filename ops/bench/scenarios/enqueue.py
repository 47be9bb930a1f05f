"""A million recipients from a CSV file queued in 10 s, 50 times the baseline's
apply_async rate, at a tenth of its Redis memory per queued message.
"""

from __future__ import annotations

import time

from ops.bench import baseline
from ops.bench.harness import SOURCE, TEXT, Context, numbers, write_csv
from ops.bench.measure import CpuMeter
from ops.bench.report import Row, ScenarioResult
from producer.enqueue import Producer
from producer.recipients import read_recipients

NAME = "enqueue"
TARGET_RATE_PER_S = 100_000
TARGET_SPEEDUP = 50
TARGET_MEMORY_SHARE = 0.1


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult(NAME)
    count = ctx.sizes.enqueue_messages
    csv_path = write_csv(ctx.folder(NAME) / "recipients.csv", numbers(count))
    with ctx.stack(NAME) as bench:
        producer = Producer(bench.settings())
        try:
            before = bench.used_memory()
            meter = CpuMeter(bench.pids())
            started = time.perf_counter()
            parsed = read_recipients(csv_path)
            read_at = time.perf_counter()
            queued = producer.enqueue(SOURCE, TEXT, parsed, name="bench")
            done_at = time.perf_counter()
            meter.stop()
            smsq_bytes = (bench.used_memory() - before) / count
        finally:
            producer.close()
        if queued.queued != count:
            raise RuntimeError(f"smsq queued {queued.queued} of {count} recipients")
        smsq_s = done_at - started
        smsq_rate = count / smsq_s

        sample = ctx.sizes.baseline_enqueue_messages
        task = bench.baseline_task()
        before = bench.used_memory()
        baseline_began = time.perf_counter()
        baseline.enqueue(task, SOURCE, TEXT, numbers(sample, prefix="4931"))
        baseline_s = time.perf_counter() - baseline_began
        baseline_bytes = (bench.used_memory() - before) / sample
        baseline_rate = sample / baseline_s

    why = (
        f"{count:,} recipients took {smsq_s:.2f} s: reading and normalising "
        f"{read_at - started:.2f} s, planning, storing and queueing {done_at - read_at:.2f} s "
        f"(the target allows {count / TARGET_RATE_PER_S:.0f} s in all); the enqueuing process "
        f"(here the benchmark's) {meter.cores('bench'):.2f} cores, redis-server "
        f"{meter.cores('redis'):.2f}, the rest of the machine {meter.cores('others'):.2f}"
    )
    result.rows = [
        Row(NAME, "recipients queued per second", "msg/s", smsq_rate, baseline_rate,
            TARGET_RATE_PER_S, why=why),
        Row(NAME, "enqueue rate over the baseline's", "x", smsq_rate / baseline_rate, 1.0,
            TARGET_SPEEDUP, why=why),
        Row(NAME, "Redis memory per queued message", "bytes", smsq_bytes, baseline_bytes,
            baseline_bytes * TARGET_MEMORY_SHARE, better="lower"),
    ]  # fmt: skip
    batches = -(-count // producer.settings.batch_size)
    result.notes = [
        f"smsq: {count:,} recipients from a CSV file (header, '+' on every number) in "
        f"{smsq_s:.2f} s: reading and normalising {read_at - started:.2f} s, storing and "
        f"queueing {done_at - read_at:.2f} s ({batches:,} batch tasks of "
        f"{producer.settings.batch_size}); through producer.enqueue.Producer, as `smsq send` does",
        f"baseline: one apply_async per message, {sample:,} messages in {baseline_s:.2f} s "
        f"(a sample: at its rate 1,000,000 would take {1_000_000 / baseline_rate:,.0f} s)",
        "memory: Redis INFO used_memory after minus before, divided by the messages queued "
        "(smsq: ledger records and broker tasks; baseline: broker messages)",
    ]
    return result
