"""Idle is idle (issue 20, item 5): what the workers cost when there is little or nothing to do.

- **no work**: a worker that has sent a campaign and gone idle (nothing queued, nothing held):
  the CPU of each of its processes (the Celery main process with the supervisor thread, and
  every pool process with its sending engine) over `idle_quiet_s`, read from /proc; the row is
  the busiest process, in % of one core. Target: at most 1%.
- **pacing**: 8 pool processes (each layout of `idle_layouts`: one worker of 8, and 4 workers
  of 2 as on 4 hosts) sending a campaign at SMSQ_RATE_LIMIT=300, simulator at 0 ms: the CPU of
  every worker process together over a steady window after a warm-up, in cores. Target: at
  most 0.15 of a core. The same workers then go idle for the first row.
- **given back**: at SMSQ_RATE_LIMIT=10000 (the cpu scenario's setup: one worker of 2
  processes, simulator at 0 ms, defaults otherwise), the share of claimed messages given back
  unwritten because their claim call was answered too late (claims_given_back log lines, as
  the cpu and rate scenarios count them), of those given back and those accepted in the
  window. Target: at most 2%.

Nothing is scraped from the workers (Prometheus) during a measured window: the main process
serves the figures, and serving them costs CPU the rows would count.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ledger import keys
from ledger.rate import RateParams
from ledger.settings import DEFAULT_MAX_IN_FLIGHT
from ops.bench.harness import (
    BenchStack,
    Context,
    sleep_until,
    wait_until,
    window_rate,
    window_start,
)
from ops.bench.measure import CpuMeter, LogTail, descendants, metric_samples
from ops.bench.report import Row, ScenarioResult, grid
from ops.bench.sizes import Layout
from ops.stack import Proc

NAME = "idle"
TARGET_IDLE_PERCENT = 1.0
TARGET_PACING_CORES = 0.15
TARGET_GIVEN_BACK_SHARE = 0.02
PACING_LIMIT = 300
# The highest SMSQ_RATE_LIMIT settings accept, as in the cpu scenario.
FULL_SPEED_LIMIT = 10_000
FULL_SPEED_PROCESSES = 2
GIVEN_BACK = "claims_given_back"
# Seconds of sending the pacing campaign holds beyond the warm-up and the window.
CAMPAIGN_SPARE_S = 3.0


@dataclass
class Sent:
    """One measured window of sending, seen from outside the workers."""

    rate_per_s: float
    length_s: float
    accepted: int
    given_back: int
    cpu: CpuMeter
    logged: Counter[str]
    # Claim calls by how long each took: {upper bound of its smsq_claim_seconds bucket: calls}.
    claim_times: dict[float, int]
    # A claim call answered later than this is given back (Lane.stale_claim_s).
    stale_s: float
    # CPU seconds of the Celery main processes and of the pool processes over the window.
    main_s: float = 0.0
    pool_s: float = 0.0

    @property
    def claims(self) -> int:
        return sum(self.claim_times.values())

    def claim_spread(self) -> str:
        """How long the claim calls took: calls per bucket, the empty ones left out."""
        parts = []
        for le, n in self.claim_times.items():
            if n:
                bound = "over the last bucket" if le == float("inf") else f"<= {1000 * le:g} ms"
                parts.append(f"{bound} {n:,}")
        return ", ".join(parts) or "none"

    @property
    def claimed(self) -> int:
        """Messages claimed in the window: written (and accepted) or given back unwritten."""
        return self.accepted + self.given_back

    @property
    def given_back_share(self) -> float:
        return self.given_back / self.claimed if self.claimed else 0.0

    def messages_per_claim(self) -> float:
        return self.claimed / self.claims if self.claims else 0.0


@dataclass
class Idle:
    """CPU of each worker process over a window with nothing to send."""

    seconds: float
    # (process, % of one core), busiest first.
    processes: list[tuple[str, float]] = field(default_factory=list)
    sent_meanwhile: int = 0

    @property
    def busiest(self) -> tuple[str, float]:
        return self.processes[0] if self.processes else ("none", 0.0)

    def percent(self, kind: str) -> list[float]:
        return [p for name, p in self.processes if name.startswith(kind)]


@dataclass
class Pacing:
    layout: Layout
    sent: Sent
    idle: Idle


def run(ctx: Context) -> ScenarioResult:
    sizes = ctx.sizes
    pacing = [_pacing(ctx, layout) for layout in sizes.idle_layouts]
    full = _full_speed(ctx)

    worst_idle = max(pacing, key=lambda p: p.idle.busiest[1])
    worst_pacing = max(pacing, key=lambda p: p.sent.cpu.cores("workers"))
    idle_name, idle_percent = worst_idle.idle.busiest
    result = ScenarioResult(NAME)
    result.rows = [
        Row(NAME, "worker with no work, busiest process (after a campaign)", "% of a core",
            idle_percent, None, TARGET_IDLE_PERCENT, better="lower", baseline_text="",
            why=f"{idle_name} of {worst_idle.layout.describe()}; "
                + "; ".join(_idle_evidence(p) for p in pacing)),
        Row(NAME, f"CPU of 8 processes pacing {PACING_LIMIT}/s, all worker processes",
            "cores", worst_pacing.sent.cpu.cores("workers"), None, TARGET_PACING_CORES,
            better="lower", baseline_text="",
            why="; ".join(_pacing_evidence(p) for p in pacing)),
        Row(NAME, f"claimed messages given back unwritten at SMSQ_RATE_LIMIT={FULL_SPEED_LIMIT}",
            "share", full.given_back_share, None, TARGET_GIVEN_BACK_SHARE, better="lower",
            baseline_text="", why=_full_speed_evidence(full)),
    ]  # fmt: skip
    result.notes = [
        f"no work: each layout's workers after sending their {PACING_LIMIT}/s campaign to its "
        f"end, {sizes.idle_settle_s:g} s after the last answer was recorded, then "
        f"{sizes.idle_quiet_s:g} s measured per process from /proc (user + system time of "
        "every thread); nothing was sent or scraped meanwhile",
        f"pacing: SMSQ_RATE_LIMIT={PACING_LIMIT}, simulator at 0 ms, defaults otherwise "
        f"(SMSQ_MAX_IN_FLIGHT {DEFAULT_MAX_IN_FLIGHT}, log level INFO: one line per accepted "
        f"message); {sizes.idle_window_s:g} s measured after a {sizes.idle_warmup_s:g} s "
        "warm-up; workers = every Celery main and pool process",
        f"given back: SMSQ_RATE_LIMIT={FULL_SPEED_LIMIT}, one worker of "
        f"{FULL_SPEED_PROCESSES} processes, simulator at 0 ms, a campaign of "
        f"{sizes.send_campaign:,}, {sizes.send_window_s:g} s measured after a "
        f"{sizes.send_warmup_s:g} s warm-up; share = given back / (given back + accepted) "
        "in the window; a claim is given back when its call is answered later than 3/4 of the "
        "trunk's allowance (11.5 ms at the default headroom; docs/architecture.md §5)",
        *(_pacing_evidence(p) for p in pacing),
        *(_idle_evidence(p) for p in pacing),
        _full_speed_evidence(full),
    ]
    header = ["layout", "msg/s in window", "workers (cores)", "main / pool (cores)",
              "CPU per message (ms)",
              "claims/s", "messages per claim", "log lines/s", "idle: busiest (% core)",
              "idle: main processes (%)", "idle: pool processes (%)"]  # fmt: skip
    lines = []
    for p in pacing:
        s, length = p.sent, max(p.sent.cpu.elapsed_s, 1e-9)
        mains, pools = p.idle.percent("main"), p.idle.percent("pool")
        lines.append([
            p.layout.describe(), f"{s.rate_per_s:.1f}", f"{s.cpu.cores('workers'):.3f}",
            f"{s.main_s / length:.3f} / {s.pool_s / length:.3f}",
            f"{1000 * s.cpu.seconds.get('workers', 0.0) / max(1, s.accepted):.2f}",
            f"{s.claims / length:.0f}", f"{s.messages_per_claim():.2f}",
            f"{sum(s.logged.values()) / length:.0f}", f"{p.idle.busiest[1]:.2f}",
            _spread(mains), _spread(pools),
        ])  # fmt: skip
    result.details = ["", *grid(header, lines)]
    result.data = {
        "pacing": [
            {
                "layout": p.layout.describe(),
                "rate_per_s": p.sent.rate_per_s,
                "window_s": p.sent.length_s,
                "accepted": p.sent.accepted,
                "cpu_seconds": p.sent.cpu.seconds,
                "cpu_elapsed_s": p.sent.cpu.elapsed_s,
                "claims": p.sent.claims,
                "logged": p.sent.logged,
                "idle_seconds": p.idle.seconds,
                "idle_percent": dict(p.idle.processes),
                "idle_sent_meanwhile": p.idle.sent_meanwhile,
            }
            for p in pacing
        ],
        "full_speed": {
            "rate_per_s": full.rate_per_s,
            "window_s": full.length_s,
            "accepted": full.accepted,
            "given_back": full.given_back,
            "claim_times": {str(le): n for le, n in full.claim_times.items()},
            "cpu_seconds": full.cpu.seconds,
        },
    }
    return result


def _pacing(ctx: Context, layout: Layout) -> Pacing:
    """A campaign paced at PACING_LIMIT by the layout's workers, measured over a steady
    window; then, once it is sent and the workers are idle, their CPU with no work."""
    sizes = ctx.sizes
    name = f"{NAME}-{layout.workers}x{layout.processes}"
    with ctx.stack(name, SMSQ_RATE_LIMIT=str(PACING_LIMIT)) as bench:
        bench.start_simulator(0.0)
        procs = bench.smsq_workers(layout)
        seconds = sizes.idle_warmup_s + sizes.idle_window_s + CAMPAIGN_SPARE_S
        cid = bench.enqueue(max(2, round(PACING_LIMIT * seconds))).campaign_id
        sent = _window(bench, procs, sizes.idle_warmup_s, sizes.idle_window_s, PACING_LIMIT)
        timeout_s = 2 * seconds + 30
        if not bench.wait_posted(cid, timeout_s):
            raise RuntimeError(f"{name}: campaign not sent within {timeout_s:.0f} s")
        idle = _idle(bench, procs, sizes.idle_settle_s, sizes.idle_quiet_s)
    return Pacing(layout, sent, idle)


def _full_speed(ctx: Context) -> Sent:
    sizes = ctx.sizes
    with ctx.stack(f"{NAME}-full", SMSQ_RATE_LIMIT=str(FULL_SPEED_LIMIT)) as bench:
        bench.start_simulator(0.0)
        worker = bench.smsq_worker("w", FULL_SPEED_PROCESSES)
        bench.enqueue(sizes.send_campaign)
        return _window(bench, [worker], sizes.send_warmup_s, sizes.send_window_s, FULL_SPEED_LIMIT)


def _window(
    bench: BenchStack, procs: list[Proc], warmup_s: float, window_s: float, limit: int
) -> Sent:
    """One window of sending: CPU meters and the log tail started at its beginning, read at
    its end; the workers' claim counters read just before and after it, never during."""
    start = window_start(bench, warmup_s)
    claims_before = _claim_calls(procs)
    accepted_before = int(bench.sim_stats()["accepted"])
    tail = LogTail(procs)
    members = _members(procs)
    own_before = {pid: _own_seconds(pid) for pid in members}
    meter = CpuMeter(bench.pids())
    end = start + window_s
    sleep_until(bench, end)
    meter.stop()
    own = {pid: _own_seconds(pid) - own_before[pid] for pid in members}
    accepted = int(bench.sim_stats()["accepted"]) - accepted_before
    events = tail.events()
    claims = _claim_calls(procs)
    claims.subtract(claims_before)
    given_back = sum(int(e.get("messages", 0)) for e in events if e.get("event") == GIVEN_BACK)
    logged = Counter(str(e.get("event")) for e in events)
    sleep_until(bench, end + 0.5)
    rate, length_s = window_rate(bench, start, end)
    return Sent(
        rate_per_s=rate,
        length_s=length_s,
        accepted=accepted,
        given_back=given_back,
        cpu=meter,
        logged=logged,
        claim_times={le: int(n) for le, n in sorted(claims.items())},
        main_s=sum(t for pid, t in own.items() if members[pid].startswith("main")),
        pool_s=sum(t for pid, t in own.items() if members[pid].startswith("pool")),
        stale_s=_stale_s(bench, limit),
    )


