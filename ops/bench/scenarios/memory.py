"""Worker resident memory grows by less than 50 MB over a 1,000,000-message
campaign against the simulator at 0 ms.

RSS is read from /proc for the worker and its pool processes together, once a
second. A run cut short by its time budget projects the growth seen per message to the
whole campaign, and says so.
"""

from __future__ import annotations

import time

from ops.bench.harness import Context
from ops.bench.measure import rss_bytes
from ops.bench.report import Row, ScenarioResult
from ops.bench.scenarios.sending import PROCESSES, SETUP, describe

NAME = "memory"
TARGET_GROWTH_MB = 50.0
# The first samples include imports, connection pools and caches filling: not growth.
WARMUP_SHARE = 0.05
MB = 1024 * 1024


def run(ctx: Context) -> ScenarioResult:
    sizes = ctx.sizes
    count = sizes.memory_messages
    samples: list[tuple[float, int, int]] = []
    with ctx.stack(NAME, **SETUP) as bench:
        bench.start_simulator(0.0)
        worker = bench.smsq_worker("w", PROCESSES)
        assert worker.popen is not None
        bench.enqueue(count)
        began = time.monotonic()
        while True:
            bench.check_alive()
            sent = int(bench.sim_stats()["accepted"])
            samples.append((time.monotonic() - began, sent, rss_bytes(worker.popen.pid)))
            if sent >= count or time.monotonic() - began > sizes.memory_max_s:
                break
            time.sleep(1.0)

    elapsed_s, sent, _ = samples[-1]
    settled = [s for s in samples if s[1] >= WARMUP_SHARE * sent] or samples
    start_rss, end_rss = settled[0][2], settled[-1][2]
    peak_rss = max(s[2] for s in settled)
    growth_mb = (peak_rss - start_rss) / MB
    measured_over = sent - settled[0][1]
    complete = sent >= count
    figure = f"worker RSS growth over {count:,} messages"
    slope = _trend_bytes_per_message(settled[len(settled) // 2 :])
    if complete or measured_over <= 0:
        value = growth_mb
    else:
        # What grew so far, plus the recent trend carried over the messages not yet sent.
        value = growth_mb + max(0.0, slope) * (count - sent) / MB
        figure += " (projected)"
    result = ScenarioResult(NAME)
    result.rows = [
        Row(NAME, figure, "MB", value, None, TARGET_GROWTH_MB, better="lower",
            baseline_text="not measured"),
    ]  # fmt: skip
    result.notes = [
        f"smsq: {describe()}; simulator at 0 ms",
        f"sent {sent:,} of {count:,} in {elapsed_s:.0f} s"
        + ("" if complete else f" (stopped at the {sizes.memory_max_s:.0f} s budget)"),
        f"RSS of the worker and its {PROCESSES} pool processes: start {start_rss / MB:.1f} MB "
        f"(after {settled[0][1]:,} messages), peak {peak_rss / MB:.1f} MB, end "
        f"{end_rss / MB:.1f} MB; growth (peak - start) {growth_mb:.1f} MB over "
        f"{measured_over:,} messages",
    ]
    if not complete:
        result.notes.append(
            f"projection: the RSS trend over the second half of the samples, "
            f"{slope:.1f} bytes per message, carried over the {count - sent:,} messages not sent"
        )
    return result


def _trend_bytes_per_message(samples: list[tuple[float, int, int]]) -> float:
    """Least-squares slope of RSS against messages sent."""
    if len(samples) < 2:
        return 0.0
    xs = [float(s[1]) for s in samples]
    ys = [float(s[2]) for s in samples]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if not spread:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread
