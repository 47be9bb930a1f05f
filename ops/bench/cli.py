"""The benchmark's command line: pick scenarios and sizes, run them, print one table.

python -m ops.bench [--only enqueue,rate,...] [--smoke] [--json FILE] [--profile DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ops.bench.harness import Context
from ops.bench.report import ScenarioResult, table
from ops.bench.scenarios import (
    callbacks,
    campaign_data,
    enqueue,
    idle,
    memory,
    priority,
    rate,
    replica,
    retention,
    sending,
    trunks,
    webhooks,
)
from ops.bench.sizes import FULL, SMOKE

# Scenarios run side by side in a smoke run.
SMOKE_JOBS = 3

# The sending engine's targets first (rate, cpu, latency, priority, idle), then the rest.
SCENARIOS: dict[str, Callable[[Context], ScenarioResult]] = {
    "rate": rate.run,
    "cpu": sending.run_cpu,
    "latency": sending.run_latency,
    "priority": priority.run,
    "idle": idle.run,
    "replica": replica.run,
    "retention": retention.run,
    "trunks": trunks.run,
    "campaign": campaign_data.run,
    "enqueue": enqueue.run,
    "callbacks": callbacks.run,
    "memory": memory.run,
    "webhooks": webhooks.run,
}


def _scenarios(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown scenario(s) {', '.join(unknown) or '(none)'}; "
            f"choose from {', '.join(SCENARIOS)}"
        )
    return names


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "memory_gib": round(pages / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _run_one(name: str, ctx: Context) -> ScenarioResult:
    began = time.monotonic()
    try:
        result = SCENARIOS[name](ctx)
    except Exception as exc:
        result = ScenarioResult(name, error=f"{type(exc).__name__}: {exc}")
        traceback.print_exc(file=sys.stderr)
    result.elapsed_s = time.monotonic() - began
    print(f"  {name}: {result.elapsed_s:.0f} s{' ERROR' if result.error else ''}", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.bench", description=__doc__)
    parser.add_argument(
        "--only", type=_scenarios, default=list(SCENARIOS), metavar="NAMES",
        help=f"comma-separated scenarios to run (default all: {','.join(SCENARIOS)})",
    )  # fmt: skip
    parser.add_argument(
        "--smoke", action="store_true",
        help="tiny sizes: every scenario's code runs in seconds; no target is judged",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, metavar="FILE", help="also save the results here")
    parser.add_argument(
        "--profile", type=Path, metavar="DIR",
        help="record the smsq workers with py-spy during the sending scenarios",
    )  # fmt: skip
    parser.add_argument(
        "--keep", action="store_true", help="keep the scratch folder (logs) and print its path"
    )
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else FULL
    workdir = Path(tempfile.mkdtemp(prefix="smsq-bench-"))
    ctx = Context(workdir, sizes, smoke=args.smoke, profile_dir=args.profile)
    started_at = datetime.now(UTC)
    print(f"smsq benchmark{' (smoke)' if args.smoke else ''}: {', '.join(args.only)}", flush=True)
    # A smoke run measures nothing, so its scenarios may share the cores: three at a time
    # keeps it within seconds. A real run gives each scenario the machine to itself.
    jobs = SMOKE_JOBS if args.smoke else 1
    try:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            results = list(pool.map(lambda name: _run_one(name, ctx), args.only))
    finally:
        if args.keep:
            print(f"scratch folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    host = machine()
    print(
        f"\n{started_at:%Y-%m-%d %H:%M} UTC, {host['cpus']} cores ({host['cpu_model']}), "
        f"{host['memory_gib']} GiB, Python {host['python']}"
    )
    if args.smoke:
        print("smoke run: tiny sizes, targets not judged\n")
    else:
        print()
    print(table(results, judged=not args.smoke))
    if args.json:
        document = {
            "date": started_at.isoformat(timespec="seconds"),
            "smoke": args.smoke,
            "machine": host,
            "command": " ".join(["python -m ops.bench", *(argv or sys.argv[1:])]),
            "scenarios": [
                {
                    "name": r.name,
                    "elapsed_s": round(r.elapsed_s, 1),
                    "error": r.error,
                    "notes": r.notes,
                    "rows": [row.as_dict() for row in r.rows],
                    "data": r.data,
                }
                for r in results
            ],
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 1 if any(r.error for r in results) else 0
