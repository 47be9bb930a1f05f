"""Tests for the callbacks service's /metrics hygiene: the Redis figures are read at most once
per SMSQ_METRICS_CACHE_S and shared by concurrent scrapes (failures are not kept), a bearer
token guards the page, and SMSQ_CALLBACKS_METRICS_PORT moves it to a port of its own."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import fakeredis
import fakeredis.aioredis
import httpx
import pytest
from smsq_testing import TOKEN, make_settings

from callbacks.app import create_app
from callbacks.metrics import Cached
from ledger.settings import Settings
from ops.stack import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]


class CountingRedis(fakeredis.aioredis.FakeRedis):
    """Counts the scrape's first command (one per read of the figures), slowly enough that
    scrapes sent together overlap."""

    reads = 0

    async def zrevrange(self, *args: Any, **kwargs: Any) -> Any:
        type(self).reads += 1
        await asyncio.sleep(0.05)
        return await super().zrevrange(*args, **kwargs)


@pytest.fixture
def counting() -> type[CountingRedis]:
    class Fresh(CountingRedis):
        reads = 0

    return Fresh


@asynccontextmanager
async def client_for(
    server: fakeredis.FakeServer,
    cfg: Settings,
    redis_class: type[fakeredis.aioredis.FakeRedis] = fakeredis.aioredis.FakeRedis,
) -> AsyncIterator[httpx.AsyncClient]:
    redis = redis_class(server=server)
    app = create_app(cfg, redis=redis)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cb.test") as client:
            yield client
    await redis.aclose()


# --- Cached, on a clock the test moves


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_read_is_kept_for_its_age_then_read_again() -> None:
    clock, reads = Clock(), []

    async def read() -> int:
        reads.append(clock.now)
        return len(reads)

    async def steps() -> list[int]:
        cached = Cached(read, 5.0, clock)
        got = [await cached.get()]
        clock.now += 4.9
        got.append(await cached.get())
        clock.now += 0.1
        got.append(await cached.get())
        return got

    assert asyncio.run(steps()) == [1, 1, 2]
    assert reads == [1000.0, 1005.0]


def test_concurrent_callers_share_one_read() -> None:
    calls = 0

    async def read() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return "figures"

    async def steps() -> list[str]:
        cached = Cached(read, 5.0, Clock())
        return list(await asyncio.gather(*(cached.get() for _ in range(5))))

    assert asyncio.run(steps()) == ["figures"] * 5
    assert calls == 1


def test_a_failed_read_is_shared_but_not_kept() -> None:
    calls = 0

    async def read() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        if calls == 1:
            raise ConnectionError("down")
        return "figures"

    async def steps() -> tuple[list[Any], str]:
        cached = Cached(read, 5.0, Clock())
        failed = await asyncio.gather(*(cached.get() for _ in range(3)), return_exceptions=True)
        return failed, await cached.get()

    failed, after = asyncio.run(steps())
    assert all(isinstance(e, ConnectionError) for e in failed)
    assert after == "figures" and calls == 2


def test_a_caller_that_goes_away_does_not_cancel_the_read() -> None:
    calls = 0

    async def read() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return "figures"

    async def steps() -> str:
        cached = Cached(read, 5.0, Clock())
        first = asyncio.create_task(cached.get())
        await asyncio.sleep(0.01)
        first.cancel()
        return await cached.get()

    assert asyncio.run(steps()) == "figures" and calls == 1


# --- through the app


def test_scrapes_within_the_cache_age_cost_one_redis_read(
    server: fakeredis.FakeServer, counting: type[CountingRedis]
) -> None:
    async def steps() -> list[int]:
        async with client_for(server, make_settings(metrics_cache_s=60), counting) as client:
            seen = []
            for _ in range(3):
                assert (await client.get("/metrics")).status_code == 200
                seen.append(counting.reads)
            pages = await asyncio.gather(*(client.get("/metrics") for _ in range(4)))
            assert all(p.status_code == 200 for p in pages)
            seen.append(counting.reads)
            return seen

    assert asyncio.run(steps()) == [1, 1, 1, 1]


def test_a_scrape_after_the_cache_age_reads_redis_again(
    server: fakeredis.FakeServer, counting: type[CountingRedis]
) -> None:
    async def steps() -> list[int]:
        async with client_for(server, make_settings(metrics_cache_s=0.2), counting) as client:
            seen = []
            for _ in range(2):
                assert (await client.get("/metrics")).status_code == 200
                seen.append(counting.reads)
                await asyncio.sleep(0.25)
            return seen

    assert asyncio.run(steps()) == [1, 2]


def test_concurrent_scrapes_after_expiry_share_one_read(
    server: fakeredis.FakeServer, counting: type[CountingRedis]
) -> None:
    async def steps() -> int:
        async with client_for(server, make_settings(metrics_cache_s=0), counting) as client:
            pages = await asyncio.gather(*(client.get("/metrics") for _ in range(5)))
            assert all(p.status_code == 200 for p in pages)
            return counting.reads

    assert asyncio.run(steps()) == 1


def test_a_redis_error_is_not_cached(
    server: fakeredis.FakeServer, counting: type[CountingRedis]
) -> None:
    async def steps() -> list[int]:
        async with client_for(server, make_settings(metrics_cache_s=60), counting) as client:
            server.connected = False
            down = await client.get("/metrics")
            server.connected = True
            up = await client.get("/metrics")
            again = await client.get("/metrics")
            return [down.status_code, up.status_code, again.status_code, counting.reads]

    assert asyncio.run(steps()) == [503, 200, 200, 2]


def test_callback_counters_are_current_on_a_cached_page(server: fakeredis.FakeServer) -> None:
    """Only the Redis figures are cached: this process's counters are read at every scrape."""

    async def steps() -> tuple[str, str]:
        async with client_for(server, make_settings(metrics_cache_s=60)) as client:
            before = (await client.get("/metrics")).text
            refused = await client.post("/callbacks?token=wrong", content=b"{}")
            assert refused.status_code == 401
            return before, (await client.get("/metrics")).text

    before, after = asyncio.run(steps())

    def unauthorized(page: str) -> float:
        line = 'smsq_callbacks_total{outcome="unauthorized",status="invalid"} '
        found = [float(x.removeprefix(line)) for x in page.splitlines() if x.startswith(line)]
        return found[0] if found else 0.0

    assert unauthorized(after) == unauthorized(before) + 1


