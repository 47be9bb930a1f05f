"""What every scenario needs: a private stack (redis-server, simulator, smsq or baseline
workers) that is always torn down, campaigns to send, and what Redis and the simulator say
about them (arrival times, command counters, a campaign's counts).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from ledger import keys
from ledger.settings import DEFAULT_TRUNK, Settings, load_settings
from ledger.states import PENDING
from ops.bench import baseline
from ops.bench.measure import descendants, mean_rate, rate_in_window
from ops.bench.sizes import Layout, Sizes
from ops.stack import (
    Proc,
    RedisServer,
    Stack,
    default_settings_env,
    free_port,
    wait_for,
    worker_argv,
)
from producer.enqueue import EnqueueResult, Producer
from producer.numbers import normalize_many

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
        self.replica: RedisServer | None = None

    def add_replica(self) -> RedisServer:
        """A replica of the stack's Redis, in sync and answering when this returns (start it
        before the workers, with SMSQ_REDIS_MIN_REPLICAS in their settings to wait for it)."""
        self.replica = RedisServer(
            self.server.dir.parent / "replica",
            extra=["--replicaof", "127.0.0.1", str(self.server.port)],
        ).start()

        def answering() -> bool:
            info = self._redis.info("replication")
            if info.get("connected_slaves") != 1 or info["slave0"]["state"] != "online":
                return False
            self._redis.set("smsq:bench:synced", "1")
            return int(self._redis.wait(1, 100)) == 1

        wait_for(answering, START_TIMEOUT_S, "the replica")
        return self.replica

    @property
    def settings_env(self) -> dict[str, str]:
        return self.stack.settings_env

    def settings(self) -> Settings:
        """The settings the workers run with, for code in this process (e.g. the producer)."""
        overrides = {k.removeprefix("SMSQ_").lower(): v for k, v in self.settings_env.items()}
        return load_settings(**overrides)

    def start_simulator(self, latency_ms: float = 0.0, *args: str) -> None:
        self.stack.start_simulator("--latency-ms", str(latency_ms), *args)

    @property
    def redis(self) -> Any:
        """A client of the stack's Redis for the benchmark's own reads (never during a
        measured window unless the scenario says so)."""
        return self._redis

    def smsq_worker(self, name: str, processes: int, **env: str) -> Proc:
        return self.smsq_workers(Layout(1, processes), prefix=name, **env)[0]

    def smsq_workers(self, layout: Layout, prefix: str = "w", **env: str) -> list[Proc]:
        """The layout's smsq workers, started side by side (one after the other costs
        seconds each), each serving its metrics on a port of its own."""
        procs = []
        for n in range(layout.workers):
            name = prefix if layout.workers == 1 else f"{prefix}{n}"
            port = free_port()
            argv = worker_argv(name, layout.processes)
            log_path = self.stack.workdir / f"worker-{name}.log"
            worker_env = self.stack.env(SMSQ_METRICS_PORT=str(port), **env)
            proc = Proc(f"worker {name}", argv, worker_env, log_path).start()
            proc.metrics_url = f"http://127.0.0.1:{port}/metrics"
            procs.append(proc)
        self.stack.workers += procs
        for proc in procs:
            wait_for(partial(_smsq_ready, proc), START_TIMEOUT_S, proc.name)
        return procs

    def baseline_workers(self, count: int, processes: int, rate_limit: str = "") -> list[Proc]:
        """`count` baseline workers started side by side."""
        procs = [self._start_baseline(f"b{n}", processes, rate_limit) for n in range(count)]
        for proc in procs:
            wait_for(partial(_ready, proc), START_TIMEOUT_S, proc.name)
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

    def reset_commandstats(self) -> None:
        """Zero Redis's per-command counters (CONFIG RESETSTAT): a measured window starts."""
        self._redis.config_resetstat()

    def commandstats(self) -> Counter[str]:
        """Calls per command since the last reset, commands run inside scripts included;
        the benchmark's own CONFIG and INFO calls are left out."""
        calls: Counter[str] = Counter()
        for name, stats in self._redis.info("commandstats").items():
            command = name.removeprefix("cmdstat_")
            if command not in ("config", "info"):
                calls[command] = int(stats["calls"])
        return calls

    def reset_slowlog(self) -> None:
        self._redis.slowlog_reset()

    def slow_commands(self) -> list[tuple[float, str]]:
        """Commands (scripts included) that held Redis longer than its slowlog threshold
        (10 ms) since the last reset: (milliseconds, command), slowest first."""
        entries = self._redis.slowlog_get(128)
        found = [(e["duration"] / 1000, _command_name(e["command"])) for e in entries]
        return sorted(found, reverse=True)

    def counts(self, cid: str) -> dict[str, int]:
        """A campaign's messages per state, from its counts hash."""
        raw = self._redis.hgetall(keys.counts(cid))
        return {_text(k): int(v) for k, v in raw.items() if int(v)}

    def wait_settled(self, cid: str, timeout_s: float, states: frozenset[str]) -> bool:
        """Wait until none of the campaign's messages is in one of `states`."""

        def settled() -> bool:
            self.check_alive()
            return not any(self.counts(cid).get(state) for state in states)

        return wait_until(settled, timeout_s, poll_s=0.2)

    def wait_posted(self, cid: str, timeout_s: float) -> bool:
        """Wait until every message of the campaign was posted and its answer recorded."""
        return self.wait_settled(cid, timeout_s, frozenset({"queued", "sending"}))

    def wait_done(self, cid: str, timeout_s: float) -> bool:
        """Wait until the campaign is done: nothing queued, sending or awaiting a callback."""
        return self.wait_settled(cid, timeout_s, frozenset(str(s) for s in PENDING))

    def rate_state(self) -> dict[str, int]:
        """The trunk's rate hash (ledger/lua/claim.lua): tat, sum, idle (slots gone unused)."""
        raw = self._redis.hgetall(keys.rate(DEFAULT_TRUNK))
        return {_text(k): int(float(v)) for k, v in raw.items()}

    def forget_idle_slots(self) -> None:
        """Between two runs on the same stack, with nothing claimed for a while: restart the
        trunk's count of unused slots, and its next slot, so the next run's first claim does
        not count the pause between the runs as slots gone unused."""
        self._redis.hset(keys.rate(DEFAULT_TRUNK), mapping={"tat": 0, "idle": 0})

    def enqueue(
        self, count: int, prefix: str = "4930", *, priority: bool = False, text: str = ""
    ) -> EnqueueResult:
        """A campaign of `count` numbers through the producer, as `smsq send` enqueues it."""
        producer = Producer(self.settings())
        try:
            return producer.enqueue(
                SOURCE,
                text or TEXT,
                normalize_many(numbers(count, prefix)),
                name="bench",
                priority=priority,
            )
        finally:
            producer.close()

    def sim_stats(self) -> dict[str, Any]:
        return dict(self.stack.sim("stats"))

    def configure_simulator(self, **changes: Any) -> None:
        self.stack.sim("config", changes)

    def reset_simulator(self) -> None:
        """Forget every request and message the simulator recorded."""
        self.stack.sim("reset", {})

    def arrivals(self, simulator_url: str = "") -> list[float]:
        """When each request the simulator (this stack's, or the one at simulator_url)
        answered 201 arrived (Unix seconds), in order."""
        url = f"{simulator_url or self.stack.simulator_url}/_sim/requests"
        requests = httpx.get(url, timeout=60).json()
        return [at for at, outcome in requests if outcome == 201]

    def messages(self, offset: int = 0) -> list[dict[str, Any]]:
        """Accepted messages from the offset-th on, in the order they arrived."""
        url = f"{self.stack.simulator_url}/_sim/messages?offset={offset}"
        return list(httpx.get(url, timeout=60).json())

    def pids(self) -> dict[str, list[int]]:
        """The processes of each component (a worker's pool processes come with it)."""
        parts: dict[str, list[int]] = {
            "workers": [p.popen.pid for p in self.workers if p.running and p.popen],
            "simulator": [],
            "redis": [],
            "ingester": [],
            "replica": [],
        }
        for name, proc in (
            ("simulator", self.stack.simulator),
            ("redis", self.server.proc),
            ("ingester", self.stack.callbacks),
            ("replica", self.replica.proc if self.replica else None),
        ):
            if proc is not None and proc.running and proc.popen is not None:
                parts[name].append(proc.popen.pid)
        return {name: pids for name, pids in parts.items() if pids}

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
        if self.replica is not None:
            self.replica.stop()
        self.server.stop()


