"""The events consumer helper (producer.consumer) on a real redis-server: each group gets
every event, a consumer killed before it acked gets its events again, consumers of one group
share the events, and a dead consumer's events can be claimed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from ledger import events
from ops.stack import ROOT, RedisServer, wait_for
from producer.consumer import EventConsumer

STREAM = "smsq:events"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path).start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server: RedisServer) -> Iterator[redis.Redis]:
    c = server.client()
    yield c
    c.close()


def publish(client: redis.Redis, first: int, count: int) -> list[str]:
    """Add events numbered first.. as the ledger would; returns their entry ids."""
    ids = []
    for n in range(first, first + count):
        event = events.message_event("c1", f"c1-{n}", f"4930{n:08d}", "37041123456")
        event["type"] = "accepted"
        ids.append(client.xadd(STREAM, {"data": events.encode(event)}).decode())
    return ids


def numbers(deliveries: list[dict]) -> list[int]:
    return [int(e["message_id"].split("-")[1]) for e in deliveries]


def drain(consumer: EventConsumer) -> list[dict]:
    handled: list[dict] = []
    consumer.run(handled.append, follow=False)
    return handled


def test_each_group_gets_every_event(server: RedisServer, client: redis.Redis) -> None:
    publish(client, 0, 5)
    billing = EventConsumer(server.url, "billing", "b1")
    crm = EventConsumer(server.url, "crm", "c1")
    assert numbers(drain(billing)) == [0, 1, 2, 3, 4]
    publish(client, 5, 3)
    assert numbers(drain(crm)) == list(range(8))
    assert numbers(drain(billing)) == [5, 6, 7]
    # Everything handled was acked: nothing is pending in either group.
    assert client.xpending(STREAM, "billing")["pending"] == 0
    assert client.xpending(STREAM, "crm")["pending"] == 0
    billing.close()
    crm.close()


def test_a_group_created_at_the_end_skips_history(server: RedisServer, client) -> None:
    publish(client, 0, 3)
    with EventConsumer(server.url, "late", "l1", start="$") as late:
        late.ensure_group()
        publish(client, 3, 2)
        assert numbers(drain(late)) == [3, 4]


def test_a_consumer_that_stopped_before_acking_gets_the_event_again(server, client) -> None:
    publish(client, 0, 4)
    with EventConsumer(server.url, "billing", "b1", count=2) as first:
        seen = []
        for delivery in first.consume(follow=False):
            seen.append(delivery.event)
            if len(seen) == 3:
                # The handler for the third event fails: the loop ends without its ack.
                break
    assert numbers(seen) == [0, 1, 2]
    publish(client, 4, 2)
    with EventConsumer(server.url, "billing", "b1") as again:
        assert numbers(drain(again)) == [2, 3, 4, 5]


def test_a_killed_consumer_process_resumes_where_it_stopped(
    server: RedisServer, client: redis.Redis, tmp_path: Path
) -> None:
    publish(client, 0, 6)
    handled = tmp_path / "handled.txt"
    # A real process whose handler dies by SIGKILL in the middle of the third event: the
    # event was read and half-handled, never acked.
    script = textwrap.dedent(
        f"""
        import os, signal
        from producer.consumer import EventConsumer

        def handle(event):
            with open({str(handled)!r}, "a") as f:
                f.write(event["message_id"] + "\\n")
            if event["message_id"] == "c1-2":
                os.kill(os.getpid(), signal.SIGKILL)

        EventConsumer({server.url!r}, "billing", "worker-1").run(handle)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=dict(os.environ), timeout=60
    )
    assert proc.returncode == -signal.SIGKILL
    assert handled.read_text().split() == ["c1-0", "c1-1", "c1-2"]
    assert client.xpending(STREAM, "billing")["pending"] >= 1

    publish(client, 6, 1)
    with EventConsumer(server.url, "billing", "worker-1") as restarted:
        assert numbers(drain(restarted)) == [2, 3, 4, 5, 6]
    assert client.xpending(STREAM, "billing")["pending"] == 0


def test_consumers_of_one_group_share_the_events(server: RedisServer, client) -> None:
    publish(client, 0, 10)
    a = EventConsumer(server.url, "billing", "a", count=4)
    b = EventConsumer(server.url, "billing", "b", count=4)
    took_a = []
    for delivery in a.consume(follow=False):
        took_a.append(delivery.event)
        if len(took_a) == 4:
            break
    # a has read four and acked three; b gets neither those nor the unacked one.
    took_b = drain(b)
    assert numbers(took_a) == [0, 1, 2, 3]
    assert numbers(took_b) == [4, 5, 6, 7, 8, 9]
    # a, run again, gets only its own unacked event back.
    assert numbers(drain(a)) == [3]
    a.close()
    b.close()


def test_a_dead_consumers_events_are_claimed_after_the_idle_time(server, client) -> None:
    publish(client, 0, 3)
    dead = EventConsumer(server.url, "billing", "dead")
    for _ in dead.consume(follow=False):
        break  # read three (count is 100), acked none, never comes back
    dead.close()
    assert client.xpending(STREAM, "billing")["pending"] == 3

    with EventConsumer(server.url, "billing", "alive") as alive:
        assert drain(alive) == []  # not idle long enough for the default: no claim

    def idle_ms() -> int:
        pending = client.xpending_range(STREAM, "billing", "-", "+", 10)
        return min(int(p["time_since_delivered"]) for p in pending)

    # Redis's clock decides: every pending event idle for longer than the 200 ms allowed.
    wait_for(lambda: idle_ms() > 200, 5, "the dead consumer's events to be idle 200 ms")
    with EventConsumer(server.url, "billing", "alive", claim_idle_ms=200) as alive:
        assert numbers(drain(alive)) == [0, 1, 2]
    assert client.xpending(STREAM, "billing")["pending"] == 0


def test_pending_events_trimmed_from_the_stream_are_skipped(server, client) -> None:
    ids = publish(client, 0, 3)
    with EventConsumer(server.url, "billing", "b1") as first:
        for _ in first.consume(follow=False):
            break
    client.xdel(STREAM, ids[0], ids[1])
    with EventConsumer(server.url, "billing", "b1") as again:
        assert numbers(drain(again)) == [2]
    assert client.xpending(STREAM, "billing")["pending"] == 0


def test_stop_ends_a_following_loop(server: RedisServer, client: redis.Redis) -> None:
    publish(client, 0, 2)
    handled: list[dict] = []
    with EventConsumer(server.url, "billing", "b1", block_ms=100) as consumer:

        def handle(event: dict) -> None:
            handled.append(event)
            if len(handled) == 2:
                consumer.stop()

        started = time.monotonic()
        assert consumer.run(handle) == 2
    assert time.monotonic() - started < 5
    assert numbers(handled) == [0, 1]
