"""`make up` and `make down` with real processes, and the `smsq` habits against the stack they
keep: --version, send --wait, status --wait, --recipients - from standard input."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import pytest

from ops.stack import ROOT
from tests.integration.conftest import SOURCE


def make(state_dir: Path, target: str) -> subprocess.CompletedProcess[str]:
    """`make TARGET` with the stack's folder in state_dir, never the developer's .smsq/; the
    virtualenv is taken as installed (-o), as the test runs in it."""
    return subprocess.run(
        ["make", "-s", "-o", ".venv/.installed", target, f"UP_DIR={state_dir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip


def recorded(state_dir: Path) -> list[dict[str, Any]]:
    return list(json.loads((state_dir / "up.json").read_text())["processes"])


def settings_env(state_dir: Path) -> dict[str, str]:
    """The `export NAME=VALUE` lines of the env file `make up` writes, as a shell reads them."""
    found = {}
    for line in (state_dir / "env").read_text().splitlines():
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            [found[name]] = shlex.split(value)
    return found


def running(pid: int) -> bool:
    """Whether a process with this pid exists and is not a zombie (nothing may reap orphans)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def in_groups(pgids: set[int]) -> list[int]:
    """Running processes whose process group is one of pgids (a worker's pool processes)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if fields[0] not in ("Z", "X") and int(fields[2]) in pgids:
                found.append(int(entry.name))
    return found


def lines_of(output: str) -> list[list[str]]:
    return [line.split() for line in output.splitlines()]


def test_make_up_keeps_a_stack_the_readme_commands_use(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    state_dir = tmp_path / "smsq-up"
    down = make(state_dir, "down")
    assert down.returncode == 0, down.stderr
    assert "smsq is not up" in down.stdout

    # Whatever happens below, nothing this test started outlives it.
    teardown = [sys.executable, "-m", "ops.up", "--state-dir", str(state_dir), "down"]
    request.addfinalizer(lambda: subprocess.run(teardown, cwd=ROOT, timeout=120, check=False))
    up = make(state_dir, "up")
    assert up.returncode == 0, up.stdout + up.stderr
    assert "smsq is up" in up.stdout and f"source {state_dir}/env" in up.stdout
    processes = recorded(state_dir)
    assert [p["name"] for p in processes] == [
        "redis",
        "callbacks",
        "simulator",
        "worker up",
        "api",
        "webhooks",
    ]
    assert all(running(p["pid"]) for p in processes)
    # Started in the background: `make` has returned, and they are not its children.
    assert all(os.getpgid(p["pid"]) == p["pid"] for p in processes)

    again = make(state_dir, "up")
    assert again.returncode == 0, again.stderr
    assert "smsq is already up" in again.stdout
    assert recorded(state_dir) == processes

    # A shell that loaded the env file: the developer's own SMSQ_ settings play no part.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMSQ_")}
    env.update(settings_env(state_dir))
    assert env["SMSQ_REDIS_URL"] != "redis://127.0.0.1:6379/0"
    smsq = str(Path(sys.executable).with_name("smsq"))

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [smsq, *args], env=env, input=stdin, capture_output=True, text=True, timeout=120,
            check=False,
        )  # fmt: skip
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
        return done

    assert run("--version").stdout == f"smsq, version {version('smsq')}\n"

    sent = run(
        "send", "--source", SOURCE, "--to", "+49 30 1234 5601", "--to", "004930123456 02",
        "--text", "Your code is 1234", "--wait",
    )  # fmt: skip
    cid = sent.stdout.split()[1].rstrip(":")
    assert sent.stdout.startswith(f"campaign {cid}: 2 queued")
    table = lines_of(sent.stdout)
    assert ["total", "2"] in table and ["done", "yes"] in table

    stdin = "phone number,name\n+4930123456 11,Ann\n+4930123456 12,Bob\n+4930123456 13,\n"
    piped = run(
        "send", "--source", SOURCE, "--recipients", "-", "--text", "Hi {name|there}", "--json",
        stdin=stdin,
    )  # fmt: skip
    queued = json.loads(piped.stdout)
    assert (queued["queued"], queued["rejected"]) == (3, 0)
    status = json.loads(run("status", queued["campaign_id"], "--wait", "--json").stdout)
    assert status["done"] is True
    settled = {state: n for state, n in status["counts"].items() if n}
    assert set(settled) <= {"sent", "failed"} and sum(settled.values()) == 3, settled

    # The HTTP API serves the same Redis, with the token the env file gives.
    [api] = [p["where"] for p in processes if p["name"] == "api"]
    answer = httpx.get(
        f"{api}v1/campaigns/{cid}",
        headers={"authorization": f"Bearer {env['SMSQ_API_TOKEN']}"},
        timeout=10,
    )
    assert answer.status_code == 200 and answer.json()["done"] is True

    stopped = make(state_dir, "down")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "smsq is down" in stopped.stdout
    for p in processes:
        assert f"{p['name']} (pid {p['pid']}) stopped" in stopped.stdout
    assert not any(running(p["pid"]) for p in processes)
    assert in_groups({p["pid"] for p in processes}) == []
    assert not (state_dir / "up.json").exists() and not (state_dir / "env").exists()

    after = make(state_dir, "down")
    assert after.returncode == 0 and "smsq is not up" in after.stdout
