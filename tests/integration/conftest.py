"""Integration fixtures: a private redis-server on a free port, real Celery workers, the
simulator and the ingester as real processes (see ops/stack.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from ledger import keys
from ledger.records import Record, iter_batch
from ops.stack import RedisServer, Stack, default_settings_env

SOURCE = "37041123456"


class TestStack(Stack):
    __test__ = False  # a helper, not a test class, whatever pytest thinks of its name
    server: RedisServer

    def redis(self) -> redis.Redis:
        return self.server.client()

    def records(self, cid: str) -> dict[str, Record]:
        """destination -> its message record, read straight from the ledger's batches."""
        client = self.redis()
        try:
            found = {}
            raw = client.hgetall(keys.campaign(cid))
            batch_size, batches = int(raw[b"batch_size"]), int(raw[b"batches"])
            for batch_no in range(batches):
                data = client.get(keys.batch(cid, batch_no)) or b""
                for record in iter_batch(batch_no * batch_size, data):
                    found[record.destination] = record
            return found
        finally:
            client.close()

    def states(self, cid: str) -> dict[str, str]:
        """destination -> state."""
        return {d: str(r.state) for d, r in self.records(cid).items()}

    def events(self) -> list[dict[str, Any]]:
        client = self.redis()
        try:
            return [json.loads(f[b"data"]) for _, f in client.xrange("smsq:events")]
        finally:
            client.close()

    def send(self, *args: str) -> dict[str, Any]:
        result = self.smsq("send", "--source", SOURCE, "--json", *args)
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))

    def status(self, cid: str) -> dict[str, Any]:
        result = self.smsq("status", cid, "--json")
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))

    def wait_until(
        self, cid: str, check: Callable[[dict[str, Any]], bool], timeout_s: float = 90
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        status = self.status(cid)
        while not check(status):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; last status {status}\n{self.logs_tail()}")
            for worker in self.workers:
                worker.check_alive()
            time.sleep(0.3)
            status = self.status(cid)
        return status

    def wait_done(self, cid: str, timeout_s: float = 90) -> dict[str, Any]:
        return self.wait_until(cid, lambda s: bool(s["done"]), timeout_s)

    def logs_tail(self, lines: int = 20) -> str:
        parts = []
        for proc in [*self.workers, self.callbacks, self.simulator]:
            if proc is not None:
                parts.append(f"--- {proc.name}\n" + "\n".join(proc.log().splitlines()[-lines:]))
        return "\n".join(parts)


@pytest.fixture
def make_stack(tmp_path: Path) -> Iterator[Callable[..., TestStack]]:
    made: list[TestStack] = []

    def make(rate_per_s: int = 100, appendonly: bool = False, **env: str) -> TestStack:
        server = RedisServer(tmp_path / f"stack{len(made)}", appendonly=appendonly).start()
        workdir = server.dir.parent
        settings = default_settings_env(
            server.url,
            **{
                "SMSQ_RATE_LIMIT": str(rate_per_s),
                "SMSQ_PROBE_INTERVAL_S": "1",
                # Kept callbacks are matched to unknown messages once this has passed.
                "SMSQ_READ_TIMEOUT_S": "5",
                **env,
            },
        )
        stack = TestStack(workdir, server.url, settings)
        stack.server = server
        made.append(stack)
        return stack

    yield make
    for stack in made:
        stack.stop()
        stack.server.stop()


def write_numbers(path: Path, count: int, start: int = 0) -> list[str]:
    numbers = [f"4930{start + i:08d}" for i in range(count)]
    path.write_text("destination\n" + "\n".join(f"+{n}" for n in numbers) + "\n")
    return numbers
