"""Start and stop a whole smsq stack on this machine: a private redis-server, the DIDWW
simulator, the callback ingester and Celery workers. Used by the demo and the integration tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
# Processes get this long to come up; a cold Celery worker takes 2-4 s on 2 cores.
START_TIMEOUT_S = 30.0


class StackError(RuntimeError):
    """A component would not start; the message says which and where its log is."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.05)
    raise StackError(f"timed out after {timeout_s:.0f} s waiting for {what}")


@dataclass
class Proc:
    """A child process with its output in a log file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    metrics_url: str = ""
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> Proc:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        # Its own process group, so kill_group() can take a worker and its pool children
        # down together, as a lost host would.
        self.popen = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def check_alive(self) -> None:
        if not self.running:
            tail = "\n".join(self.log().splitlines()[-15:])
            raise StackError(f"{self.name} exited; the end of {self.log_path}:\n{tail}")

    def send_signal(self, sig: int) -> None:
        if self.running and self.popen:
            self.popen.send_signal(sig)

    def kill_group(self) -> None:
        """SIGKILL the process and every child it started (a host that died)."""
        if self.popen is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)
        if self._log:
            self._log.close()
            self._log = None

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int | None:
        if self.popen is None:
            return None
        if self.running:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        if self._log:
            self._log.close()
            self._log = None
        return self.popen.returncode


class RedisServer:
    """A private redis-server on a free port in its own directory."""

    def __init__(self, workdir: Path, appendonly: bool = False, extra: Sequence[str] = ()) -> None:
        if not shutil.which("redis-server"):
            raise StackError("redis-server is not installed (Debian: apt-get install redis-server)")
        self.dir = workdir / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.appendonly = appendonly
        self.extra = list(extra)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: Proc | None = None

    def start(self) -> RedisServer:
        argv = [
            "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always",
            "--maxmemory-policy", "noeviction",
            # A replica's first sync starts at once, not after Redis's 5 s wait for others.
            "--repl-diskless-sync-delay", "0",
            *self.extra,
        ]  # fmt: skip
        self.proc = Proc("redis", argv, dict(os.environ), self.dir / "redis.log").start()
        client = redis.Redis(port=self.port)
        try:
            wait_for(lambda: bool(client.ping()), START_TIMEOUT_S, "redis-server")
        finally:
            client.close()
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc:
            self.proc.stop(sig)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)


@dataclass
class Stack:
    """Everything smsq needs, on free ports, with logs in one temporary directory."""

    workdir: Path
    redis_url: str
    settings_env: dict[str, str]
    simulator: Proc | None = None
    simulator_url: str = ""
    callbacks: Proc | None = None
    callbacks_url: str = ""
    workers: list[Proc] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        # Nor this process's metrics directory: each worker must sum only its own processes.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("SMSQ_") and k != "PROMETHEUS_MULTIPROC_DIR"
        }
        env.update(self.settings_env)
        env.update(extra)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start_simulator(self, *args: str) -> Proc:
        port = free_port()
        token = self.settings_env["SMSQ_CALLBACK_TOKEN"]
        argv = [
            sys.executable, "-m", "ops.simulator",
            "--port", str(port),
            "--username", self.settings_env["SMSQ_DIDWW_USERNAME"],
            "--password", self.settings_env["SMSQ_DIDWW_PASSWORD"],
        ]  # fmt: skip
        if self.callbacks_url:
            argv += ["--callback-url", f"{self.callbacks_url}/callbacks?token={token}"]
        argv += list(args)
        proc = Proc("simulator", argv, self.env(), self.workdir / "simulator.log").start()
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _http_ok(f"{url}/_sim/stats", proc), START_TIMEOUT_S, "the simulator")
        self.simulator, self.simulator_url = proc, url
        self.settings_env["SMSQ_DIDWW_URL"] = url
        return proc

    def start_callbacks(self) -> Proc:
        port = free_port()
        argv = [sys.executable, "-m", "callbacks", "--host", "127.0.0.1", "--port", str(port)]
        proc = Proc("callbacks", argv, self.env(), self.workdir / "callbacks.log").start()
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _http_ok(f"{url}/healthz", proc), START_TIMEOUT_S, "the ingester")
        self.callbacks, self.callbacks_url = proc, url
        return proc

    def start_worker(self, name: str, concurrency: int = 1, **env: str) -> Proc:
        argv = worker_argv(name, concurrency)
        log_path = self.workdir / f"worker-{name}.log"
        env.setdefault("SMSQ_METRICS_PORT", str(free_port()))
        proc = Proc(f"worker {name}", argv, self.env(**env), log_path).start()
        proc.metrics_url = f"http://127.0.0.1:{env['SMSQ_METRICS_PORT']}/metrics"
        wait_for(lambda: _worker_ready(proc), START_TIMEOUT_S * 2, f"worker {name}")
        self.workers.append(proc)
        return proc

    def smsq(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run the smsq command against this stack."""
        smsq = Path(sys.executable).with_name("smsq")
        return subprocess.run(
            [str(smsq), *args], env=self.env(), cwd=ROOT, capture_output=True, text=True,
            check=check, timeout=120,
        )  # fmt: skip

    def sim(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """GET (or POST with a body) one of the simulator's /_sim/ admin endpoints."""
        url = f"{self.simulator_url}/_sim/{path}"
        response = httpx.post(url, json=body) if body is not None else httpx.get(url)
        response.raise_for_status()
        return response.json()

    def stop(self) -> None:
        for proc in [*self.workers, self.callbacks, self.simulator]:
            if proc is not None:
                proc.stop()


def worker_argv(name: str, concurrency: int) -> list[str]:
    """The command line of one Celery worker named name@<host>."""
    return [
        sys.executable, "-m", "celery", "-A", "worker", "worker",
        "--hostname", f"{name}@%h",
        "--concurrency", str(concurrency),
        "--loglevel", "INFO",
        "--without-mingle", "--without-gossip",
    ]  # fmt: skip


def max_in_any_window(times: Sequence[float], window_s: float = 1.0) -> int:
    """The most events in any half-open window [t, t + window_s) starting at an event."""
    ordered = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(ordered):
        while ordered[lo] <= t - window_s:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def _http_ok(url: str, proc: Proc) -> bool:
    proc.check_alive()
    return httpx.get(url, timeout=1.0).status_code == 200


def _worker_ready(proc: Proc) -> bool:
    proc.check_alive()
    return " ready." in proc.log()


def default_settings_env(redis_url: str, **overrides: str) -> dict[str, str]:
    env = {
        "SMSQ_REDIS_URL": redis_url,
        "SMSQ_DIDWW_USERNAME": "smsq-demo",
        "SMSQ_DIDWW_PASSWORD": "demo-password-not-secret",
        "SMSQ_CALLBACK_TOKEN": "demo-callback-token",
        "SMSQ_RATE_LIMIT": "100",
        "SMSQ_LOG_LEVEL": "INFO",
    }
    env.update(overrides)
    return env


@contextlib.contextmanager
def temporary_workdir(prefix: str = "smsq-") -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
