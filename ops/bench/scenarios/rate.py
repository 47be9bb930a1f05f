"""Target 1: every rate slot used, no window over. For trunk limits of 100/s and 300/s, with 1,
4 and 8 worker processes (4 and 8 both in one worker, `--concurrency N`, and as N/2 workers of
two processes, as on several hosts), with the simulator answering at 0 and 200 ms: the mean
rate from the first request to the last is at least 0.97 of the limit, and no sliding
one-second window of arrivals at the simulator holds more than the limit.

Each limit x layout gets one stack, its workers started once; its latencies run one after the
other on it (the simulator reconfigured and reset, the trunk's count of unused slots zeroed in
between). Each run is a campaign of limit x rate_send_s messages, sent to its end.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass

from ops.bench import baseline
from ops.bench.harness import SOURCE, TEXT, BenchStack, Context, first_arrival, numbers, wait_until
from ops.bench.measure import CpuMeter, LogTail, fullest_window, mean_rate, metric_samples
from ops.bench.report import Row, ScenarioResult, grid
from ops.bench.sizes import Layout
from ops.stack import Proc, max_in_any_window

NAME = "rate"
TARGET_MEAN_SHARE = 0.97
TARGET_WINDOW_SHARE = 1.0
# A claim call later than this after its reserved slot may find the slot gone to the past
# beyond claim.lua's catch-up (20 ms at most): the first histogram bucket above it.
LATE_CLAIM_S = 0.025
BASELINE_LIMIT_PER_S = 100
BASELINE_WORKERS = 4


class Accuracy:
    """The two targets, judged on a run's mean rate and fullest window (trunks.py too)."""

    limit: int
    mean_per_s: float
    max_window: int

    @property
    def mean_share(self) -> float:
        return self.mean_per_s / self.limit

    @property
    def window_share(self) -> float:
        return self.max_window / self.limit

    @property
    def mean_ok(self) -> bool:
        return self.mean_share >= TARGET_MEAN_SHARE

    @property
    def window_ok(self) -> bool:
        return self.window_share <= TARGET_WINDOW_SHARE


@dataclass
class Run(Accuracy):
    """One campaign sent under one limit, by one layout of workers, at one API latency."""

    limit: int
    layout: Layout
    latency_ms: float
    sent: int
    mean_per_s: float
    max_window: int
    # When the fullest window began, seconds after the first request.
    fullest_at_s: float
    # Slots nobody claimed within claim.lua's catch-up (the trunk's `idle` count).
    unused_slots: int
    claims: int
    late_claims: int
    given_back: int
    longest_gap_s: float
    # Redis busy with one command past its slowlog threshold (10 ms): how often, how long.
    slow_redis: str
    cpu: str

    @property
    def verdict(self) -> str:
        misses = [w for w, ok in (("mean", self.mean_ok), ("window", self.window_ok)) if not ok]
        return f"MISS ({', '.join(misses)})" if misses else "PASS"

    def label(self) -> str:
        return (
            f"{self.limit}/s, {self.layout.total} processes ({self.layout.describe()}), "
            f"{self.latency_ms:.0f} ms"
        )

    def evidence(self) -> str:
        parts = [
            f"mean {self.mean_per_s:.1f}/s ({self.mean_share:.3f} of the limit)",
            f"fullest window {self.max_window} (from +{self.fullest_at_s:.1f} s)",
            f"{self.unused_slots} slots went unused (claim.lua's idle count)",
            f"{self.late_claims} of {self.claims} claim calls more than "
            f"{LATE_CLAIM_S * 1000:.0f} ms after their slot",
            f"{self.given_back} claims given back",
            f"longest pause between two requests {self.longest_gap_s:.2f} s",
            f"Redis commands over 10 ms: {self.slow_redis}",
            f"CPU (cores) workers / simulator / redis / the rest of the machine: {self.cpu}",
        ]
        return f"{self.label()}: " + ", ".join(parts)


