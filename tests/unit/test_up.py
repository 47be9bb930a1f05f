"""Tests for ops/up.py's bookkeeping: `down` stops exactly the processes `up` recorded, never
a process that merely has a recorded pid, and says so when nothing is up. Starting the whole
stack is tests/integration/test_cli_habits.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest
from click.testing import CliRunner

from ops import up
from ops.stack import StackError


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process in a session of its own, as `up` starts each."""
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def record(state_dir: Path, *entries: up.Entry) -> None:
    state_dir.mkdir(exist_ok=True)
    processes = [asdict(e) for e in entries]
    (state_dir / up.STATE_FILE).write_text(json.dumps({"processes": processes}))
    (state_dir / up.ENV_FILE).write_text("export SMSQ_REDIS_URL=redis://127.0.0.1:1/0\n")


def entry(pid: int, started: str | None = None) -> up.Entry:
    found = up._start_time(pid) if started is None else started
    assert found is not None
    return up.Entry("sleeper", pid, found, "", "sleeper.log")


def down(state_dir: Path) -> str:
    result = CliRunner().invoke(up.main, ["--state-dir", str(state_dir), "down"])
    assert result.exit_code == 0, result.output
    return result.output


def test_down_when_nothing_is_up(tmp_path: Path) -> None:
    assert down(tmp_path) == f"smsq is not up (nothing recorded in {tmp_path}/up.json)\n"


def test_down_stops_what_up_recorded_and_forgets_it(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    record(tmp_path, entry(sleeper.pid))
    output = down(tmp_path)
    assert f"sleeper (pid {sleeper.pid}) stopped\n" in output
    assert sleeper.wait(10) == -15
    assert not (tmp_path / up.STATE_FILE).exists() and not (tmp_path / up.ENV_FILE).exists()
    assert down(tmp_path).startswith("smsq is not up")


def test_a_reused_pid_is_not_taken_for_a_recorded_process(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    # The same pid, started at another time: another process, never signalled.
    record(tmp_path, entry(sleeper.pid, started="1"))
    assert f"sleeper (pid {sleeper.pid}) had already exited\n" in down(tmp_path)
    assert sleeper.poll() is None


def test_a_zombie_does_not_count_as_running(sleeper: subprocess.Popen[bytes]) -> None:
    recorded = entry(sleeper.pid)
    assert up._running(recorded)
    sleeper.send_signal(signal.SIGKILL)
    # Killed but not reaped (no wait() yet): what an orphan stays when nobody reaps it.
    stat = Path(f"/proc/{sleeper.pid}/stat")
    while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.01)
    assert not up._running(recorded)


def test_up_when_up_says_so_and_starts_nothing(
    tmp_path: Path, sleeper: subprocess.Popen[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    record(tmp_path, entry(sleeper.pid))

    def must_not_start(*args: object) -> None:
        raise AssertionError("started again")

    monkeypatch.setattr(up, "_start", must_not_start)
    result = CliRunner().invoke(up.main, ["--state-dir", str(tmp_path), "up"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"smsq is already up; logs in {tmp_path}/\n")
    assert f"pid {sleeper.pid}" in result.output
    assert sleeper.poll() is None


def test_a_state_file_that_is_not_ours_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / up.STATE_FILE).write_text("{not json")
    result = CliRunner().invoke(up.main, ["--state-dir", str(tmp_path), "down"])
    assert result.exit_code == 1
    assert "up.json is not what `make up` writes" in result.output


def test_a_start_that_fails_stops_everything_it_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    children: list[subprocess.Popen[bytes]] = []

    def start_two_then_fail(state_dir: Path, started: list[up.Entry]) -> dict[str, str]:
        for _ in range(2):
            children.append(subprocess.Popen(["sleep", "300"], start_new_session=True))
        # The first became ready and was recorded; the second never did.
        started.append(entry(children[0].pid))
        up._save(state_dir, started)
        raise StackError("timed out after 30 s waiting for the simulator")

    monkeypatch.setattr(up, "_start", start_two_then_fail)
    # Not this test process's own standard input.
    monkeypatch.setattr(os, "dup2", lambda *args: None)
    # A child this process had before (as the tests' own redis-servers are): not up's to stop.
    earlier = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        result = CliRunner().invoke(up.main, ["--state-dir", str(tmp_path), "up"])
        assert result.exit_code == 1
        assert result.output == "make up: timed out after 30 s waiting for the simulator\n"
        assert [child.wait(10) for child in children] == [-signal.SIGTERM, -signal.SIGKILL]
        assert not (tmp_path / up.STATE_FILE).exists()
        assert earlier.poll() is None
    finally:
        for child in [*children, earlier]:
            child.kill()
            child.wait()
