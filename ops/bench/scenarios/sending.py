"""Targets 2 and 3: sending with no rate limit in the way (SMSQ_RATE_LIMIT=10000, the highest
allowed), two worker processes (one worker, --concurrency 2), every other setting at its
default, per-message logging on (INFO).

cpu (0 ms): at least twice the naive baseline's messages per second on the same cores, and at
most two Redis round trips per accepted message (EVALSHA and EVAL calls, from Redis's own
INFO commandstats over the measured window, CONFIG RESETSTAT at its start).
latency (200 ms): at least 1,000 messages per second, and at least 0.9 of what the in-flight
ceiling allows (2 x SMSQ_MAX_IN_FLIGHT / 0.2 s).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ledger.settings import DEFAULT_MAX_IN_FLIGHT
from ops.bench import baseline, profile
from ops.bench.harness import (
    SOURCE,
    TEXT,
    BenchStack,
    Context,
    numbers,
    sleep_until,
    window_rate,
    window_start,
)
from ops.bench.measure import CpuMeter, LogTail, metric_total
from ops.bench.report import Row, ScenarioResult
from ops.bench.sizes import Sizes
from ops.stack import Proc

PROCESSES = 2
# The highest SMSQ_RATE_LIMIT settings accept: "no rate limit" for these scenarios.
NO_LIMIT = "10000"
# The only setting these scenarios change: everything else is smsq's default.
SETUP = {"SMSQ_RATE_LIMIT": NO_LIMIT}
LATENCY_MS = 200.0
TARGET_LATENCY_RATE = 1_000
TARGET_IN_FLIGHT_SHARE = 0.9
TARGET_CPU_SPEEDUP = 2.0
TARGET_ROUND_TRIPS = 2.0
SCRIPT_COMMANDS = ("evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "fcall_ro")
# What the baseline can do in each (measured): tasks enough to outlast its window.
BASELINE_LATENCY_PER_S = 10
BASELINE_CPU_PER_S = 900
# py-spy samples this long (at most) once the window is measured.
PROFILE_S = 10.0
# Commands listed per accepted message in the notes.
TOP_COMMANDS = 8
GIVEN_BACK = "claims_given_back"


def describe() -> str:
    return (
        f"{PROCESSES} processes (one worker, --concurrency {PROCESSES}), "
        f"SMSQ_RATE_LIMIT={NO_LIMIT} (the highest allowed), every other setting at its default "
        f"(SMSQ_MAX_IN_FLIGHT {DEFAULT_MAX_IN_FLIGHT}, SMSQ_BATCH_SIZE 100, log level INFO)"
    )


@dataclass
class Window:
    """What one measured window of sending saw, from outside the processes."""

    rate_per_s: float
    length_s: float
    accepted: int
    commands: Counter[str]
    cpu: CpuMeter
    in_flight: list[float] = field(default_factory=list)
    logged: Counter[str] = field(default_factory=Counter)
    # Messages claimed by a call answered too late, put back unwritten (claims_given_back).
    given_back: int = 0
    profile: list[str] = field(default_factory=list)

    @property
    def round_trips(self) -> float:
        return sum(self.commands[c] for c in SCRIPT_COMMANDS) / max(1, self.accepted)

    @property
    def commands_per_message(self) -> float:
        return sum(self.commands.values()) / max(1, self.accepted)

    def cpu_ms_per_message(self, part: str = "workers") -> float:
        return 1000 * self.cpu.seconds.get(part, 0.0) / max(1, self.accepted)

    def top_commands(self) -> str:
        per = self.accepted or 1
        return ", ".join(f"{c} {n / per:.2f}" for c, n in self.commands.most_common(TOP_COMMANDS))

    @property
    def mean_in_flight(self) -> float:
        return sum(self.in_flight) / len(self.in_flight) if self.in_flight else 0.0


def run_cpu(ctx: Context) -> ScenarioResult:
    result = ScenarioResult("cpu")
    smsq = _smsq(ctx, "cpu", 0.0)
    base = _baseline(ctx, "cpu-baseline", 0.0, BASELINE_CPU_PER_S)
    speedup = smsq.rate_per_s / base.rate_per_s if base.rate_per_s else 0.0
    cpu_note = (
        f"smsq {smsq.cpu.describe()}; baseline {base.cpu.describe()}; smsq workers "
        f"{smsq.cpu_ms_per_message():.2f} ms CPU per message, the baseline's "
        f"{base.cpu_ms_per_message():.2f} ms"
    )
    result.rows = [
        Row("cpu", "messages per second at 0 ms", "msg/s", smsq.rate_per_s, base.rate_per_s,
            TARGET_CPU_SPEEDUP * base.rate_per_s,
            why=f"{speedup:.2f}x the baseline; {smsq.given_back:,} claimed messages given back "
                f"unwritten (claim answered too late) beside {smsq.accepted:,} accepted; "
                f"{cpu_note}"),
        Row("cpu", "Redis round trips per accepted message (EVALSHA/EVAL)", "calls",
            smsq.round_trips, None, TARGET_ROUND_TRIPS, better="lower",
            baseline_text="no scripts",
            why=f"per accepted message: {smsq.top_commands()}"),
        Row("cpu", "Redis commands per accepted message, inside scripts too", "commands",
            smsq.commands_per_message, base.commands_per_message),
        Row("cpu", "worker CPU per message", "ms", smsq.cpu_ms_per_message(),
            base.cpu_ms_per_message()),
    ]  # fmt: skip
    result.notes = [
        f"smsq: {describe()}; simulator at 0 ms",
        f"baseline: {PROCESSES} prefork processes, no rate limit; target is "
        f"{TARGET_CPU_SPEEDUP:.0f}x its rate; both share the {os.cpu_count()} cores with the "
        "simulator and redis-server",
        f"smsq measured over {smsq.length_s:.1f} s after a {ctx.sizes.send_warmup_s:.0f} s "
        f"warm-up: {smsq.accepted:,} accepted; the baseline over {base.length_s:.1f} s: "
        f"{base.accepted:,}",
        f"Redis commands per accepted message, smsq: {smsq.top_commands()} (commands run by "
        f"scripts counted as their own; CONFIG and INFO of the benchmark left out)",
        f"Redis commands per message, baseline: {base.top_commands()}",
        cpu_note,
        f"worker log lines in the window: {_logged(smsq.logged)}; {smsq.given_back:,} claimed "
        "messages given back unwritten",
        *smsq.profile,
    ]
    return result


def run_latency(ctx: Context) -> ScenarioResult:
    result = ScenarioResult("latency")
    smsq = _smsq(ctx, "latency", LATENCY_MS)
    base = _baseline(ctx, "latency-baseline", LATENCY_MS, BASELINE_LATENCY_PER_S)
    ceiling = PROCESSES * DEFAULT_MAX_IN_FLIGHT / (LATENCY_MS / 1000)
    base_ceiling = PROCESSES / (LATENCY_MS / 1000)
    why = (
        f"{smsq.mean_in_flight:.0f} requests in flight on average (samples of "
        f"smsq_in_flight_requests: {', '.join(f'{x:.0f}' for x in smsq.in_flight)}) of "
        f"{PROCESSES * DEFAULT_MAX_IN_FLIGHT} allowed; {smsq.given_back:,} claimed messages "
        f"given back unwritten (their claim call answered too late) of {smsq.accepted:,} "
        f"accepted; {smsq.cpu.describe()}"
    )
    result.rows = [
        Row("latency", "messages per second at 200 ms", "msg/s", smsq.rate_per_s,
            base.rate_per_s, TARGET_LATENCY_RATE, why=why),
        Row("latency", "share of the in-flight ceiling", "share", smsq.rate_per_s / ceiling,
            base.rate_per_s / base_ceiling, TARGET_IN_FLIGHT_SHARE, why=why),
    ]  # fmt: skip
    result.notes = [
        f"smsq: {describe()}; ceiling {PROCESSES} x {DEFAULT_MAX_IN_FLIGHT} / 0.2 s = "
        f"{ceiling:,.0f}/s",
        f"baseline: {PROCESSES} prefork processes, one synchronous request each: ceiling "
        f"{base_ceiling:.0f}/s",
        f"smsq measured over {smsq.length_s:.1f} s after a {ctx.sizes.send_warmup_s:.0f} s "
        f"warm-up; mean in flight {smsq.mean_in_flight:.0f} (Little's law: "
        f"{smsq.mean_in_flight / (LATENCY_MS / 1000):,.0f}/s); {smsq.cpu.describe()}",
        f"worker log lines in the window: {_logged(smsq.logged)}",
        *smsq.profile,
    ]
    return result


def _smsq(ctx: Context, name: str, latency_ms: float) -> Window:
    sizes = ctx.sizes
    with ctx.stack(name, **SETUP) as bench:
        bench.start_simulator(latency_ms)
        worker = bench.smsq_worker("w", PROCESSES)
        bench.enqueue(sizes.send_campaign)
        window = _measure(bench, [worker], sizes.send_warmup_s, sizes.send_window_s)
        if ctx.profile_dir is not None and worker.popen is not None:
            # After the window, so py-spy's sampling does not slow what is measured.
            window.profile = _profile(
                ctx.profile_dir / f"{name}-worker.txt", worker.popen.pid, sizes
            )
    return window


def _measure(
    bench: BenchStack, smsq_workers: list[Proc], warmup_s: float, window_s: float
) -> Window:
    """One window of sending: Redis's command counters zeroed and the CPU meters started at
    its beginning, read at its end; the in-flight gauge sampled every second."""
    start = window_start(bench, warmup_s)
    bench.reset_commandstats()
    accepted_before = int(bench.sim_stats()["accepted"])
    meter = CpuMeter(bench.pids())
    tail = LogTail(smsq_workers)
    in_flight: list[float] = []

    def sample() -> None:
        if smsq_workers:
            in_flight.append(metric_total(smsq_workers, "smsq_in_flight_requests"))

    end = start + window_s
    sleep_until(bench, end, sample if smsq_workers else None)
    commands = bench.commandstats()
    accepted = int(bench.sim_stats()["accepted"]) - accepted_before
    meter.stop()
    events = tail.events() if smsq_workers else []
    logged = Counter(str(e.get("event")) for e in events)
    given_back = sum(int(e.get("messages", 0)) for e in events if e.get("event") == GIVEN_BACK)
    sleep_until(bench, end + 0.5)
    rate, length_s = window_rate(bench, start, end)
    return Window(rate, length_s, accepted, commands, meter, in_flight, logged, given_back)


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


def _baseline(ctx: Context, name: str, latency_ms: float, expected_per_s: float) -> Window:
    sizes = ctx.sizes
    tasks = int(expected_per_s * (sizes.send_warmup_s + sizes.baseline_send_window_s) * 1.5) + 20
    with ctx.stack(name) as bench:
        bench.start_simulator(latency_ms)
        baseline.enqueue(bench.baseline_task(), SOURCE, TEXT, numbers(tasks))
        bench.baseline_worker("b", PROCESSES)
        return _measure(bench, [], sizes.send_warmup_s, sizes.baseline_send_window_s)


def _logged(counts: Counter[str]) -> str:
    wanted = ("message_accepted", "batch_taken", "batch_done", GIVEN_BACK)
    return ", ".join(f"{name} {counts.get(name, 0):,}" for name in wanted)
