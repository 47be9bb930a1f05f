"""Webhooks end to end: a private redis-server, two real `python -m webhooks` processes (one
killed mid-campaign and replaced) and a real receiver on loopback that answers 500 to 30% of
requests (seeded) and is down for 20 s in the middle. Every event is delivered at least once
with the same webhook-id on every try, every request's signature verifies, nothing is lost;
an endpoint that always fails ends in the failures list once SMSQ_WEBHOOK_RETRY_S has passed.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import random
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest
from redis.asyncio import Redis

from ledger.settings import Settings
from ledger.webhooks import Failure, WebhookStore
from ops.stack import Proc, RedisServer, free_port, wait_for

pytestmark = pytest.mark.integration

T = TypeVar("T")
STREAM = "smsq:events"
CAMPAIGNS = ("0123456789abcdef", "fedcba9876543210")
TYPES = ("accepted", "sent", "failed")
# Events written (about 100 a second), the receiver's failing share, its outage.
EVENTS = 1500
FAIL_SHARE = 0.3
DOWN_AFTER_S = 5.0
DOWN_FOR_S = 20.0


def verified(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Standard Webhooks verification, written from the specification, not from smsq's signer."""
    key = base64.b64decode(secret.split("_", 1)[1])
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    fresh = abs(time.time() - int(headers["webhook-timestamp"])) < 300
    offered = [s.split(",", 1)[1] for s in headers["webhook-signature"].split() if s[:3] == "v1,"]
    return fresh and any(hmac.compare_digest(expected, s) for s in offered)


class Receiver:
    """An HTTP server on loopback recording every request; answers 500 to a seeded share of
    them, and, while down, refuses connections and drops the ones already open."""

    def __init__(self, fail_share: float, seed: int = 19) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.fail_share = fail_share
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.got: list[dict[str, Any]] = []
        self.down = False
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                if receiver.down:
                    self.close_connection = True
                    return
                with receiver.lock:
                    status = 500 if receiver.rng.random() < receiver.fail_share else 204
                    receiver.got.append(
                        {
                            "path": self.path,
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "body": body,
                            "status": status,
                            "at": time.time(),
                        }
                    )
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.down = False
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.down = True
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def requests(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.got if r["path"] == path]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


def settings_for(server: RedisServer, **extra: Any) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None, redis_url=server.url, webhook_allow_private=True, **extra
    )


def with_store(server: RedisServer, work: Callable[[WebhookStore], Any]) -> Any:
    async def main() -> Any:
        client = Redis.from_url(server.url)
        try:
            return await work(WebhookStore(client, settings_for(server)))
        finally:
            await client.aclose()

    return asyncio.run(main())


def start_delivery(server: RedisServer, tmp_path: Path, name: str, **env: str) -> Proc:
    values = {
        "SMSQ_REDIS_URL": server.url,
        "SMSQ_WEBHOOK_ALLOW_PRIVATE": "true",
        "SMSQ_WEBHOOKS_METRICS_PORT": str(free_port()),
        "SMSQ_LOG_LEVEL": "INFO",
        "PATH": "/usr/bin:/bin",
        **env,
    }
    proc = Proc(name, [sys.executable, "-m", "webhooks"], values, tmp_path / f"{name}.log")
    proc.metrics_url = f"http://127.0.0.1:{values['SMSQ_WEBHOOKS_METRICS_PORT']}/metrics"
    proc.start()
    wait_for(lambda: "webhooks_started" in proc.log(), 20, f"{name} to start")
    return proc


def write_events(server: RedisServer, count: int, per_s: float) -> dict[str, bytes]:
    """Write message events as the ledger does (one XADD each, field data); entry id -> JSON."""
    client = server.client()
    written: dict[str, bytes] = {}
    started = time.monotonic()
    try:
        for n in range(count):
            cid = CAMPAIGNS[n % 2]
            event = {
                "type": TYPES[n % 3],
                "campaign_id": cid,
                "message_id": f"{cid}-{n}",
                "didww_id": None,
                "destination": "37041654321",
                "source": "37041123456",
                "at": "2026-12-07T19:00:00.000Z",
            }
            data = json.dumps(event, separators=(",", ":")).encode()
            entry = client.xadd(STREAM, {"data": data}, maxlen=1_000_000, approximate=True)
            written[entry.decode()] = data
            pause = started + (n + 1) / per_s - time.monotonic()
            if pause > 0:
                time.sleep(pause)
    finally:
        client.close()
    return written


