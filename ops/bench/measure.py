"""Measurements taken from outside the processes under test: arrival rates and windows,
CPU time and resident memory from /proc, the workers' Prometheus figures and log lines.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from ops.stack import Proc


def rate_in_window(times: Sequence[float], start: float, end: float) -> float:
    """Arrivals per second within [start, end)."""
    return sum(1 for t in times if start <= t < end) / (end - start)


def mean_rate(times: Sequence[float]) -> float:
    """Arrivals per second from the first to the last one."""
    if len(times) < 2:
        return 0.0
    ordered = sorted(times)
    return (len(ordered) - 1) / (ordered[-1] - ordered[0])


def fullest_window(times: Sequence[float], window_s: float = 1.0) -> tuple[int, float]:
    """The most events in any half-open window [t, t + window_s) starting at an event (as
    ops.stack.max_in_any_window counts them), and when the first such window starts."""
    ordered = sorted(times)
    best, start, lo = 0, ordered[0] if ordered else 0.0, 0
    for hi, t in enumerate(ordered):
        while ordered[lo] <= t - window_s:
            lo += 1
        if hi - lo + 1 > best:
            best, start = hi - lo + 1, ordered[lo]
    return best, start


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


def cpu_seconds(pids: Sequence[int]) -> float:
    """CPU time (user and system) used so far by processes and all their descendants, from
    /proc/PID/stat (Linux)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for member in {m for pid in pids for m in (pid, *descendants(pid))}:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{member}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def host_cpu_seconds() -> tuple[float, float]:
    """CPU time the whole machine was busy so far (every process, the kernel), and the time
    the hypervisor took from it (steal), from /proc/stat (Linux)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    ticks = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / ticks, steal / ticks


def _own_cpu_seconds() -> float:
    """CPU time of this process (every thread), not of its children."""
    times = os.times()
    return times.user + times.system


class CpuMeter:
    """CPU used by each component of a stack over an interval, in cores (1.0 = one core busy
    for the whole interval), read from /proc before and after; `bench` is the benchmark's own
    process, `others` what the rest of the machine used meanwhile (other people's jobs on a
    shared host), `steal` what the hypervisor took."""

    def __init__(self, parts: dict[str, list[int]]) -> None:
        self.parts = parts
        self.began = time.monotonic()
        self.before = {name: cpu_seconds(pids) for name, pids in self.parts.items()}
        self.bench_before = _own_cpu_seconds()
        self.host_before = host_cpu_seconds()
        self.elapsed_s = 0.0
        self.seconds: dict[str, float] = {}

    def stop(self) -> CpuMeter:
        self.elapsed_s = time.monotonic() - self.began
        self.seconds = {
            name: cpu_seconds(pids) - self.before[name] for name, pids in self.parts.items()
        }
        self.seconds["bench"] = _own_cpu_seconds() - self.bench_before
        busy, steal = (
            after - before
            for after, before in zip(host_cpu_seconds(), self.host_before, strict=True)
        )
        self.seconds["others"] = max(0.0, busy - sum(self.seconds.values()))
        self.seconds["steal"] = steal
        return self

    def cores(self, name: str) -> float:
        return self.seconds.get(name, 0.0) / self.elapsed_s if self.elapsed_s else 0.0

    def describe(self) -> str:
        shares = ", ".join(f"{name} {self.cores(name):.2f}" for name in self.seconds)
        return f"CPU in cores (of {os.cpu_count()}): {shares}"


def metric_samples(url: str) -> list[tuple[str, dict[str, str], float]]:
    """A worker's Prometheus figures as (name, labels, value); [] if it does not answer."""
    try:
        text = httpx.get(url, timeout=5).text
    except httpx.HTTPError:
        return []
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, rest = head.partition("{")
        labels = {}
        for pair in rest.rstrip("}").split(","):
            key, _, quoted = pair.partition("=")
            if key:
                labels[key] = quoted.strip('"')
        with contextlib.suppress(ValueError):
            samples.append((name, labels, float(value)))
    return samples


def metric_total(procs: Sequence[Proc], name: str, **labels: str) -> float:
    """A figure summed over workers (and label values), e.g. every process's in-flight
    requests."""
    total = 0.0
    for proc in procs:
        for sample, have, value in metric_samples(proc.metrics_url):
            if sample == name and all(have.get(k) == v for k, v in labels.items()):
                total += value
    return total


class LogTail:
    """Events the smsq workers logged from now on (their JSON lines), counted by name."""

    def __init__(self, procs: Sequence[Proc]) -> None:
        self.offsets = {
            proc.log_path: proc.log_path.stat().st_size if proc.log_path.exists() else 0
            for proc in procs
        }

    def events(self) -> list[dict[str, Any]]:
        found = []
        for path, offset in self.offsets.items():
            with path.open("rb") as log:
                log.seek(offset)
                for line in log:
                    if line.startswith(b"{"):
                        with contextlib.suppress(ValueError):
                            found.append(json.loads(line))
        return found

    def count(self) -> Counter[str]:
        return Counter(str(e.get("event")) for e in self.events())


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank: with 20 values p99 is the largest."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]
