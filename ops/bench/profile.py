"""Where a worker's time goes: py-spy records the smsq workers from outside (no change to
the code under test), and the collapsed stacks are summed per function.
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
from pathlib import Path

# Functions whose own time says what to change; everything else rolls up into its caller.
TOP_FUNCTIONS = 15


def py_spy() -> str | None:
    """py-spy from PATH or from the virtualenv running the benchmark."""
    beside = Path(sys.executable).with_name("py-spy")
    return shutil.which("py-spy") or (str(beside) if beside.exists() else None)


def record(pid: int, duration_s: float, out: Path) -> subprocess.Popen[bytes] | None:
    """Start py-spy on a Celery worker and its pool processes; None if py-spy is missing.

    py-spy leaves idle threads out by default, so the samples are time spent on the CPU."""
    exe = py_spy()
    if exe is None:
        return None
    argv = [
        exe, "record", "--pid", str(pid), "--subprocesses", "--nonblocking",
        "--duration", str(max(1, round(duration_s))), "--rate", "200",
        "--format", "raw", "--output", str(out),
    ]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize(raw: Path, top: int = TOP_FUNCTIONS) -> list[str]:
    """The functions holding the most samples, by own time and by module, as text lines."""
    own: collections.Counter[str] = collections.Counter()
    by_module: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    where: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[_short(frames[-1])] += count
        by_module[_module(frames)] += count
        where[_where(frames)] += count
        for name in {_short(f) for f in frames if _is_ours(f)}:
            inclusive[name] += count
    if not total:
        return ["no samples"]
    lines = [f"{total} samples; by process and thread:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in where.most_common()]
    lines.append("own time by function:")
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    lines.append("own time by module:")
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in by_module.most_common(top)]
    lines.append("time under smsq's own functions (callees included):")
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    return lines


def _where(frames: list[str]) -> str:
    """Which process and thread a sample is from: --subprocesses names the worker's main
    process first, then a pool process; a thread's stack starts in Thread._bootstrap (in a
    pool process that is the sending engine's thread; in the main process, the supervisor)."""
    pool = len(frames) > 1 and frames[1].startswith("process ")
    thread = any(f.startswith("Thread._bootstrap ") for f in frames)
    if pool:
        return "pool processes, engine thread" if thread else "pool processes, main thread (tasks)"
    return "worker main process, threads" if thread else "worker main process, main thread"


def _is_ours(frame: str) -> bool:
    """A frame in one of smsq's packages (py-spy names files relative to sys.path)."""
    return any(f" ({package}/" in frame for package in ("worker", "ledger", "callbacks"))


def _short(frame: str) -> str:
    """'send (worker/didww.py:120)' -> 'send (worker/didww.py)', paths cut to the package."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({_package_path(path)})"


def _package_path(path: str) -> str:
    for marker in ("site-packages/", "/lib/python3."):
        if marker in path:
            tail = path.split(marker, 1)[1]
            return tail if marker == "site-packages/" else "stdlib/" + tail.split("/", 1)[-1]
    for root in ("worker/", "ledger/", "producer/", "callbacks/", "ops/"):
        if f"/{root}" in path:
            return root + path.split(f"/{root}", 1)[1]
    return path


def _module(frames: list[str]) -> str:
    """The top-level package of the innermost frame: httpx, redis, asyncio, worker, ..."""
    for frame in reversed(frames):
        path = _package_path(frame.partition(" (")[2].rstrip(")").rsplit(":", 1)[0])
        head = path.split("/", 1)[0]
        if head and head != "stdlib":
            return head
        if head == "stdlib":
            return "stdlib:" + path.split("/")[1].removesuffix(".py")
    return "?"
