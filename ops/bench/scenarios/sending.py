"""Targets 2 and 3: sending throughput against the simulator with no rate limit in the way.

Latency-bound (200 ms): two processes must reach 1,000 messages/s and 90% of what their
requests in flight allow. CPU-bound (0 ms): twice the baseline with as many processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ops.bench import baseline, profile
from ops.bench.harness import SOURCE, TEXT, BenchStack, Context, numbers, steady_rate
from ops.bench.report import Row, ScenarioResult
from ops.bench.sizes import Sizes
from producer.enqueue import Producer
from producer.numbers import normalize_many

PROCESSES = 2
# The highest SMSQ_RATE_LIMIT settings accept: "no rate limit" for these scenarios.
NO_LIMIT = "10000"
LATENCY_MS = 200.0
TARGET_LATENCY_RATE = 1_000
TARGET_IN_FLIGHT_SHARE = 0.9
TARGET_CPU_SPEEDUP = 2.0
# What the baseline can do in each (measured): tasks enough to outlast its window.
BASELINE_LATENCY_PER_S = 10
BASELINE_CPU_PER_S = 600
# py-spy samples this long (at most) once the window is measured.
PROFILE_S = 10.0


@dataclass(frozen=True)
class SmsqSetup:
    """The smsq settings a scenario runs with; printed with its figures."""

    concurrency: int
    batch_size: int

    def env(self) -> dict[str, str]:
        return {
            "SMSQ_RATE_LIMIT": NO_LIMIT,
            "SMSQ_CONCURRENCY": str(self.concurrency),
            "SMSQ_BATCH_SIZE": str(self.batch_size),
        }

    @property
    def in_flight(self) -> int:
        """Requests in flight: each process runs one batch at a time, `concurrency` at once."""
        return PROCESSES * min(self.concurrency, self.batch_size)

    def describe(self) -> str:
        return (
            f"{PROCESSES} processes (one worker, --concurrency {PROCESSES}), "
            f"SMSQ_CONCURRENCY={self.concurrency}, SMSQ_BATCH_SIZE={self.batch_size}, "
            f"SMSQ_RATE_LIMIT={NO_LIMIT} (the highest allowed), log level INFO (the default): "
            f"{self.in_flight} requests in flight"
        )


# 200 ms: 1,000/s needs 100 or more in flight per process, but a worker process fails its
# batches above about 95 (redis-py 8's asyncio pool holds 100 connections and raises when
# they are all in use) and one httpx pool of 100 connections collapses (DESIGN.md), so 50:
# the best one pool does. Batches of 1,000 so the pause between two batches is rare.
LATENCY_SETUP = SmsqSetup(concurrency=50, batch_size=1000)
# 0 ms: the default concurrency; more coroutines only add event-loop work.
CPU_SETUP = SmsqSetup(concurrency=20, batch_size=100)


def run_latency(ctx: Context) -> ScenarioResult:
    result = ScenarioResult("latency")
    smsq_rate, notes = _smsq(ctx, "latency", LATENCY_MS, LATENCY_SETUP)
    baseline_rate = _baseline(ctx, "latency-baseline", LATENCY_MS, BASELINE_LATENCY_PER_S)
    ceiling = LATENCY_SETUP.in_flight / (LATENCY_MS / 1000)
    result.rows = [
        Row("latency", "messages per second at 200 ms", "msg/s", smsq_rate, baseline_rate,
            TARGET_LATENCY_RATE),
        Row("latency", "share of the in-flight ceiling", "share", smsq_rate / ceiling,
            baseline_rate / (PROCESSES / (LATENCY_MS / 1000)), TARGET_IN_FLIGHT_SHARE),
    ]  # fmt: skip
    result.notes = [
        f"smsq: {LATENCY_SETUP.describe()}; ceiling {LATENCY_SETUP.in_flight} / 0.2 s = "
        f"{ceiling:,.0f}/s",
        f"baseline: {PROCESSES} prefork processes, one synchronous request each: ceiling "
        f"{PROCESSES / (LATENCY_MS / 1000):.0f}/s",
        *notes,
    ]
    return result


def run_cpu(ctx: Context) -> ScenarioResult:
    result = ScenarioResult("cpu")
    smsq_rate, notes = _smsq(ctx, "cpu", 0.0, CPU_SETUP)
    baseline_rate = _baseline(ctx, "cpu-baseline", 0.0, BASELINE_CPU_PER_S)
    result.rows = [
        Row("cpu", "messages per second at 0 ms", "msg/s", smsq_rate, baseline_rate,
            TARGET_CPU_SPEEDUP * baseline_rate),
    ]  # fmt: skip
    result.notes = [
        f"smsq: {CPU_SETUP.describe()}",
        f"baseline: {PROCESSES} prefork processes, no rate limit; target is "
        f"{TARGET_CPU_SPEEDUP:.0f}x its rate; both share the 2 cores with the simulator and "
        "redis-server",
        *notes,
    ]
    return result


def _smsq(ctx: Context, name: str, latency_ms: float, setup: SmsqSetup) -> tuple[float, list[str]]:
    sizes = ctx.sizes
    notes: list[str] = []
    with ctx.stack(name, **setup.env()) as bench:
        bench.start_simulator(latency_ms)
        worker = bench.smsq_worker("w", PROCESSES)
        _enqueue(bench, sizes.send_campaign)
        rate, window_s = steady_rate(bench, sizes.send_warmup_s, sizes.send_window_s)
        if ctx.profile_dir is not None and worker.popen is not None:
            # After the window, so py-spy's sampling does not slow what is measured.
            notes += _profile(ctx.profile_dir / f"{name}-worker.txt", worker.popen.pid, sizes)
    notes.append(f"smsq measured over {window_s:.1f} s after a {sizes.send_warmup_s:.0f} s warm-up")
    return rate, notes


def _profile(raw: Path, pid: int, sizes: Sizes) -> list[str]:
    raw.parent.mkdir(parents=True, exist_ok=True)
    seconds = min(PROFILE_S, sizes.send_window_s)
    recorder = profile.record(pid, seconds, raw)
    if recorder is None:
        return ["profile: py-spy is not installed (pip install -e '.[bench]')"]
    recorder.wait(timeout=seconds + 30)
    if not raw.exists():
        return ["profile: py-spy recorded nothing (is ptrace allowed here?)"]
    return [f"profile of the worker's processes, {seconds:.0f} s after the window ({raw}):",
            *profile.summarize(raw)]  # fmt: skip


def _baseline(ctx: Context, name: str, latency_ms: float, expected_per_s: float) -> float:
    sizes = ctx.sizes
    tasks = int(expected_per_s * (sizes.send_warmup_s + sizes.baseline_send_window_s) * 1.5) + 20
    with ctx.stack(name) as bench:
        bench.start_simulator(latency_ms)
        baseline.enqueue(bench.baseline_task(), SOURCE, TEXT, numbers(tasks))
        bench.baseline_worker("b", PROCESSES)
        rate, _ = steady_rate(bench, sizes.send_warmup_s, sizes.baseline_send_window_s)
    return rate


def _enqueue(bench: BenchStack, count: int) -> None:
    producer = Producer(bench.settings())
    try:
        producer.enqueue(SOURCE, TEXT, normalize_many(numbers(count)), name="bench")
    finally:
        producer.close()