@contextlib.contextmanager
def bench_stack(workdir: Path, **settings: str) -> Iterator[BenchStack]:
    stack = BenchStack(workdir, **settings)
    try:
        yield stack
    finally:
        stack.close()


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _command_name(command: bytes | str) -> str:
    """A slowlog entry's command, without its arguments (which hold phone numbers)."""
    return _text(command).split(" ", 1)[0].lower()


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


def sleep_until(bench: BenchStack, at: float, tick: Callable[[], None] | None = None) -> None:
    """Sleep until the Unix time `at`, checking every second that the processes live (and
    calling `tick`, a sampler, as often)."""
    while time.time() < at:
        bench.check_alive()
        if tick is not None:
            tick()
        time.sleep(min(1.0, max(0.01, at - time.time())))


def window_start(bench: BenchStack, warmup_s: float) -> float:
    """Wait until `warmup_s` after the first request reached the simulator; return that time."""
    start = first_arrival(bench) + warmup_s
    sleep_until(bench, start)
    return start


def window_rate(bench: BenchStack, start: float, end: float) -> tuple[float, float]:
    """Accepted requests per second in [start, end), and the window's length (shorter when
    the queue ran dry before it ended)."""
    times = bench.arrivals()
    last = max(times, default=start)
    if last < end:
        end = last
    if end <= start:
        # Only in tiny (smoke) runs: the campaign was over before the warm-up was.
        return mean_rate(times), max(times) - min(times)
    return rate_in_window(times, start, end), end - start