def _idle(bench: BenchStack, procs: list[Proc], settle_s: float, quiet_s: float) -> Idle:
    """Each worker process's CPU over quiet_s with nothing to send, settle_s after the last
    answer of the campaign was recorded (its batches finished, their entries forgotten)."""
    wait_until(lambda: not bench.redis.hlen(keys.inflight()), 30.0)
    sleep_until(bench, time.time() + settle_s)
    members = _members(procs)
    accepted_before = int(bench.sim_stats()["accepted"])
    before = {pid: _own_seconds(pid) for pid in members}
    began = time.monotonic()
    sleep_until(bench, time.time() + quiet_s)
    after = {pid: _own_seconds(pid) for pid in members}
    elapsed = time.monotonic() - began
    sent = int(bench.sim_stats()["accepted"]) - accepted_before
    percent = [
        (f"{members[pid]} (pid {pid})", 100 * (after[pid] - before[pid]) / elapsed)
        for pid in members
    ]
    percent.sort(key=lambda item: item[1], reverse=True)
    return Idle(elapsed, percent, sent)


def _members(procs: list[Proc]) -> dict[int, str]:
    """Each worker's processes by pid: its Celery main process and its pool processes."""
    members: dict[int, str] = {}
    for n, proc in enumerate(procs):
        assert proc.popen is not None
        members[proc.popen.pid] = f"main {n}"
        for k, pid in enumerate(sorted(descendants(proc.popen.pid))):
            members[pid] = f"pool {n}.{k}"
    return members