def run(ctx: Context) -> ScenarioResult:
    sizes = ctx.sizes
    runs: list[Run] = []
    for limit in sizes.rate_limits:
        for layout in sizes.rate_layouts:
            name = f"{NAME}-{limit}-{layout.workers}x{layout.processes}"
            with ctx.stack(name, SMSQ_RATE_LIMIT=str(limit)) as bench:
                bench.start_simulator(0.0)
                procs = bench.smsq_workers(layout)
                for latency_ms in sizes.rate_latencies_ms:
                    count = max(2, round(limit * sizes.rate_send_s))
                    prefix = f"49{len(runs):02d}"
                    runs.append(_send(bench, procs, limit, layout, latency_ms, count, prefix))
    base_times = _baseline(ctx)

    worst_mean = min(runs, key=lambda r: r.mean_share)
    worst_window = max(runs, key=lambda r: r.window_share)
    passed = sum(1 for r in runs if r.mean_ok and r.window_ok)
    base_mean = mean_rate(base_times) / BASELINE_LIMIT_PER_S
    base_window = max_in_any_window(base_times) / BASELINE_LIMIT_PER_S
    result = ScenarioResult(NAME)
    result.rows = [
        Row(NAME, f"lowest mean rate of {len(runs)} runs, first to last request",
            "share of limit", worst_mean.mean_share, base_mean, TARGET_MEAN_SHARE,
            why="; ".join(r.evidence() for r in runs if not r.mean_ok)),
        Row(NAME, f"fullest 1 s window of {len(runs)} runs", "share of limit",
            worst_window.window_share, base_window, TARGET_WINDOW_SHARE, better="lower",
            why="; ".join(r.evidence() for r in runs if not r.window_ok)),
        Row(NAME, "runs meeting both targets", "runs", passed, None, len(runs),
            baseline_text="", why=f"{len(runs) - passed} runs missed: see the table below"),
    ]  # fmt: skip
    result.notes = [
        f"smsq: SMSQ_RATE_LIMIT as in each run, defaults otherwise (SMSQ_RATE_HEADROOM 0.98, "
        f"SMSQ_MAX_IN_FLIGHT 128, SMSQ_BATCH_SIZE 100); a campaign of limit x "
        f"{sizes.rate_send_s:.0f} s of messages per run; mean = (requests - 1) / (last - first "
        f"arrival); windows slide, each starting at an arrival",
        f"lowest mean: {worst_mean.label()}; fullest window: {worst_window.label()}",
        f"baseline column: Celery's rate_limit='{BASELINE_LIMIT_PER_S}/s' on the naive task, "
        f"{BASELINE_WORKERS} workers of one process, simulator at 0 ms, cut at "
        f"{sizes.baseline_rate_max_s:.0f} s: Celery enforces it per worker, so the four send up "
        f"to {BASELINE_WORKERS * BASELINE_LIMIT_PER_S}/s together ({len(base_times):,} sent, "
        f"fullest window {max_in_any_window(base_times)})",
        "per run: unused slots = slots claim.lua saw go by unclaimed past its catch-up; late "
        f"claims = claim calls more than {LATE_CLAIM_S * 1000:.0f} ms after their reserved slot "
        "(smsq_claim_lateness_seconds); given back = claims answered too late to write "
        "(claims_given_back log lines); slow Redis = commands over 10 ms (SLOWLOG); CPU in "
        "cores over the run, others = the rest of the machine (other jobs on a shared host)",
    ]
    header = [
        "limit", "processes", "layout", "latency", "sent", "mean (msg/s)", "mean / limit",
        "fullest 1 s", "from (s)", "unused slots", "late claims", "given back", "longest gap (s)",
        "slow Redis", "CPU workers / sim / redis / others", "verdict",
    ]  # fmt: skip
    lines = [_cells(r) for r in runs]
    result.details = ["", *grid(header, lines)]
    result.data = {
        "runs": [
            {**asdict(r), "mean_share": r.mean_share, "window_share": r.window_share} for r in runs
        ]
    }
    return result


