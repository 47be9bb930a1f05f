"""A configuration error stops each component at start: exit code 2 within seconds, and one
line naming the variable, no traceback. Each process runs with no inherited SMSQ_ variable, in
a directory of its own (Settings reads a .env file from the working directory)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ops.stack import RedisServer, free_port
from tests.integration.conftest import SOURCE

# Seconds a refused start may take, generous for two busy cores: a healthy one takes under 1 s.
START_LIMIT_S = 10.0
# Past this a component is taken to have started despite the error, and is killed.
HANG_S = 30.0

SMSQ = str(Path(sys.executable).with_name("smsq"))
WORKER = [
    sys.executable, "-m", "celery", "-A", "worker", "worker",
    "--concurrency", "1", "--without-mingle", "--without-gossip", "--loglevel", "INFO",
]  # fmt: skip
SEND = [SMSQ, "send", "--source", SOURCE, "--to", "37041654321", "--text", "hi"]
STATUS = [SMSQ, "status", "0123456789abcdef"]


def callbacks() -> list[str]:
    return [sys.executable, "-m", "callbacks", "--host", "127.0.0.1", "--port", str(free_port())]


def api() -> list[str]:
    port = str(free_port())
    return [sys.executable, "-m", "producer.http", "--host", "127.0.0.1", "--port", port]


@dataclass
class Case:
    name: str
    argv: list[str]
    variable: str
    # Settings to change from a valid configuration; None removes the variable.
    env: dict[str, str | None] = field(default_factory=dict)
    dotenv: str = ""


@dataclass
class Outcome:
    returncode: int | None
    output: str
    seconds: float


def run(case: Case, base_env: dict[str, str], workdir: Path) -> Outcome:
    """Start the component with a clean environment in its own directory; wait for its exit."""
    cwd = workdir / case.name
    cwd.mkdir()
    if case.dotenv:
        (cwd / ".env").write_text(case.dotenv)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMSQ_")}
    env.update(base_env)
    for name, value in case.env.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    started = time.monotonic()
    # Its own session, so a component that did start (a worker and its pool) is stopped whole.
    proc = subprocess.Popen(
        case.argv,
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=HANG_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        return Outcome(None, output, HANG_S)
    return Outcome(proc.returncode, output, time.monotonic() - started)


def test_configuration_errors_stop_each_component_with_one_line(tmp_path: Path):
    server = RedisServer(tmp_path).start()
    port = server.port
    # A valid configuration on a private Redis: a component that ignored its error would
    # start against it (and write to it) instead of touching anything shared.
    base_env = {
        "SMSQ_REDIS_URL": server.url,
        "SMSQ_DIDWW_URL": "http://127.0.0.1:9",
        "SMSQ_DIDWW_USERNAME": "smsq-test",
        "SMSQ_DIDWW_PASSWORD": "pw-not-secret",
        "SMSQ_CALLBACK_TOKEN": "token-not-secret",
    }
    malformed_urls = [
        f"redis://127.0.0.1:{port}0000/0",  # port out of range
        f"localhost:{port}",  # no scheme
        f"http://127.0.0.1:{port}/0",  # not Redis
        f"redis://:{port}/0",  # no host
    ]
    cases = [
        Case("worker-url", WORKER, "SMSQ_REDIS_URL", {"SMSQ_REDIS_URL": malformed_urls[0]}),
        Case("worker-password", WORKER, "SMSQ_DIDWW_PASSWORD", {"SMSQ_DIDWW_PASSWORD": None}),
        Case("worker-rate", WORKER, "SMSQ_RATE_LIMIT", {"SMSQ_RATE_LIMIT": "0"}),
        Case("callbacks-url", callbacks(), "SMSQ_REDIS_URL", {"SMSQ_REDIS_URL": malformed_urls[1]}),
        Case("callbacks-token", callbacks(), "SMSQ_CALLBACK_TOKEN", {"SMSQ_CALLBACK_TOKEN": None}),
        Case("callbacks-rate", callbacks(), "SMSQ_RATE_LIMIT", {"SMSQ_RATE_LIMIT": "0"}),
        Case("callbacks-dotenv", callbacks(), "SMSQ_RATE_LIMIT", dotenv="SMSQ_RATE_LIMIT=0\n"),
        Case(
            "callbacks-short-token",
            callbacks(),
            "SMSQ_CALLBACK_TOKEN",
            {"SMSQ_CALLBACK_TOKEN": "short-token"},
        ),
        Case(
            "callbacks-short-metrics-token",
            callbacks(),
            "SMSQ_METRICS_TOKEN",
            {"SMSQ_METRICS_TOKEN": "metrics"},
        ),
        Case("api-short-token", api(), "SMSQ_API_TOKEN", {"SMSQ_API_TOKEN": "api-token"}),
        Case("send-url", SEND, "SMSQ_REDIS_URL", {"SMSQ_REDIS_URL": malformed_urls[2]}),
        Case("send-rate", SEND, "SMSQ_RATE_LIMIT", {"SMSQ_RATE_LIMIT": "0"}),
        Case("send-rate-text", SEND, "SMSQ_RATE_LIMIT", {"SMSQ_RATE_LIMIT": "fast"}),
        Case("status-url", STATUS, "SMSQ_REDIS_URL", {"SMSQ_REDIS_URL": malformed_urls[3]}),
        Case("status-rate", STATUS, "SMSQ_RATE_LIMIT", {"SMSQ_RATE_LIMIT": "0"}),
    ]
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            outcomes = list(pool.map(lambda c: run(c, base_env, tmp_path), cases))
        for case, outcome in zip(cases, outcomes, strict=True):
            what = f"{case.name}: {outcome}"
            assert outcome.returncode == 2, what
            assert outcome.seconds < START_LIMIT_S, what
            assert "Traceback" not in outcome.output, what
            lines = [line for line in outcome.output.splitlines() if line.strip()]
            assert len(lines) == 1, what
            assert lines[0].startswith(f"smsq: configuration error: {case.variable}"), what
        client = server.client()
        try:
            assert client.dbsize() == 0, client.keys("*")
        finally:
            client.close()
    finally:
        server.stop()