def _own_seconds(pid: int) -> float:
    """CPU time (user and system, every thread) of one process, without its children, from
    /proc/PID/stat (Linux); 0 if it is gone."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def _stale_s(bench: BenchStack, limit: int) -> float:
    """How late a claim call's answer may come before the engine gives its messages back
    (worker.batches.Lane.stale_claim_s, not imported: it would load the worker here)."""
    rate = RateParams.of(limit, bench.settings().rate_headroom)
    return max(0.01, 0.75 * rate.allowance_us / 1_000_000)


def _claim_calls(procs: list[Proc]) -> Counter[float]:
    """Claim calls so far by how long each took, summed over the workers: the count of
    calls in each bucket of smsq_claim_seconds (its upper bound in seconds; inf for the
    rest)."""
    cumulative: Counter[float] = Counter()
    for proc in procs:
        for name, labels, value in metric_samples(proc.metrics_url):
            if name == "smsq_claim_seconds_bucket" and "le" in labels:
                cumulative[float(labels["le"])] += value
    calls: Counter[float] = Counter()
    below = 0.0
    for le in sorted(cumulative):
        calls[le] = cumulative[le] - below
        below = cumulative[le]
    return calls


def _spread(values: list[float]) -> str:
    if not values:
        return ""
    return f"{min(values):.2f} to {max(values):.2f}"


def _pacing_evidence(p: Pacing) -> str:
    s = p.sent
    return (
        f"pacing, {p.layout.describe()}: {s.rate_per_s:.1f} msg/s over {s.length_s:.1f} s, "
        f"worker CPU {s.cpu.cores('workers'):.3f} cores "
        f"({1000 * s.cpu.seconds.get('workers', 0.0) / max(1, s.accepted):.2f} ms per "
        f"message; main processes {s.main_s / s.cpu.elapsed_s:.3f}, pool processes "
        f"{s.pool_s / s.cpu.elapsed_s:.3f}), {s.claims:,} claim calls "
        f"({s.messages_per_claim():.2f} messages each), "
        f"{sum(s.logged.values()):,} log lines, {s.given_back} given back; {s.cpu.describe()}"
    )


def _idle_evidence(p: Pacing) -> str:
    i = p.idle
    mains, pools = i.percent("main"), i.percent("pool")
    return (
        f"no work, {p.layout.describe()}: over {i.seconds:.1f} s the busiest process "
        f"{i.busiest[0]} used {i.busiest[1]:.2f}% of a core; main processes "
        f"{_spread(mains)}%, pool processes {_spread(pools)}%; {i.sent_meanwhile} sent meanwhile"
    )


def _full_speed_evidence(s: Sent) -> str:
    return (
        f"full speed: {s.rate_per_s:,.0f} msg/s over {s.length_s:.1f} s, {s.accepted:,} accepted "
        f"and {s.given_back:,} given back ({100 * s.given_back_share:.1f}% of claimed); "
        f"{s.claims:,} claim calls ({s.messages_per_claim():.1f} messages each), given back "
        f"when answered after {1000 * s.stale_s:.1f} ms; claim call times: {s.claim_spread()}; "
        f"{s.cpu.describe()}"
    )
