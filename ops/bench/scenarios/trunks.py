"""The rate accuracy of the sending engine holds with two trunks at once.

Two simulators stand in for two DIDWW trunks with their own credentials: `default` at the
lower of the rate scenario's limits and `b` at the higher (SMSQ_TRUNKS=b,
SMSQ_TRUNK_B_URL/USERNAME/PASSWORD/RATE_LIMIT). The same workers (two workers of two
processes, as on two hosts) serve both. For each API latency, one campaign per trunk is
enqueued at the same moment with `smsq send --trunk`, each of limit x rate_send_s messages;
per trunk, the mean rate from its first request to its last must be at least 0.97 of its
limit and no sliding one-second window at its simulator may hold more than its limit.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from ledger import keys
from ledger.settings import DEFAULT_TRUNK
from ops.bench.harness import SOURCE, TEXT, BenchStack, Context, numbers
from ops.bench.measure import CpuMeter, fullest_window, mean_rate
from ops.bench.report import Row, ScenarioResult, grid
from ops.bench.scenarios.rate import TARGET_MEAN_SHARE, TARGET_WINDOW_SHARE, Accuracy
from ops.bench.sizes import Layout
from ops.stack import Proc, free_port, wait_for

NAME = "trunks"
LAYOUT = Layout(2, 2)
SECOND = "b"
SECOND_USER = "trunk-b-user"
SECOND_PASSWORD = "trunk-b-password-not-secret"


@dataclass
class Leg(Accuracy):
    """One trunk's campaign in one run."""

    trunk: str
    limit: int
    latency_ms: float
    sent: int
    mean_per_s: float
    max_window: int
    # Slots nobody claimed within claim.lua's catch-up (the trunk's `idle` count).
    unused_slots: int
    longest_gap_s: float

    @property
    def ok(self) -> bool:
        return self.mean_ok and self.window_ok

    def label(self) -> str:
        return f"trunk {self.trunk} at {self.limit}/s, {self.latency_ms:.0f} ms"


