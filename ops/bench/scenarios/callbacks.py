"""The callback ingester answers at least half the requests per second of a bare
Starlette endpoint that parses the same JSON, and at least 3,000 callbacks per second.

Both run under uvicorn with the same flags, one process each, measured by the same load
tool (ops/bench/load.py) in its own process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from ops.bench.harness import Context
from ops.bench.measure import CpuMeter
from ops.bench.report import Row, ScenarioResult
from ops.stack import START_TIMEOUT_S, Proc, free_port, wait_for

NAME = "callbacks"
TARGET_PER_S = 3_000
TARGET_SHARE = 0.5


def run(ctx: Context) -> ScenarioResult:
    sizes = ctx.sizes
    with ctx.stack(NAME) as bench:
        bench.stack.start_callbacks()
        token = bench.settings_env["SMSQ_CALLBACK_TOKEN"]
        meter = CpuMeter(bench.pids())
        ingest = _load(f"{bench.stack.callbacks_url}/callbacks?token={token}", ctx)
        meter.stop()
        kept = int(bench.server.client().hget("smsq:stats", "orphans_kept") or 0)
        assert bench.stack.callbacks is not None
        # One server at a time: the two must not share the cores.
        bench.stack.callbacks.stop()
        bare = _bare(ctx.folder(NAME))
        try:
            bare_result = _load(f"{bare[1]}/callbacks", ctx)
        finally:
            bare[0].stop()
    ingest_rate, bare_rate = float(ingest["per_s"]), float(bare_result["per_s"])
    result = ScenarioResult(NAME)
    why = (
        f"while loaded (warm-up included): the ingester {meter.cores('ingester'):.2f} cores, "
        f"redis-server {meter.cores('redis'):.2f}, the load tool and the rest of the machine "
        f"{meter.cores('others'):.2f} (of {os.cpu_count()})"
    )
    result.rows = [
        Row(NAME, "callbacks answered per second", "req/s", ingest_rate, bare_rate, TARGET_PER_S,
            baseline_text=f"{bare_rate:,.0f} (bare)", why=why),
        Row(NAME, "share of the bare endpoint's rate", "share", ingest_rate / bare_rate, 1.0,
            TARGET_SHARE, why=why),
    ]  # fmt: skip
    result.notes = [
        f"load: ops/bench/load.py, {sizes.callback_connections} keep-alive connections, "
        f"{sizes.callback_duration_s:.0f} s after a {sizes.callback_warmup_s:.0f} s warm-up; "
        "valid callbacks for ids never sent, each kept as an orphan (the fullest write path)",
        f"ingester (python -m callbacks): {ingest['ok']:,} answered 2xx, "
        f"{ingest['errors']:,} not; {kept:,} orphans stored in Redis",
        f"baseline column: a bare Starlette endpoint (ops/bench/bare_app.py) that json-parses "
        f"the body and answers 200, same uvicorn flags: {bare_result['ok']:,} answered",
    ]
    return result


def _load(url: str, ctx: Context) -> dict[str, Any]:
    sizes = ctx.sizes
    argv = [
        sys.executable, "-m", "ops.bench.load", url,
        "--duration-s", str(sizes.callback_duration_s),
        "--connections", str(sizes.callback_connections),
        "--warmup-s", str(sizes.callback_warmup_s),
    ]  # fmt: skip
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=sizes.callback_duration_s + 60, check=True
    )
    return dict(json.loads(done.stdout))


def _bare(workdir: Path) -> tuple[Proc, str]:
    port = free_port()
    argv = [sys.executable, "-m", "ops.bench.bare_app", "--host", "127.0.0.1", "--port", str(port)]
    proc = Proc("bare", argv, dict(os.environ), workdir / "bare.log").start()
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _healthy(proc, url), START_TIMEOUT_S, "the bare endpoint")
    return proc, url


def _healthy(proc: Proc, url: str) -> bool:
    proc.check_alive()
    return httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200
