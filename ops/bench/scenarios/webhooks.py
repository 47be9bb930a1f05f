"""Webhook delivery: at least 2,000 deliveries per second to a local receiver on 2 cores.

Two `python -m webhooks` processes (SMSQ_WEBHOOK_ALLOW_PRIVATE=true, for http:// on loopback)
on a private redis-server deliver a backlog of events, written to the stream as the ledger
writes them, to 1 and to 4 subscriptions on one receiver (ops/bench/receiver.py, a process of
its own). Measured once every event is fanned out and a warm-up has passed: deliveries
recorded per second over a steady window, and CPU per delivery. Baseline: the same delivery
service posting through httpx's own pool (ops/bench/httpx_webhooks.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis

from ledger.events import encode
from ledger.settings import Settings
from ledger.webhooks import WebhookStore
from ops.bench.harness import Context, wait_until
from ops.bench.measure import CpuMeter, metric_total
from ops.bench.report import Row, ScenarioResult
from ops.stack import START_TIMEOUT_S, Proc, RedisServer, free_port, wait_for
from webhooks.service import GROUP

NAME = "webhooks"
TARGET_PER_S = 2_000
# Two delivery processes on two cores, as the issue asks.
PROCESSES = 2
DELIVERED = "smsq_webhook_deliveries_total"
# Events go to the stream in pipelines of this many XADDs.
WRITE_CHUNK = 2_000
# How long the fan-out of the whole backlog may take before the run gives up.
FAN_OUT_TIMEOUT_S = 120.0
CAMPAIGN = "0123456789abcdef"


def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult(NAME)
    sizes = ctx.sizes
    for subscriptions in sizes.webhook_subscriptions:
        smsq = _measure(ctx, subscriptions, "webhooks")
        httpx_pool = _measure(ctx, subscriptions, "ops.bench.httpx_webhooks")
        label = f"{subscriptions} subscription{'s' if subscriptions > 1 else ''}"
        why = (
            f"in the window: the delivery processes {smsq['cores_webhooks']:.2f} cores, "
            f"redis-server {smsq['cores_redis']:.2f}, the receiver {smsq['cores_receiver']:.2f}, "
            f"the rest of the machine {smsq['cores_others']:.2f} (of {os.cpu_count()})"
        )
        result.rows += [
            Row(NAME, f"deliveries per second, {label}", "/s", smsq["per_s"],
                httpx_pool["per_s"], TARGET_PER_S,
                baseline_text=f"{httpx_pool['per_s']:,.0f} (httpx pool)", why=why),
            Row(NAME, f"CPU per delivery, delivery processes, {label}", "us",
                smsq["us_per_delivery"], httpx_pool["us_per_delivery"],
                baseline_text=f"{httpx_pool['us_per_delivery']:,.0f} (httpx pool)"),
        ]  # fmt: skip
        result.data[f"{subscriptions}"] = {"smsq": smsq, "httpx_pool": httpx_pool}
        for kind, figures in (("smsq", smsq), ("httpx pool", httpx_pool)):
            result.notes.append(
                f"{label}, {kind}: {figures['delivered']:,} delivered in "
                f"{figures['window_s']:.1f} s ({figures['answered']:,} answered by the receiver), "
                f"{figures['events']:,} events fanned out in {figures['fan_out_s']:.1f} s; "
                f"CPU per delivery: redis-server {figures['us_redis']:,.0f} us, receiver "
                f"{figures['us_receiver']:,.0f} us; in cores: delivery processes "
                f"{figures['cores_webhooks']:.2f}, redis-server {figures['cores_redis']:.2f}, "
                f"receiver {figures['cores_receiver']:.2f}, the rest of the machine "
                f"{figures['cores_others']:.2f}"
                + ("; THE BACKLOG RAN OUT in the window" if figures["ran_dry"] else "")
            )
    result.notes.insert(
        0,
        f"{PROCESSES} python -m webhooks processes, SMSQ_WEBHOOK_CONNECTIONS 16 (default), a "
        f"backlog of {sizes.webhook_deliveries:,} deliveries ('sent' events, one XADD each, "
        f"field data) written before they start; window {sizes.webhook_window_s:.0f} s after "
        f"the fan-out ends and {sizes.webhook_warmup_s:.0f} s of warm-up; receiver: "
        "ops/bench/receiver.py (uvicorn, httptools, answers 204)",
    )
    return result


def _measure(ctx: Context, subscriptions: int, module: str) -> dict[str, Any]:
    """One run: a fresh redis-server, receiver and delivery processes; the window's figures."""
    sizes = ctx.sizes
    folder = ctx.folder(f"{NAME}-{subscriptions}-{module.rpartition('.')[2]}")
    server = RedisServer(folder).start()
    procs: list[Proc] = []
    receiver: Proc | None = None
    try:
        receiver, receiver_url = _receiver(folder)
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None, redis_url=server.url, webhook_allow_private=True
        )
        urls = [f"{receiver_url}/hook/{n}" for n in range(subscriptions)]
        wids = asyncio.run(_subscribe(settings, urls))
        events = sizes.webhook_deliveries // subscriptions
        _write_events(server, settings, events)
        began = time.monotonic()
        procs = [_delivery(server, folder, module, n) for n in range(PROCESSES)]
        for proc in procs:
            wait_for(partial(_started, proc), START_TIMEOUT_S, proc.name)
        client = server.client()
        try:
            if not wait_until(lambda: _fanned_out(client, settings, procs), FAN_OUT_TIMEOUT_S):
                raise RuntimeError(f"events not fanned out within {FAN_OUT_TIMEOUT_S:.0f} s")
            fan_out_s = time.monotonic() - began
            wait_for(lambda: _delivered(procs) > 0, START_TIMEOUT_S, "the first delivery")
            _sleep(procs, sizes.webhook_warmup_s)
            pids = {
                "webhooks": [p.popen.pid for p in procs if p.popen],
                "redis": [server.proc.popen.pid] if server.proc and server.proc.popen else [],
                "receiver": [receiver.popen.pid] if receiver.popen else [],
            }
            delivered_before, answered_before = _delivered(procs), _answered(receiver_url)
            meter = CpuMeter(pids)
            _sleep(procs, sizes.webhook_window_s)
            delivered, answered = _delivered(procs), _answered(receiver_url)
            meter.stop()
            owed = asyncio.run(_owed(settings, wids))
        finally:
            client.close()
    finally:
        for proc in procs:
            proc.stop()
        if receiver is not None:
            receiver.stop()
        server.stop()
    count = delivered - delivered_before
    per = 1e6 / count if count else 0.0
    return {
        "subscriptions": subscriptions,
        "events": events,
        "fan_out_s": fan_out_s,
        "window_s": meter.elapsed_s,
        "delivered": int(count),
        "answered": answered - answered_before,
        "per_s": count / meter.elapsed_s,
        "us_per_delivery": meter.seconds["webhooks"] * per,
        "us_redis": meter.seconds["redis"] * per,
        "us_receiver": meter.seconds["receiver"] * per,
        "cores_webhooks": meter.cores("webhooks"),
        "cores_redis": meter.cores("redis"),
        "cores_receiver": meter.cores("receiver"),
        "cores_others": meter.cores("others") + meter.cores("bench"),
        "ran_dry": owed == 0,
    }


