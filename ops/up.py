"""`make up` and `make down`: a local smsq stack left running in the background for trying the
README's commands (a private redis-server, the DIDWW simulator, one worker, the callback
ingester, the HTTP API and the webhook delivery service), its logs, pids and settings in one
folder (.smsq/ by default).

Run: python -m ops.up [--state-dir DIR] up|down
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import signal
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import httpx

from ops.stack import (
    ROOT,
    START_TIMEOUT_S,
    Proc,
    RedisServer,
    Stack,
    StackError,
    default_settings_env,
    free_port,
    wait_for,
)

STATE_DIR = ROOT / ".smsq"
# The pids `make down` stops, with what identifies each process (up.json), and the settings
# to load into a shell (env).
STATE_FILE = "up.json"
ENV_FILE = "env"
# Low enough to watch a campaign settle, high enough that the README's campaigns take seconds.
RATE_PER_S = "100"
# A bound that keeps a forgotten stack from filling the disk, far above what trying needs.
REDIS_MAXMEMORY = "256mb"
# As the demo: a DIDWW that answers in tens of milliseconds, calls back after 300 ms and
# reports one message in twenty failed, so `smsq report` and `smsq resend` have work.
SIMULATOR_ARGS = (
    "--latency-ms", "30", "--latency-jitter-ms", "10",
    "--callback-delay-ms", "300", "--callback-failure-ratio", "0.05",
)  # fmt: skip
# A Celery worker finishes its warm shutdown in seconds; past this it is killed.
STOP_TIMEOUT_S = 20.0
# How often a stopping process is looked at.
POLL_S = 0.1


@dataclass
class Entry:
    """One process `make up` started: its pid (also its process group's id: each starts in a
    session of its own), when it started (so a pid reused later is never taken for it), and
    where to reach it and read its log."""

    name: str
    pid: int
    started: str
    where: str
    log: str


@click.group()
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=STATE_DIR,
    show_default=True,
    help="Where the logs, the pids, the settings and Redis's data are kept.",
)
@click.pass_context
def main(ctx: click.Context, state_dir: Path) -> None:
    """Keep a local smsq stack running for trying the README's commands (make up, make down)."""
    ctx.obj = state_dir.resolve()


@main.command()
@click.pass_obj
def up(state_dir: Path) -> None:
    """Start the stack in the background, or say it is up already."""
    entries = _load(state_dir)
    if entries:
        gone = [e for e in entries if not _running(e)]
        if not gone:
            click.echo(f"smsq is already up; logs in {_shown(state_dir)}/")
            _describe(state_dir, entries)
            return
        names = ", ".join(e.name for e in gone)
        click.echo(f"smsq was up, but {names} exited (see its log); starting it afresh")
        _stop_all(state_dir, entries)
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    # The processes outlive this command: none may keep the terminal open through stdin
    # (their output goes to their logs, and each runs in a session of its own).
    with open(os.devnull, "rb") as devnull:
        os.dup2(devnull.fileno(), 0)
    started: list[Entry] = []
    # Children this process had before (none from `make up`; a test's own servers when run in
    # process) are not this start's to stop.
    before = set(_children())
    try:
        settings = _start(state_dir, started)
    except (StackError, KeyboardInterrupt) as exc:
        _stop_all(state_dir, started, quiet=True)
        # One that never became ready was not recorded; it is still this process's child.
        for pid in set(_children()) - before:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        if isinstance(exc, KeyboardInterrupt):
            raise click.Abort from None
        click.echo(f"make up: {exc}", err=True)
        sys.exit(1)
    _write_env(state_dir, settings, started)
    click.echo(f"smsq is up; logs in {_shown(state_dir)}/")
    _describe(state_dir, started)


@main.command()
@click.pass_obj
def down(state_dir: Path) -> None:
    """Stop every process `up` started."""
    entries = _load(state_dir)
    if not entries:
        click.echo(f"smsq is not up (nothing recorded in {_shown(state_dir)}/{STATE_FILE})")
        return
    _stop_all(state_dir, entries)
    click.echo(f"smsq is down; its logs and Redis's data stay in {_shown(state_dir)}/")


def _start(state_dir: Path, started: list[Entry]) -> dict[str, str]:
    """Start each process, recording it as soon as it runs (so `down` can stop it even if a
    later one fails); the settings the stack runs with."""

    def record(proc: Proc, where: str) -> None:
        assert proc.popen is not None
        pid = proc.popen.pid
        started.append(Entry(proc.name, pid, _start_time(pid) or "", where, str(proc.log_path)))
        _save(state_dir, started)

    # Append-only, like production Redis, so nothing warns and a `make up` after a `make down`
    # finds its campaigns again.
    server = RedisServer(state_dir, appendonly=True, extra=("--maxmemory", REDIS_MAXMEMORY)).start()
    assert server.proc is not None
    record(server.proc, server.url)
    settings = default_settings_env(
        server.url,
        SMSQ_RATE_LIMIT=RATE_PER_S,
        SMSQ_API_TOKEN=secrets.token_urlsafe(24),
    )
    stack = Stack(state_dir, server.url, settings)
    # The ingester first: the simulator is given its URL to call back.
    record(stack.start_callbacks(), stack.callbacks_url)
    record(stack.start_simulator(*SIMULATOR_ARGS), stack.simulator_url)
    record(stack.start_worker("up"), "1 process")
    api_port = free_port()
    argv = [sys.executable, "-m", "producer.http", "--host", "127.0.0.1", "--port", str(api_port)]
    api = Proc("api", argv, stack.env(), state_dir / "api.log").start()
    api_url = f"http://127.0.0.1:{api_port}"
    # Recorded before it is ready: if it never is, the failure path stops it with the rest.
    record(api, f"{api_url}/")
    wait_for(lambda: _healthy(api, f"{api_url}/healthz"), START_TIMEOUT_S, "the HTTP API")
    # Subscribers on this machine (the README's receiver) are loopback addresses: allowed here,
    # refused by default everywhere else.
    hooks_env = stack.env(
        SMSQ_WEBHOOK_ALLOW_PRIVATE="true", SMSQ_WEBHOOKS_METRICS_PORT=str(free_port())
    )
    argv = [sys.executable, "-m", "webhooks"]
    hooks = Proc("webhooks", argv, hooks_env, state_dir / "webhooks.log").start()
    record(hooks, "delivers to subscribed URLs")
    wait_for(lambda: _started(hooks), START_TIMEOUT_S, "the webhook delivery service")
    settings = dict(stack.settings_env, SMSQ_WEBHOOK_ALLOW_PRIVATE="true")
    # Not settings: the API's address and header, as docs/api.md's curl commands use them.
    token = settings["SMSQ_API_TOKEN"]
    return settings | {"API": api_url, "AUTH": f"Authorization: Bearer {token}"}