# --- SMSQ_METRICS_TOKEN


@pytest.mark.parametrize(
    ("header", "status"),
    [
        (None, 401),
        ("Bearer wrong", 401),
        (f"Basic {TOKEN}", 401),
        ("Bearer metrics-SECRET", 200),
        ("bearer metrics-SECRET", 200),
    ],
)
def test_a_metrics_token_is_asked_for(
    server: fakeredis.FakeServer, header: str | None, status: int
) -> None:
    cfg = make_settings(metrics_token="metrics-SECRET")

    async def steps() -> httpx.Response:
        async with client_for(server, cfg) as client:
            headers = {"Authorization": header} if header else {}
            return await client.get("/metrics", headers=headers)

    response = asyncio.run(steps())
    assert response.status_code == status
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
        assert "smsq_" not in response.text
    else:
        assert "smsq_messages" in response.text


def test_no_token_is_asked_for_by_default(server: fakeredis.FakeServer) -> None:
    async def steps() -> httpx.Response:
        async with client_for(server, make_settings()) as client:
            return await client.get("/metrics")

    assert asyncio.run(steps()).status_code == 200


# --- SMSQ_CALLBACKS_METRICS_PORT


def test_a_metrics_port_serves_metrics_there_only(server: fakeredis.FakeServer) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    cfg = make_settings(callbacks_metrics_port=port, metrics_token="metrics-SECRET")
    auth = {"Authorization": "Bearer metrics-SECRET"}

    async def steps() -> dict[str, int | str]:
        redis = fakeredis.aioredis.FakeRedis(server=server)
        app = create_app(cfg, redis=redis, metrics_listener=listener)
        got: dict[str, int | str] = {}
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://cb.test") as main:
                got["main /metrics"] = (await main.get("/metrics", headers=auth)).status_code
                got["main /healthz"] = (await main.get("/healthz")).status_code
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as side:
                page = await side.get("/metrics", headers=auth)
                got["side /metrics"] = page.status_code
                got["side page"] = page.text
                got["side no token"] = (await side.get("/metrics")).status_code
                got["side /healthz"] = (await side.get("/healthz")).status_code
                callback = await side.post(f"/callbacks?token={TOKEN}", content=b"{}")
                got["side /callbacks"] = callback.status_code
        await redis.aclose()
        return got

    got = asyncio.run(steps())
    assert got.pop("side page").startswith("# HELP smsq_messages")  # type: ignore[union-attr]
    assert got == {
        "main /metrics": 404,
        "main /healthz": 200,
        "side /metrics": 200,
        "side no token": 401,
        "side /healthz": 404,
        "side /callbacks": 404,
    }
    # Stopped with the app: the port is free again.
    with socket.create_server(("127.0.0.1", port)):
        pass


def test_python_m_callbacks_serves_metrics_on_its_own_port(tmp_path: Path) -> None:
    """The command as deployed: both ports served by one process, which SIGTERM stops."""
    port, metrics_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SMSQ_")},
        "PYTHONPATH": str(ROOT),
        "SMSQ_CALLBACK_TOKEN": TOKEN,
        # Nothing listens there: /metrics answers 503, which shows who serves it.
        "SMSQ_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "SMSQ_CALLBACKS_METRICS_PORT": str(metrics_port),
    }
    argv = [sys.executable, "-m", "callbacks", "--port", str(port)]
    proc = subprocess.Popen(
        argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/healthz").is_success, 30, "ingester")
        assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 404
        assert httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").status_code == 503
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    assert '"event": "metrics_served"' in output, output
    # A graceful stop (uvicorn raises the signal again once it has shut down).
    assert "Application shutdown complete." in output, output
    assert proc.returncode in (0, -signal.SIGTERM), output


def test_python_m_callbacks_stops_when_the_metrics_port_is_taken(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("SMSQ_")},
            "PYTHONPATH": str(ROOT),
            "SMSQ_CALLBACK_TOKEN": TOKEN,
            "SMSQ_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
            "SMSQ_CALLBACKS_METRICS_PORT": str(taken.getsockname()[1]),
        }
        argv = [sys.executable, "-m", "callbacks", "--port", str(free_port())]
        result = subprocess.run(
            argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False
        )
    assert result.returncode == 1
    assert "metrics_port_unavailable" in result.stdout + result.stderr
