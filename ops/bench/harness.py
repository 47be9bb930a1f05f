"""What every scenario needs: a private stack (redis-server, simulator, smsq or baseline
workers) that is always torn down, numbers to send, and measurements taken from outside
the processes under test (the simulator's arrival times, Redis INFO, /proc).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from ledger.settings import Settings, load_settings
from ops.bench import baseline
from ops.bench.sizes import Sizes
from ops.stack import (
    Proc,
    RedisServer,
    Stack,
    default_settings_env,
    wait_for,
    worker_argv,
)

SOURCE = "37041123456"
# One GSM-7 segment, the common case for a campaign.
TEXT = "Your order has shipped. Track it in the app: example.com/t"
# A worker takes 1-4 s to start on 2 busy cores; several start at once in some scenarios.
START_TIMEOUT_S = 60.0


def numbers(count: int, prefix: str = "4930", start: int = 0) -> list[str]:
    """`count` distinct valid numbers, digits only; prefixes keep scenarios' sets apart."""
    return [f"{prefix}{start + i:08d}" for i in range(count)]


def write_csv(path: Path, destinations: Sequence[str]) -> Path:
    """A recipients file as users export it: a header and a leading + on every number."""
    with path.open("w") as out:
        out.write("name,destination\n")
        out.writelines(f"customer {i},+{number}\n" for i, number in enumerate(destinations))
    return path


class BenchStack:
    """One scenario's processes on free ports; close() stops them all, whatever happened."""

    def __init__(self, workdir: Path, **settings: str) -> None:
        self.server = RedisServer(workdir).start()
        self.url = self.server.url
        env = default_settings_env(self.url, **settings)
        self.stack = Stack(workdir, self.url, env)
        self.baseline_procs: list[Proc] = []
        self._redis = self.server.client()

    @property
    def settings_env(self) -> dict[str, str]:
        return self.stack.settings_env

    def settings(self) -> Settings:
        """The settings the workers run with, for code in this process (e.g. the producer)."""
        overrides = {k.removeprefix("SMSQ_").lower(): v for k, v in self.settings_env.items()}
        return load_settings(**overrides)

    def start_simulator(self, latency_ms: float = 0.0, *args: str) -> None:
        self.stack.start_simulator("--latency-ms", str(latency_ms), *args)

    def smsq_worker(self, name: str, processes: int, **env: str) -> Proc:
        return self.stack.start_worker(name, concurrency=processes, **env)

    def smsq_workers(self, count: int, processes: int) -> list[Proc]:
        """`count` smsq workers started side by side (as Stack.start_worker starts one):
        one after the other costs a second each."""
        procs = []
        for n in range(count):
            argv = worker_argv(f"w{n}", processes)
            log_path = self.stack.workdir / f"worker-w{n}.log"
            procs.append(Proc(f"worker w{n}", argv, self.stack.env(), log_path).start())
        self.stack.workers += procs
        for proc in procs:
            wait_for(lambda p=proc: _smsq_ready(p), START_TIMEOUT_S, proc.name)
        return procs

    def baseline_workers(self, count: int, processes: int, rate_limit: str = "") -> list[Proc]:
        """`count` baseline workers started side by side."""
        procs = [self._start_baseline(f"b{n}", processes, rate_limit) for n in range(count)]
        for proc in procs:
            wait_for(lambda p=proc: _ready(p), START_TIMEOUT_S, proc.name)
        return procs

    def baseline_worker(self, name: str, processes: int, rate_limit: str = "") -> Proc:
        proc = self._start_baseline(name, processes, rate_limit)
        wait_for(lambda: _ready(proc), START_TIMEOUT_S, proc.name)
        return proc

    def _start_baseline(self, name: str, processes: int, rate_limit: str) -> Proc:
        env = self.stack.env(
            BASELINE_BROKER_URL=self.url,
            BASELINE_API_URL=self.stack.simulator_url,
            BASELINE_USERNAME=self.settings_env["SMSQ_DIDWW_USERNAME"],
            BASELINE_PASSWORD=self.settings_env["SMSQ_DIDWW_PASSWORD"],
            BASELINE_RATE_LIMIT=rate_limit,
        )
        argv = [
            sys.executable, "-m", "celery", "-A", "ops.bench.baseline", "worker",
            "--hostname", f"{name}@%h",
            "--concurrency", str(processes),
            # The same two flags the smsq workers get: they only shorten start-up.
            "--without-mingle", "--without-gossip",
        ]  # fmt: skip
        log_path = self.stack.workdir / f"baseline-{name}.log"
        proc = Proc(f"baseline worker {name}", argv, env, log_path).start()
        self.baseline_procs.append(proc)
        return proc

    def baseline_task(self, rate_limit: str | None = None) -> Any:
        """The baseline's task bound to this stack's Redis, for apply_async from here."""
        return baseline.make_app(self.url, rate_limit)[1]

    @property
    def workers(self) -> list[Proc]:
        return [*self.stack.workers, *self.baseline_procs]

    def used_memory(self) -> int:
        return int(self._redis.info("memory")["used_memory"])

    def sim_stats(self) -> dict[str, Any]:
        return dict(self.stack.sim("stats"))

    def arrivals(self) -> list[float]:
        """When each request the simulator answered 201 arrived (Unix seconds), in order."""
        url = f"{self.stack.simulator_url}/_sim/requests"
        requests = httpx.get(url, timeout=60).json()
        return [at for at, outcome in requests if outcome == 201]

    def messages(self) -> list[dict[str, Any]]:
        url = f"{self.stack.simulator_url}/_sim/messages"
        return list(httpx.get(url, timeout=60).json())

    def check_alive(self) -> None:
        for proc in self.workers:
            proc.check_alive()

    def close(self) -> None:
        """Stop every process. Workers are killed with their pools: their Redis is thrown
        away, and even Celery's cold shutdown takes about 2 s a worker."""
        for proc in self.workers:
            if proc.running and proc.popen is not None:
                for child in descendants(proc.popen.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child, signal.SIGKILL)
            proc.stop(signal.SIGKILL)
        for service in (self.stack.callbacks, self.stack.simulator):
            if service is not None:
                service.stop()
        self._redis.close()
        self.server.stop()