def _started(proc: Proc) -> bool:
    proc.check_alive()
    return "webhooks_started" in proc.log()


def _healthy(proc: Proc, url: str) -> bool:
    proc.check_alive()
    return httpx.get(url, timeout=1.0).status_code == 200


def _write_env(state_dir: Path, settings: dict[str, str], entries: list[Entry]) -> None:
    """The settings a shell needs for `smsq` to use this stack, as lines `.` can load."""
    by_name = {e.name: e.where for e in entries}
    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    lines = [
        f"# The local smsq stack `make up` started at {now}; `make down` stops it.",
        f"# Load it into a shell with:  source {_shown(state_dir / ENV_FILE)}",
        f"# HTTP API and dashboard: {by_name['api']} (sign in with SMSQ_API_TOKEN)",
        f"# DIDWW simulator: {by_name['simulator']} (what it was sent: /_sim/stats)",
        f"# Callback ingester: {by_name['callbacks']}",
        *(f"export {name}={shlex.quote(value)}" for name, value in sorted(settings.items())),
    ]
    # It holds the API token: readable by this user only.
    fd = os.open(state_dir / ENV_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with open(fd, "w") as env:
        env.write("\n".join(lines) + "\n")


def _describe(state_dir: Path, entries: list[Entry]) -> None:
    for e in entries:
        click.echo(f"  {e.name:<10} {e.where:<32} pid {e.pid}")
    env = _shown(state_dir / ENV_FILE)
    click.echo("Load its settings into your shell, then try the README's commands:")
    click.echo(f"  source {env if '/' in env else './' + env}")
    click.echo("The dashboard's token is SMSQ_API_TOKEN in that file. `make down` stops it all.")


def _stop_all(state_dir: Path, entries: list[Entry], quiet: bool = False) -> None:
    """Stop the processes, the last started first (Redis outlives the worker's shutdown)."""
    for e in reversed(entries):
        outcome = _stop(e)
        if not quiet:
            click.echo(f"{e.name} (pid {e.pid}) {outcome}")
    for name in (STATE_FILE, ENV_FILE):
        with contextlib.suppress(FileNotFoundError):
            (state_dir / name).unlink()


def _stop(e: Entry) -> str:
    """SIGTERM the process and wait for it to end; SIGKILL its whole group after
    STOP_TIMEOUT_S. Then anything left of its group (a worker's pool processes) is killed."""
    if not _running(e):
        return "had already exited"
    with contextlib.suppress(ProcessLookupError):
        os.kill(e.pid, signal.SIGTERM)
    outcome = "stopped"
    if not _ended(e, STOP_TIMEOUT_S):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(e.pid, signal.SIGKILL)
        outcome = f"killed after {STOP_TIMEOUT_S:.0f} s"
        if not _ended(e, 5.0):
            return f"did not end (SIGKILL sent); see ps {e.pid}"
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(e.pid, signal.SIGKILL)
    return outcome


def _ended(e: Entry, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _running(e):
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_S)
    return True


def _running(e: Entry) -> bool:
    """Whether the process recorded is still running: the same pid, started at the same time."""
    started = _start_time(e.pid)
    return started is not None and (started == e.started or not e.started)


def _start_time(pid: int) -> str | None:
    """When the process started, in clock ticks since boot (/proc/PID/stat field 22); "" where
    there is no /proc; None if no such process runs. A zombie does not run: once `up` has
    exited, whoever reaps its orphans may be slow to, or never do it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        if Path("/proc/self").exists():
            return None
        # No /proc (macOS): that the pid exists is all there is to go on.
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return ""
    # The name (field 2) may hold spaces and parentheses; the fields after it do not.
    fields = stat.rsplit(")", 1)[1].split()
    state, started = fields[0], fields[19]
    return None if state in ("Z", "X") else started


def _children() -> list[int]:
    """The pids of this process's children that still run (none found without /proc)."""
    me, found = os.getpid(), []
    for path in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = path.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == me and fields[0] not in ("Z", "X"):
                found.append(int(path.parent.name))
    return found


def _load(state_dir: Path) -> list[Entry]:
    path = state_dir / STATE_FILE
    try:
        raw: list[dict[str, Any]] = json.loads(path.read_text())["processes"]
        return [Entry(**item) for item in raw]
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError) as exc:
        raise click.ClickException(
            f"{_shown(path)} is not what `make up` writes ({exc}); stop what it names by hand "
            "and delete it"
        ) from None


def _save(state_dir: Path, entries: list[Entry]) -> None:
    path = state_dir / STATE_FILE
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps({"processes": [asdict(e) for e in entries]}, indent=2))
    partial.replace(path)


def _shown(path: Path) -> str:
    """The path relative to the working directory when it is below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    main()
