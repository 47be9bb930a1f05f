"""Extra row: smsq's limiter (worker/limiter.py, GCRA slots in Redis) against the `limits`
library's moving window on the same Redis, four processes sharing a limit of 100/s.

No HTTP: each grant is the moment a request would go, so only the limiter is measured.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time

from ops.bench.harness import Context, mean_rate
from ops.bench.report import Row, ScenarioResult
from ops.stack import max_in_any_window

NAME = "limiter"
PROCESSES = 4
LIMIT_PER_S = 100
TARGET_MAX_WINDOW = 102
TARGET_MEAN = 97
# Every process starts at the same instant, once all have imported (about 0.5 s each on
# 2 busy cores).
START_DELAY_S = 1.2


def run(ctx: Context) -> ScenarioResult:
    installed = importlib.util.find_spec("limits") is not None
    with ctx.stack(NAME) as bench:
        smsq, smsq_cpu = _probe("smsq", bench.url, ctx.sizes.limiter_duration_s)
        lib, lib_cpu = (
            _probe("limits", bench.url, ctx.sizes.limiter_duration_s) if installed else ([], 0.0)
        )
    missing = "" if installed else "not installed"
    result = ScenarioResult(NAME)
    result.rows = [
        Row(NAME, "most grants in any 1 s window", "req", max_in_any_window(smsq),
            max_in_any_window(lib), TARGET_MAX_WINDOW, better="lower", baseline_text=missing),
        Row(NAME, "mean grants per second", "req/s", mean_rate(smsq), mean_rate(lib),
            TARGET_MEAN, baseline_text=missing),
        Row(NAME, "client CPU per grant", "ms", 1000 * smsq_cpu / max(1, len(smsq)),
            1000 * lib_cpu / max(1, len(lib)), baseline_text=missing),
    ]  # fmt: skip
    result.notes = [
        f"baseline column: the `limits` library, MovingWindowRateLimiter on the same Redis, "
        f"'{LIMIT_PER_S}/second'; a refused caller sleeps 10 ms and asks again",
        *([] if installed else ["`limits` is not installed: pip install -e '.[bench]'"]),
        f"{PROCESSES} processes x 20 waiters each for {ctx.sizes.limiter_duration_s:.0f} s; "
        f"smsq's limiter set to the limit itself (no headroom), as `limits` is",
    ]
    return result


def _probe(kind: str, url: str, duration_s: float) -> tuple[list[float], float]:
    start_at = time.time() + START_DELAY_S
    argv = [
        sys.executable, "-m", "ops.bench.limiter_probe", kind, url,
        "--rate", str(LIMIT_PER_S), "--duration-s", str(duration_s), "--start-at", str(start_at),
    ]  # fmt: skip
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(PROCESSES)]
    grants: list[float] = []
    cpu_s = 0.0
    for proc in procs:
        out, _ = proc.communicate(timeout=duration_s + START_DELAY_S + 60)
        if proc.returncode != 0:
            raise RuntimeError(f"limiter probe ({kind}) exited {proc.returncode}")
        document = json.loads(out)
        grants += document["grants"]
        cpu_s += document["cpu_s"]
    return grants, cpu_s