@contextlib.contextmanager
def bench_stack(workdir: Path, **settings: str) -> Iterator[BenchStack]:
    stack = BenchStack(workdir, **settings)
    try:
        yield stack
    finally:
        stack.close()


def _ready(proc: Proc) -> bool:
    proc.check_alive()
    return baseline.READY_LINE in proc.log()


def _smsq_ready(proc: Proc) -> bool:
    proc.check_alive()
    return " ready." in proc.log()


def wait_until(check: Callable[[], bool], timeout_s: float, poll_s: float = 0.2) -> bool:
    """Poll `check()` until true or `timeout_s` passed; returns its last answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)


def rate_in_window(times: Sequence[float], start: float, end: float) -> float:
    """Arrivals per second within [start, end)."""
    return sum(1 for t in times if start <= t < end) / (end - start)


def mean_rate(times: Sequence[float]) -> float:
    """Arrivals per second from the first to the last one."""
    if len(times) < 2:
        return 0.0
    ordered = sorted(times)
    return (len(ordered) - 1) / (ordered[-1] - ordered[0])


def descendants(pid: int) -> list[int]:
    """A process's children, grandchildren and so on, from /proc (Linux)."""
    found: list[int] = []
    pending = [pid]
    while pending:
        current = pending.pop()
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                children = [int(c) for c in task.read_text().split()]
                found += children
                pending += children
    return found


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants (a Celery worker and its pool),
    read from /proc/PID/status (Linux)."""
    total = 0
    for member in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank: with 20 values p99 is the largest."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


class Context:
    """What a scenario is given: its sizes, a scratch folder, and whether to profile."""

    def __init__(
        self, workdir: Path, sizes: Sizes, *, smoke: bool, profile_dir: Path | None
    ) -> None:
        self.workdir = workdir
        self.sizes = sizes
        self.smoke = smoke
        self.profile_dir = profile_dir

    def folder(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def stack(self, name: str, **settings: str) -> contextlib.AbstractContextManager[BenchStack]:
        return bench_stack(self.folder(name), **settings)


def first_arrival(bench: BenchStack, timeout_s: float = 60.0) -> float:
    """When the simulator got its first request (Unix seconds); waits for it."""
    url = f"{bench.stack.simulator_url}/_sim/requests?limit=1"
    found: list[Any] = []

    def arrived() -> bool:
        bench.check_alive()
        found[:] = httpx.get(url, timeout=10).json()
        return bool(found)

    if not wait_until(arrived, timeout_s):
        raise RuntimeError(f"no request reached the simulator within {timeout_s:.0f} s")
    return float(found[0][0])


def steady_rate(bench: BenchStack, warmup_s: float, window_s: float) -> tuple[float, float]:
    """Accepted requests per second over `window_s` after `warmup_s` from the first one, and
    the window's length (shorter when the queue ran dry before it ended)."""
    start = first_arrival(bench) + warmup_s
    end = start + window_s
    while time.time() < end + 0.5:
        bench.check_alive()
        time.sleep(min(1.0, max(0.05, end + 0.5 - time.time())))
    times = bench.arrivals()
    last = max(times, default=start)
    if last < end:
        end = last
    if end <= start:
        # Only in tiny (smoke) runs: the campaign was over before the warm-up was.
        return mean_rate(times), max(times) - min(times)
    return rate_in_window(times, start, end), end - start