@pytest.mark.timeout(300)
def test_every_event_delivered_signed_through_errors_an_outage_and_a_kill(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    receiver = Receiver(FAIL_SHARE).start()

    async def subscribe(store: WebhookStore) -> tuple[Any, Any]:
        everything = await store.create(receiver.url + "/all")
        sent_of_one = await store.create(receiver.url + "/sent", ["sent"], CAMPAIGNS[0])
        return everything, sent_of_one

    everything, sent_of_one = with_store(redis_server, subscribe)
    secrets = {"/all": everything.secret, "/sent": sent_of_one.secret}
    env = {"SMSQ_WEBHOOK_BACKOFF_MAX_S": "2", "SMSQ_WEBHOOK_TIMEOUT_S": "2"}
    first = start_delivery(redis_server, tmp_path, "webhooks-1", **env)
    second = start_delivery(redis_server, tmp_path, "webhooks-2", **env)
    third: Proc | None = None
    written: dict[str, bytes] = {}
    try:
        writer = threading.Thread(
            target=lambda: written.update(write_events(redis_server, EVENTS, 100.0))
        )
        writer.start()
        time.sleep(DOWN_AFTER_S)
        receiver.stop()
        down_at = time.time()
        # A delivery process dies (a lost host) while the receiver is down and events flow;
        # another takes its place.
        time.sleep(3)
        second.kill_group()
        third = start_delivery(redis_server, tmp_path, "webhooks-3", **env)
        time.sleep(DOWN_FOR_S - 3)
        receiver.start()
        writer.join()
        assert len(written) == EVENTS

        wanted_all = {f"msg_{e}" for e in written}
        events = {e: json.loads(data) for e, data in written.items()}
        wanted_sent = {
            f"msg_{e}"
            for e, event in events.items()
            if event["type"] == "sent" and event["campaign_id"] == CAMPAIGNS[0]
        }

        def delivered(path: str) -> set[str]:
            got = receiver.requests(path)
            return {r["headers"]["webhook-id"] for r in got if r["status"] < 300}

        def all_delivered() -> bool:
            for proc in (first, third):
                proc.check_alive()
            return delivered("/all") >= wanted_all and delivered("/sent") >= wanted_sent

        wait_for(all_delivered, 150, "every event delivered")

        for path, wanted in (("/all", wanted_all), ("/sent", wanted_sent)):
            got = receiver.requests(path)
            by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for r in got:
                assert verified(secrets[path], r["headers"], r["body"]), r["headers"]
                assert r["headers"]["content-type"] == "application/json"
                by_id[r["headers"]["webhook-id"]].append(r)
            # Only the events it asked for, each with its own bytes, retried under one id.
            assert set(by_id) == wanted
            for wid, tries in by_id.items():
                assert {t["body"] for t in tries} == {written[wid.removeprefix("msg_")]}
            retried = [tries for tries in by_id.values() if tries[0]["status"] == 500]
            assert retried and all(any(t["status"] < 300 for t in tries) for tries in retried)

        # The outage happened mid-stream: events written while down were delivered after it.
        written_while_down = [e for e in written if down_at * 1000 < int(e.split("-")[0])]
        assert written_while_down

        async def left(store: WebhookStore) -> tuple[int, int, list[Failure]]:
            return (
                await store.pending(everything.subscription.id),
                await store.pending(sent_of_one.subscription.id),
                await store.failures(),
            )

        wait_for(lambda: with_store(redis_server, left)[:2] == (0, 0), 30, "nothing owed")
        assert with_store(redis_server, left)[2] == []
        client = redis_server.client()
        try:
            assert client.xpending(STREAM, "smsq-webhooks")["pending"] == 0
        finally:
            client.close()

        page = urllib.request.urlopen(first.metrics_url, timeout=5).read().decode()
        assert 'smsq_webhook_deliveries_total{outcome="delivered"' in page
        assert 'result="5xx"' in page
        # Requests failed while the receiver was down (refused, or dropped unanswered).
        assert 'result="connect_error"' in page or 'result="error"' in page
        for proc in (first, third):
            assert proc.stop() == 0, proc.log()
            assert "webhooks_stopped" in proc.log()
            for secret in secrets.values():
                assert secret.removeprefix("whsec_") not in proc.log()
    finally:
        for proc in (first, second, third):
            if proc is not None:
                proc.stop()
        receiver.stop()


@pytest.mark.timeout(120)
def test_an_endpoint_that_always_fails_ends_in_the_failures_list(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    receiver = Receiver(fail_share=1.0).start()
    created = with_store(redis_server, lambda store: store.create(receiver.url + "/broken"))
    wid = created.subscription.id
    proc = start_delivery(
        redis_server,
        tmp_path,
        "webhooks-1",
        SMSQ_WEBHOOK_RETRY_S="3",
        SMSQ_WEBHOOK_BACKOFF_MAX_S="0.5",
    )
    try:
        written = write_events(redis_server, 5, 50.0)

        async def failures(store: WebhookStore) -> list[Failure]:
            return await store.failures(webhook=wid)

        wait_for(lambda: len(with_store(redis_server, failures)) == 5, 60, "5 failures listed")
        listed = with_store(redis_server, failures)
        assert {f.id for f in listed} == {f"msg_{e}" for e in written}
        tries: dict[str, int] = defaultdict(int)
        for r in receiver.requests("/broken"):
            assert verified(created.secret, r["headers"], r["body"])
            tries[r["headers"]["webhook-id"]] += 1
        for f in listed:
            assert f.event == json.loads(written[f.id.removeprefix("msg_")])
            assert (f.webhook, f.url, f.error) == (wid, receiver.url + "/broken", "5xx")
            # Tried again and again under the same id, for the whole window.
            assert f.attempts >= 2 and tries[f.id] >= f.attempts
            assert f.failed_at > f.first_attempt_at
        assert with_store(redis_server, lambda store: store.pending(wid)) == 0
        assert "webhook_delivery_failed" in proc.log()
    finally:
        proc.stop()
        receiver.stop()