async def _subscribe(settings: Settings, urls: list[str]) -> list[str]:
    client = Redis.from_url(settings.redis_url)
    try:
        store = WebhookStore(client, settings)
        wids = [(await store.create(url)).subscription.id for url in urls]
    finally:
        await client.aclose()
    # A subscription gets the events written after it was created, never one of its own
    # millisecond: the backlog starts on the next one.
    await asyncio.sleep(0.005)
    return wids


async def _owed(settings: Settings, wids: list[str]) -> int:
    client = Redis.from_url(settings.redis_url)
    try:
        store = WebhookStore(client, settings)
        return sum([await store.pending(wid) for wid in wids])
    finally:
        await client.aclose()


def _write_events(server: RedisServer, settings: Settings, count: int) -> None:
    """'sent' events as the ledger writes them: one XADD each, the JSON in field data, the
    stream capped near SMSQ_EVENTS_MAXLEN."""
    client = server.client()
    try:
        for first in range(0, count, WRITE_CHUNK):
            pipe = client.pipeline(transaction=False)
            for n in range(first, min(count, first + WRITE_CHUNK)):
                event = {
                    "type": "sent",
                    "campaign_id": CAMPAIGN,
                    "message_id": f"{CAMPAIGN}-{n}",
                    "didww_id": f"7e3c9b1a-{n:012d}",
                    "destination": f"4930{n:08d}",
                    "source": "37041123456",
                    "at": "2026-12-07T19:00:00.000Z",
                }
                pipe.xadd(
                    settings.events_stream,
                    {"data": encode(event)},
                    maxlen=settings.events_maxlen,
                    approximate=True,
                )
            pipe.execute()
    finally:
        client.close()


def _receiver(folder: Path) -> tuple[Proc, str]:
    port = free_port()
    argv = [sys.executable, "-m", "ops.bench.receiver", "--host", "127.0.0.1", "--port", str(port)]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    proc = Proc("receiver", argv, env, folder / "receiver.log").start()
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        proc.check_alive()
        return httpx.get(f"{url}/_count", timeout=1.0).status_code == 200

    wait_for(up, START_TIMEOUT_S, "the receiver")
    return proc, url


def _delivery(server: RedisServer, folder: Path, module: str, n: int) -> Proc:
    port = free_port()
    # Only what it needs: a proxy variable in the bench's environment would change the
    # transport under test.
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "SMSQ_REDIS_URL": server.url,
        "SMSQ_WEBHOOK_ALLOW_PRIVATE": "true",
        "SMSQ_WEBHOOKS_METRICS_PORT": str(port),
        "SMSQ_LOG_LEVEL": "INFO",
    }
    argv = [sys.executable, "-m", module]
    proc = Proc(f"{module} {n}", argv, env, folder / f"delivery-{n}.log").start()
    proc.metrics_url = f"http://127.0.0.1:{port}/metrics"
    return proc


def _started(proc: Proc) -> bool:
    proc.check_alive()
    return "webhooks_started" in proc.log()


def _fanned_out(client: Any, settings: Settings, procs: list[Proc]) -> bool:
    """Every event read by the group and acknowledged (scheduled)."""
    for proc in procs:
        proc.check_alive()
    groups = {g["name"].decode(): g for g in client.xinfo_groups(settings.events_stream)}
    group = groups.get(GROUP)
    if group is None or group["pending"]:
        return False
    last = client.xrevrange(settings.events_stream, count=1)
    return bool(last) and group["last-delivered-id"] == last[0][0]


def _delivered(procs: list[Proc]) -> float:
    return metric_total(procs, DELIVERED, outcome="delivered")


def _answered(url: str) -> int:
    return int(json.loads(httpx.get(f"{url}/_count", timeout=5.0).text)["answered"])


def _sleep(procs: list[Proc], seconds: float) -> None:
    """Sleep, checking every half second that the delivery processes live."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        for proc in procs:
            proc.check_alive()
        time.sleep(min(0.5, left))
