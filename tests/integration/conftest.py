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
from ledger.campaigns import Campaign
from ledger.records import Record, iter_batch
from ops.ha import RedisHA
from ops.stack import RedisServer, Stack, default_settings_env, free_port

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
            c = Campaign.from_hash(cid, client.hgetall(keys.campaign(cid)))
            for batch_no in range(c.batches):
                data = client.get(keys.batch(cid, batch_no)) or b""
                for record in iter_batch(c.first_index(batch_no), data):
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

    def wait_for(self, check: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
        """Poll check every 0.1 s until it holds; fail naming what was awaited. A test waits
        on a signal like this, never sleeps for a guessed time."""
        deadline = time.monotonic() + timeout_s
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout_s:.0f} s waiting for {what}\n{self.logs_tail()}"
                )
            for worker in self.workers:
                worker.check_alive()
            time.sleep(0.1)

    def logged(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        """The workers' JSON log lines of this event whose fields have these values."""
        found = []
        for worker in self.workers:
            for line in worker.log().splitlines():
                if not line.startswith("{") or f'"{event}"' not in line:
                    continue
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # the line being written
                if entry.get("event") == event and fields.items() <= entry.items():
                    found.append(entry)
        return found

    def set_aside(self, cid: str) -> bool:
        """Whether the workers have let go of all the campaign's remaining work: none of its
        messages is sending (every request written has been answered), no worker process holds
        one of its batches, and every batch with a queued message is parked."""
        client = self.redis()
        try:
            c = Campaign.from_hash(cid, client.hgetall(keys.campaign(cid)))
            held = [f for f in client.hkeys(keys.inflight()) if f.decode().startswith(f"{cid}|")]
            parked = [keys.parse_batch_member(m) for m in client.zrange(keys.parked(), 0, -1)]
        finally:
            client.close()
        records = self.records(cid).values()
        if held or any(r.state == "sending" for r in records):
            return False
        waiting = {c.batch_of(r.index) for r in records if r.state == "queued"}
        return waiting <= {batch for parked_cid, batch in parked if parked_cid == cid}

    def let_go(self, cid: str) -> bool:
        """Whether every batch of the campaign has been let go by a worker (batch_done): the
        claim script answered for each, a pause or a cancel if there was one."""
        client = self.redis()
        try:
            c = Campaign.from_hash(cid, client.hgetall(keys.campaign(cid)))
        finally:
            client.close()
        done = {e["batch"] for e in self.logged("batch_done", campaign_id=cid)}
        return done >= set(range(c.batches))

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


class HATestStack(TestStack):
    """A TestStack whose Redis is a primary, a replica and three sentinels (ops/ha.py): every
    component finds the primary through the sentinels; the test's own reads go to whichever
    server the sentinels name primary now."""

    __test__ = False
    ha: RedisHA

    def redis(self) -> redis.Redis:
        return self.ha.current().client()


@pytest.fixture
def make_ha_stack(tmp_path: Path) -> Iterator[Callable[..., HATestStack]]:
    """Like make_stack, on top of RedisHA with SMSQ_REDIS_MIN_REPLICAS=min_replicas."""
    made: list[HATestStack] = []

    def make(rate_per_s: int = 100, min_replicas: int = 1, **env: str) -> HATestStack:
        workdir = tmp_path / f"ha{len(made)}"
        ha = RedisHA(workdir)
        try:
            ha.start()
        except BaseException:
            ha.stop()
            raise
        # Through the sentinels only the URL's database counts; its host and port are a
        # port nobody listens on, so a client that ignored the sentinels fails loudly (and
        # never reaches a Redis it should not touch).
        unused = f"redis://127.0.0.1:{free_port()}/0"
        settings = default_settings_env(
            unused,
            **{
                **ha.settings_env(min_replicas=min_replicas),
                "SMSQ_REDIS_URL": unused,
                "SMSQ_RATE_LIMIT": str(rate_per_s),
                "SMSQ_PROBE_INTERVAL_S": "1",
                "SMSQ_READ_TIMEOUT_S": "5",
                **env,
            },
        )
        stack = HATestStack(workdir, unused, settings)
        stack.ha = ha
        made.append(stack)
        return stack

    yield make
    for stack in made:
        stack.stop()
        stack.ha.stop()


def write_numbers(path: Path, count: int, start: int = 0) -> list[str]:
    numbers = [f"4930{start + i:08d}" for i in range(count)]
    path.write_text("destination\n" + "\n".join(f"+{n}" for n in numbers) + "\n")
    return numbers