def _cells(r: Run) -> list[str]:
    return [
        f"{r.limit}/s", str(r.layout.total), r.layout.describe(), f"{r.latency_ms:.0f} ms",
        f"{r.sent:,}", f"{r.mean_per_s:.1f}", f"{r.mean_share:.3f}", str(r.max_window),
        f"+{r.fullest_at_s:.1f}", str(r.unused_slots), f"{r.late_claims} of {r.claims}",
        str(r.given_back), f"{r.longest_gap_s:.2f}", r.slow_redis, r.cpu, r.verdict,
    ]  # fmt: skip


def _send(
    bench: BenchStack,
    procs: list[Proc],
    limit: int,
    layout: Layout,
    latency_ms: float,
    count: int,
    prefix: str,
) -> Run:
    bench.configure_simulator(latency_ms=latency_ms)
    bench.reset_simulator()
    bench.forget_idle_slots()
    bench.reset_slowlog()
    claims_before, late_before = _claim_lateness(procs)
    tail = LogTail(procs)
    meter = CpuMeter(bench.pids())
    cid = bench.enqueue(count, prefix).campaign_id
    timeout_s = 2 * count / limit + 30
    if not bench.wait_posted(cid, timeout_s):
        raise RuntimeError(
            f"{limit}/s, {layout.describe()}, {latency_ms:.0f} ms: campaign not sent within "
            f"{timeout_s:.0f} s: {bench.counts(cid)}"
        )
    meter.stop()
    times = sorted(bench.arrivals())
    claims_after, late_after = _claim_lateness(procs)
    given_back = sum(
        int(e.get("messages", 0)) for e in tail.events() if e.get("event") == "claims_given_back"
    )
    gaps = [b - a for a, b in itertools.pairwise(times)]
    fullest, fullest_from = fullest_window(times)
    slow = bench.slow_commands()
    return Run(
        limit=limit,
        layout=layout,
        latency_ms=latency_ms,
        sent=len(times),
        mean_per_s=mean_rate(times),
        max_window=fullest,
        fullest_at_s=fullest_from - times[0] if times else 0.0,
        unused_slots=bench.rate_state().get("idle", 0),
        claims=int(claims_after - claims_before),
        late_claims=int(late_after - late_before),
        given_back=given_back,
        longest_gap_s=max(gaps, default=0.0),
        slow_redis=f"{len(slow)}, max {slow[0][0]:.0f} ms ({slow[0][1]})" if slow else "0",
        cpu=" / ".join(
            f"{meter.cores(part):.2f}" for part in ("workers", "simulator", "redis", "others")
        ),
    )


def _claim_lateness(procs: list[Proc]) -> tuple[float, float]:
    """Claim calls so far, and how many of them ran later than LATE_CLAIM_S after their
    reserved slot, summed over the workers' processes (smsq_claim_lateness_seconds)."""
    total = on_time = 0.0
    for proc in procs:
        for name, labels, value in metric_samples(proc.metrics_url):
            if name == "smsq_claim_lateness_seconds_count":
                total += value
            elif name == "smsq_claim_lateness_seconds_bucket" and labels.get("le") == str(
                LATE_CLAIM_S
            ):
                on_time += value
    return total, total - on_time


def _baseline(ctx: Context) -> list[float]:
    sizes = ctx.sizes
    count = round(BASELINE_WORKERS * BASELINE_LIMIT_PER_S * sizes.baseline_rate_max_s)
    with ctx.stack(f"{NAME}-baseline") as bench:
        bench.start_simulator(0.0)
        baseline.enqueue(bench.baseline_task(), SOURCE, TEXT, numbers(count))
        bench.baseline_workers(BASELINE_WORKERS, 1, rate_limit=f"{BASELINE_LIMIT_PER_S}/s")
        started = first_arrival(bench)

        def done() -> bool:
            bench.check_alive()
            return bool(bench.sim_stats()["accepted"] >= count)

        wait_until(done, started + sizes.baseline_rate_max_s - time.time(), poll_s=0.5)
        return [t for t in bench.arrivals() if t < started + sizes.baseline_rate_max_s]
