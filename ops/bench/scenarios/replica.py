"""What waiting for a replica costs (docs/reliability.md, "Failover"): the same campaigns sent
at 300/s with no replica (SMSQ_REDIS_MIN_REPLICAS=0, nothing waits) and with a replica that
every claim, record, hold, park and callback waits for (SMSQ_REDIS_MIN_REPLICAS=1: Redis WAIT
in the same round trip). The rate targets must hold with the wait (mean at least 0.97 of the
limit, no one-second window over); the note gives the workers' CPU per message and the claim
call's time (smsq_claim_seconds) both ways.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ops.bench.harness import BenchStack, Context
from ops.bench.measure import CpuMeter, fullest_window, mean_rate, metric_samples
from ops.bench.report import Row, ScenarioResult, grid
from ops.bench.sizes import Layout
from ops.stack import Proc

NAME = "replica"
LIMIT_PER_S = 300
TARGET_MEAN_SHARE = 0.97
TARGET_WINDOW_SHARE = 1.0
LAYOUT = Layout(2, 2)
MODES = {"no replica, no wait": 0, "replica, WAIT 1": 1}


@dataclass
class Run:
    mode: str
    latency_ms: float
    sent: int
    mean_per_s: float
    max_window: int
    cpu_ms_per_message: float
    redis_cores: float
    replica_cores: float
    claims: int
    claim_mean_ms: float
    claim_p99_ms: float
    not_replicated: int

    @property
    def mean_share(self) -> float:
        return self.mean_per_s / LIMIT_PER_S

    @property
    def window_share(self) -> float:
        return self.max_window / LIMIT_PER_S

    @property
    def ok(self) -> bool:
        return self.mean_share >= TARGET_MEAN_SHARE and self.window_share <= TARGET_WINDOW_SHARE


def run(ctx: Context) -> ScenarioResult:
    sizes = ctx.sizes
    runs: list[Run] = []
    for mode, wanted in MODES.items():
        name = f"{NAME}-{wanted}"
        settings = {"SMSQ_RATE_LIMIT": str(LIMIT_PER_S), "SMSQ_REDIS_MIN_REPLICAS": str(wanted)}
        with ctx.stack(name, **settings) as bench:
            if wanted:
                bench.add_replica()
            bench.start_simulator(0.0)
            procs = bench.smsq_workers(LAYOUT)
            for latency_ms in sizes.rate_latencies_ms:
                count = max(2, round(LIMIT_PER_S * sizes.rate_send_s))
                prefix = f"48{len(runs):02d}"
                runs.append(_send(bench, procs, mode, latency_ms, count, prefix))

    waited = [r for r in runs if r.mode != next(iter(MODES))]
    worst_mean = min(waited, key=lambda r: r.mean_share)
    worst_window = max(waited, key=lambda r: r.window_share)
    plain = [r for r in runs if r not in waited]

    def avg(rs: list[Run], field: str) -> float:
        return sum(getattr(r, field) for r in rs) / len(rs) if rs else 0.0

    result = ScenarioResult(NAME)
    result.rows = [
        Row(NAME, f"lowest mean rate with WAIT, {LIMIT_PER_S}/s", "share of limit",
            worst_mean.mean_share, min(r.mean_share for r in plain), TARGET_MEAN_SHARE,
            why=_evidence(worst_mean)),
        Row(NAME, f"fullest 1 s window with WAIT, {LIMIT_PER_S}/s", "share of limit",
            worst_window.window_share, max(r.window_share for r in plain),
            TARGET_WINDOW_SHARE, better="lower", why=_evidence(worst_window)),
        Row(NAME, "worker CPU per message with WAIT (without in the baseline column)", "ms",
            avg(waited, "cpu_ms_per_message"), avg(plain, "cpu_ms_per_message"),
            baseline_text=""),
        Row(NAME, "claim call, mean, with WAIT (without in the baseline column)", "ms",
            avg(waited, "claim_mean_ms"), avg(plain, "claim_mean_ms"), baseline_text=""),
    ]  # fmt: skip
    result.notes = [
        f"the baseline column here is smsq itself without a replica and without waiting "
        f"(SMSQ_REDIS_MIN_REPLICAS=0); {LAYOUT.describe()}, SMSQ_RATE_LIMIT={LIMIT_PER_S}, a "
        f"campaign of {LIMIT_PER_S} x {sizes.rate_send_s:g} s of messages per run; the "
        "replica on the same machine (loopback): a replica across a network adds its round "
        "trip to every claim",
        "claim call = smsq_claim_seconds (ask to answer, WAIT included); p99 from its "
        "histogram's buckets; CPU per message = the workers' CPU seconds over the run / "
        "messages sent",
    ]
    header = [
        "mode", "latency", "sent", "mean / limit", "fullest 1 s", "worker CPU / msg (ms)",
        "redis / replica (cores)", "claims", "claim mean (ms)", "claim p99 (ms)",
        "not replicated", "verdict",
    ]  # fmt: skip
    result.details = ["", *grid(header, [_cells(r) for r in runs])]
    result.data = {"runs": [asdict(r) for r in runs]}
    return result


def _evidence(r: Run) -> str:
    return (
        f"{r.mode}, {r.latency_ms:.0f} ms: mean {r.mean_per_s:.1f}/s, fullest window "
        f"{r.max_window}, claim mean {r.claim_mean_ms:.2f} ms (p99 {r.claim_p99_ms:.1f} ms), "
        f"{r.not_replicated} claims not replicated"
    )


def _cells(r: Run) -> list[str]:
    return [
        r.mode, f"{r.latency_ms:.0f} ms", f"{r.sent:,}", f"{r.mean_share:.3f}",
        str(r.max_window), f"{r.cpu_ms_per_message:.3f}",
        f"{r.redis_cores:.2f} / {r.replica_cores:.2f}", f"{r.claims:,}",
        f"{r.claim_mean_ms:.2f}", f"{r.claim_p99_ms:.1f}", str(r.not_replicated),
        "PASS" if r.ok else "MISS",
    ]  # fmt: skip


def _send(
    bench: BenchStack, procs: list[Proc], mode: str, latency_ms: float, count: int, prefix: str
) -> Run:
    bench.configure_simulator(latency_ms=latency_ms)
    bench.reset_simulator()
    bench.forget_idle_slots()
    before = ClaimFigures.read(procs)
    meter = CpuMeter(bench.pids())
    cid = bench.enqueue(count, prefix).campaign_id
    timeout_s = 2 * count / LIMIT_PER_S + 30
    if not bench.wait_posted(cid, timeout_s):
        raise RuntimeError(f"{mode}, {latency_ms:.0f} ms: not sent in {timeout_s:.0f} s")
    meter.stop()
    after = ClaimFigures.read(procs)
    times = sorted(bench.arrivals())
    fullest, _ = fullest_window(times)
    claims = after.count - before.count
    buckets = {le: n - before.buckets.get(le, 0.0) for le, n in after.buckets.items()}
    return Run(
        mode=mode,
        latency_ms=latency_ms,
        sent=len(times),
        mean_per_s=mean_rate(times),
        max_window=fullest,
        cpu_ms_per_message=1000 * meter.seconds.get("workers", 0.0) / max(len(times), 1),
        redis_cores=meter.cores("redis"),
        replica_cores=meter.cores("replica"),
        claims=int(claims),
        claim_mean_ms=1000 * (after.total - before.total) / claims if claims else 0.0,
        claim_p99_ms=1000 * _quantile(buckets, claims, 0.99),
        not_replicated=int(after.not_replicated - before.not_replicated),
    )


@dataclass
class ClaimFigures:
    """smsq_claim_seconds (count, sum, cumulative buckets) and smsq_claims_not_replicated,
    summed over the workers' processes."""

    count: float = 0.0
    total: float = 0.0
    not_replicated: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)

    @classmethod
    def read(cls, procs: list[Proc]) -> ClaimFigures:
        found = cls()
        for proc in procs:
            for name, labels, value in metric_samples(proc.metrics_url):
                if name == "smsq_claim_seconds_count":
                    found.count += value
                elif name == "smsq_claim_seconds_sum":
                    found.total += value
                elif name == "smsq_claim_seconds_bucket":
                    le = float(labels["le"])
                    found.buckets[le] = found.buckets.get(le, 0.0) + value
                elif name == "smsq_claims_not_replicated_total":
                    found.not_replicated += value
        return found


def _quantile(buckets: dict[float, float], count: float, q: float) -> float:
    """The upper bound of the first histogram bucket holding the q-th share of the calls."""
    for le in sorted(buckets):
        if count and buckets[le] >= q * count:
            return le
    return float("inf")