def run(ctx: Context) -> ScenarioResult:
    sizes = ctx.sizes
    low, high = min(sizes.rate_limits), max(sizes.rate_limits)
    if low == high:
        low = max(1, high // 3)
    settings = {
        "SMSQ_RATE_LIMIT": str(low),
        "SMSQ_TRUNKS": SECOND,
        "SMSQ_TRUNK_B_USERNAME": SECOND_USER,
        "SMSQ_TRUNK_B_PASSWORD": SECOND_PASSWORD,
        "SMSQ_TRUNK_B_RATE_LIMIT": str(high),
    }
    legs: list[Leg] = []
    cpu: list[str] = []
    with ctx.stack(NAME, **settings) as bench:
        bench.start_simulator(0.0)
        second_url = _second_simulator(bench)
        bench.settings_env["SMSQ_TRUNK_B_URL"] = second_url
        bench.smsq_workers(LAYOUT)
        urls = {DEFAULT_TRUNK: bench.stack.simulator_url, SECOND: second_url}
        limits = {DEFAULT_TRUNK: low, SECOND: high}
        for n, latency_ms in enumerate(sizes.rate_latencies_ms):
            for trunk, url in urls.items():
                httpx.post(f"{url}/_sim/config", json={"latency_ms": latency_ms}).raise_for_status()
                httpx.post(f"{url}/_sim/reset", json={}).raise_for_status()
                bench.redis.hset(keys.rate(trunk), mapping={"tat": 0, "idle": 0})
            meter = CpuMeter(bench.pids())
            cids = _enqueue_together(bench, ctx.folder(NAME), n, limits, sizes.rate_send_s)
            timeout_s = 2 * sizes.rate_send_s + 60
            for trunk, cid in cids.items():
                if not bench.wait_posted(cid, timeout_s):
                    raise RuntimeError(
                        f"trunk {trunk}, {latency_ms:.0f} ms: campaign not sent within "
                        f"{timeout_s:.0f} s: {bench.counts(cid)}"
                    )
            meter.stop()
            cpu.append(f"{latency_ms:.0f} ms: {meter.describe()}")
            for trunk, url in urls.items():
                times = sorted(bench.arrivals(url))
                idle = bench.redis.hget(keys.rate(trunk), "idle") or 0
                gaps = [b - a for a, b in itertools.pairwise(times)]
                legs.append(
                    Leg(
                        trunk,
                        limits[trunk],
                        latency_ms,
                        len(times),
                        mean_rate(times),
                        fullest_window(times)[0],
                        int(float(idle)),
                        max(gaps, default=0.0),
                    )
                )

    worst_mean = min(legs, key=lambda leg: leg.mean_share)
    worst_window = max(legs, key=lambda leg: leg.window_share)
    passed = sum(1 for leg in legs if leg.ok)
    result = ScenarioResult(NAME)
    result.rows = [
        Row(NAME, f"lowest mean rate of {len(legs)} trunk runs, two trunks at once",
            "share of limit", worst_mean.mean_share, target=TARGET_MEAN_SHARE,
            baseline_text="", why=worst_mean.label()),
        Row(NAME, f"fullest 1 s window of {len(legs)} trunk runs, two trunks at once",
            "share of limit", worst_window.window_share, target=TARGET_WINDOW_SHARE,
            better="lower", baseline_text="", why=worst_window.label()),
        Row(NAME, "trunk runs meeting both targets", "runs", passed, target=len(legs),
            baseline_text=""),
    ]  # fmt: skip
    result.notes = [
        f"smsq: trunk {DEFAULT_TRUNK} at {low}/s and trunk {SECOND} at {high}/s, each its own "
        f"simulator and credentials, served by the same {LAYOUT.describe()} processes; per "
        f"latency, one campaign of limit x {sizes.rate_send_s:.0f} s of messages per trunk, "
        "both enqueued at once with `smsq send --trunk`",
        "CPU in cores over each run: " + "; ".join(cpu),
    ]
    header = ["trunk", "limit", "latency", "sent", "mean (msg/s)", "mean / limit",
              "fullest 1 s", "unused slots", "longest gap (s)", "verdict"]  # fmt: skip
    lines = [
        [leg.trunk, f"{leg.limit}/s", f"{leg.latency_ms:.0f} ms", f"{leg.sent:,}",
         f"{leg.mean_per_s:.1f}", f"{leg.mean_share:.3f}", str(leg.max_window),
         str(leg.unused_slots), f"{leg.longest_gap_s:.2f}", "PASS" if leg.ok else "MISS"]
        for leg in legs
    ]  # fmt: skip
    result.details = ["", *grid(header, lines)]
    result.data = {"legs": [asdict(leg) for leg in legs]}
    return result


def _second_simulator(bench: BenchStack) -> str:
    """A second simulator, the trunk `b`: its own port, credentials and log."""
    port = free_port()
    argv = [
        sys.executable, "-m", "ops.simulator", "--port", str(port),
        "--username", SECOND_USER, "--password", SECOND_PASSWORD,
    ]  # fmt: skip
    log_path = bench.stack.workdir / "simulator-b.log"
    proc = Proc("simulator b", argv, bench.stack.env(), log_path).start()
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        proc.check_alive()
        try:
            return httpx.get(f"{url}/_sim/stats", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, 60, "simulator b")
    # Stopped with the stack's workers when the scenario ends.
    bench.stack.workers.append(proc)
    return url


def _enqueue_together(
    bench: BenchStack, folder: Path, run_no: int, limits: dict[str, int], send_s: float
) -> dict[str, str]:
    """`smsq send --trunk T` for each trunk, started side by side: {trunk: campaign id}."""
    smsq = Path(sys.executable).with_name("smsq")
    started: dict[str, subprocess.Popen[str]] = {}
    for t, (trunk, limit) in enumerate(limits.items()):
        count = max(2, round(limit * send_s))
        path = folder / f"run{run_no}-{trunk}.txt"
        path.write_text("".join(f"+{n}\n" for n in numbers(count, f"48{run_no}{t}")))
        argv = [str(smsq), "send", "--source", SOURCE, "--recipients", str(path),
                "--text", TEXT, "--trunk", trunk, "--json"]  # fmt: skip
        started[trunk] = subprocess.Popen(
            argv, env=bench.stack.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    cids = {}
    for trunk, proc in started.items():
        out, err = proc.communicate(timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"smsq send --trunk {trunk} exited {proc.returncode}: {err[-400:]}")
        cids[trunk] = json.loads(out)["campaign_id"]
    return cids
