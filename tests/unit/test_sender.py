"""Tests for worker.sender: one batch against fakeredis and a mock DIDWW, every outcome
ending in the right ledger state with the right number of POSTs."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import fakeredis
import fakeredis.aioredis
import httpx
import pytest
from smsq_testing import OWNER, make_settings

from ledger import keys
from ledger.settings import Settings
from ledger.states import CampaignState
from ledger.store import Ledger
from worker.didww import DidwwClient
from worker.limiter import RateLimiter
from worker.sender import BACKOFF, HALTED, PAUSED, RETRY_LATER, BatchResult, Sender

Handler = Callable[[httpx.Request], httpx.Response]


class Didww:
    """A mock DIDWW that records every POST and answers from a script per destination."""

    def __init__(self, answer: Callable[[str, int], httpx.Response] | None = None) -> None:
        self.posts: list[tuple[float, str]] = []
        self.answer = answer or (lambda dest, n: created(dest, n))

    def destinations(self) -> list[str]:
        return [d for _, d in self.posts]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        dest = json.loads(request.content)["data"]["attributes"]["destination"]
        self.posts.append((time.monotonic(), dest))
        nth = sum(1 for _, d in self.posts if d == dest)
        return self.answer(dest, nth)


def created(dest: str, nth: int = 1) -> httpx.Response:
    return httpx.Response(201, json={"data": {"type": "outbound_messages", "id": f"id-{dest}"}})


def raise_(exc_type: type[httpx.TransportError]) -> httpx.Response:
    raise exc_type("no answer", request=httpx.Request("POST", "http://didww.test"))


def send(
    server: fakeredis.FakeServer,
    cfg: Settings,
    cid: str,
    didww: Didww,
    *,
    batch_no: int = 0,
    times: int = 1,
    before: Callable[[Ledger], Any] | None = None,
) -> list[BatchResult]:
    """Run send_batch ``times`` times concurrently, as a twice-delivered task would."""

    async def go() -> list[BatchResult]:
        redis = fakeredis.aioredis.FakeRedis(server=server)
        ledger = Ledger(redis, cfg)
        if before is not None:
            await before(ledger)
        client = DidwwClient(cfg, transport=httpx.MockTransport(didww))
        limiter = RateLimiter(redis, cfg.send_interval_s)
        # A task delivered twice runs in two worker processes: two owners.
        senders = [Sender(ledger, client, limiter, cfg, f"{OWNER}{i}") for i in range(times)]
        try:
            return list(await asyncio.gather(*(s.send_batch(cid, batch_no) for s in senders)))
        finally:
            await client.aclose()
            await redis.aclose()

    return asyncio.run(go())


def test_a_batch_of_20_is_accepted_with_one_post_each(
    server, settings, make_campaign, states, counts, read_events, sync_redis
) -> None:
    cid = make_campaign(20)
    didww = Didww()
    [result] = send(server, settings, cid, didww)
    assert result.accepted == 20
    assert result.stopped is None
    assert sorted(didww.destinations()) == [f"3706{i:07d}" for i in range(20)]
    assert set(states(cid).values()) == {"accepted"}
    assert counts(cid) == {"accepted": 20}
    accepted = read_events()
    assert len(accepted) == 20 and {e["type"] for e in accepted} == {"accepted"}
    assert {e["didww_id"] for e in accepted} == {f"id-3706{i:07d}" for i in range(20)}
    assert sync_redis.get(keys.didww("id-37060000005")) == f"{cid}|0|5".encode()


def test_only_its_own_batch_is_sent(server, settings, make_campaign, states) -> None:
    cid = make_campaign(5, batch_size=2)
    didww = Didww()
    [result] = send(server, settings, cid, didww, batch_no=1)
    assert result.accepted == 2
    assert sorted(didww.destinations()) == ["37060000002", "37060000003"]
    assert states(cid, 0) == {0: "queued", 1: "queued"}
    assert states(cid, 2) == {4: "queued"}


def test_a_task_delivered_twice_posts_each_message_once(
    server, settings, make_campaign, counts
) -> None:
    cid = make_campaign(10)
    didww = Didww()
    results = send(server, settings, cid, didww, times=2)
    assert sorted(didww.destinations()) == sorted(set(didww.destinations()))
    assert len(didww.posts) == 10
    assert sum(r.accepted for r in results) == 10
    assert counts(cid) == {"accepted": 10}
    # And delivered a third time, later: nothing left to send.
    [again] = send(server, settings, cid, didww)
    assert again.accepted == 0 and len(didww.posts) == 10


def test_400_rejects_with_didww_detail(server, settings, make_campaign, states, read_events):
    cid = make_campaign(["37060000000", "37060000001"])

    def answer(dest: str, nth: int) -> httpx.Response:
        if dest == "37060000001":
            return httpx.Response(400, json={"errors": [{"detail": "Invalid destination"}]})
        return created(dest)

    didww = Didww(answer)
    [result] = send(server, settings, cid, didww)
    assert (result.accepted, result.rejected) == (1, 1)
    assert len(didww.posts) == 2
    assert states(cid) == {0: "accepted", 1: "rejected"}
    [rejected] = [e for e in read_events() if e["type"] == "rejected"]
    assert rejected["detail"] == "Invalid destination"
    assert rejected["message_id"] == f"{cid}-1"


def test_401_halts_keeps_messages_queued_and_stops_the_batch(
    server, make_campaign, states, counts, read_events, sync_redis
) -> None:
    cfg = make_settings(concurrency=1)
    cid = make_campaign(6)

    def answer(dest: str, nth: int) -> httpx.Response:
        if dest == "37060000002":
            return httpx.Response(401, json={"errors": [{"detail": "Authorization failed"}]})
        return created(dest)

    didww = Didww(answer)
    [result] = send(server, cfg, cid, didww)
    assert result.stopped == HALTED
    assert result.accepted == 2
    assert result.released == 1
    # Posting stopped at the 401: the later messages were never posted.
    assert didww.destinations() == ["37060000000", "37060000001", "37060000002"]
    assert states(cid) == {
        0: "accepted",
        1: "accepted",
        2: "queued",
        3: "queued",
        4: "queued",
        5: "queued",
    }
    assert counts(cid) == {"accepted": 2, "queued": 4}
    assert sync_redis.exists(keys.halt()) == 1
    alerts = [e for e in read_events() if e["type"] == "auth_failed"]
    assert len(alerts) == 1 and alerts[0]["detail"] == "Authorization failed"


def test_401_under_concurrency_raises_one_alert(
    server, settings, make_campaign, counts, read_events
) -> None:
    cid = make_campaign(10)
    didww = Didww(lambda dest, n: httpx.Response(401))
    [result] = send(server, settings, cid, didww)
    assert result.stopped == HALTED
    assert result.accepted == 0
    assert counts(cid) == {"queued": 10}
    assert [e["type"] for e in read_events()] == ["auth_failed"]


def test_halted_trunk_posts_nothing(server, settings, make_campaign, states) -> None:
    cid = make_campaign(3)
    didww = Didww()
    [result] = send(server, settings, cid, didww, before=lambda ledger: ledger.halt("401"))
    assert result.stopped == HALTED
    assert didww.posts == []
    assert set(states(cid).values()) == {"queued"}


def test_halt_seen_while_waiting_to_retry_releases_the_message(
    server, make_campaign, states, sync_redis
) -> None:
    cfg = make_settings(concurrency=1)
    cid = make_campaign(2)

    def answer(dest: str, nth: int) -> httpx.Response:
        # Another worker got a 401 while this request waits to retry its 503.
        sync_redis.set(keys.halt(), "{}")
        return httpx.Response(503)

    didww = Didww(answer)
    [result] = send(server, cfg, cid, didww)
    assert result.stopped == HALTED
    assert len(didww.posts) == 1
    assert states(cid) == {0: "queued", 1: "queued"}


def test_503_then_201_is_accepted_after_a_retry(
    server, settings, make_campaign, states, counts
) -> None:
    cid = make_campaign(3)
    didww = Didww(lambda dest, n: httpx.Response(503) if n == 1 else created(dest))
    [result] = send(server, settings, cid, didww)
    assert result.accepted == 3
    assert result.stopped is None
    assert len(didww.posts) == 6
    assert counts(cid) == {"accepted": 3}


def test_connect_error_is_retried(server, settings, make_campaign, states) -> None:
    cid = make_campaign(1)
    didww = Didww(lambda dest, n: raise_(httpx.ConnectError) if n == 1 else created(dest))
    [result] = send(server, settings, cid, didww)
    assert result.accepted == 1
    assert len(didww.posts) == 2
    assert states(cid) == {0: "accepted"}


def test_429_retry_after_is_honoured(server, make_campaign, states, monkeypatch) -> None:
    # No jitter anywhere, so the only wait left is the one Retry-After asked for.
    monkeypatch.setattr("worker.sender.random.uniform", lambda a, b: 0.0)
    cfg = make_settings(retry_max_wait_s=2.0)
    cid = make_campaign(1)

    def answer(dest: str, nth: int) -> httpx.Response:
        if nth == 1:
            return httpx.Response(429, headers={"Retry-After": "0.3"})
        return created(dest)

    didww = Didww(answer)
    [result] = send(server, cfg, cid, didww)
    assert result.accepted == 1
    assert len(didww.posts) == 2
    gap = didww.posts[1][0] - didww.posts[0][0]
    assert 0.29 <= gap < 1.0
    assert states(cid) == {0: "accepted"}


def test_read_timeout_marks_unknown_and_is_not_posted_again(
    server, settings, make_campaign, states, read_events
) -> None:
    cid = make_campaign(2)

    def answer(dest: str, nth: int) -> httpx.Response:
        if dest == "37060000000":
            return raise_(httpx.ReadTimeout)
        return created(dest)

    didww = Didww(answer)
    [result] = send(server, settings, cid, didww)
    assert (result.unknown, result.accepted) == (1, 1)
    assert didww.destinations().count("37060000000") == 1
    assert states(cid) == {0: "unknown", 1: "accepted"}
    [unknown] = [e for e in read_events() if e["type"] == "unknown"]
    assert "ReadTimeout" in unknown["detail"]
    # A second delivery of the task does not post it again either.
    send(server, settings, cid, didww)
    assert didww.destinations().count("37060000000") == 1


def test_resend_policy_retries_a_read_timeout(server, make_campaign, states) -> None:
    cfg = make_settings(ambiguous="resend")
    cid = make_campaign(1)
    didww = Didww(lambda dest, n: raise_(httpx.ReadTimeout) if n == 1 else created(dest))
    [result] = send(server, cfg, cid, didww)
    assert result.accepted == 1 and result.unknown == 0
    assert len(didww.posts) == 2
    assert states(cid) == {0: "accepted"}


def test_exhausted_retries_release_to_queued_and_retry_later(
    server, make_campaign, states, counts, read_events, sync_redis
) -> None:
    cfg = make_settings(concurrency=1, retry_attempts=3)
    cid = make_campaign(3)
    didww = Didww(lambda dest, n: httpx.Response(503))
    [result] = send(server, cfg, cid, didww)
    assert result.stopped == RETRY_LATER
    assert result.released == 1
    # Three attempts for the first message, then the batch stops.
    assert didww.destinations() == ["37060000000"] * 3
    assert counts(cid) == {"queued": 3}
    # Every worker backs off: one alert, a flag with a TTL, and this batch parked.
    assert [e["type"] for e in read_events()] == ["api_unavailable"]
    assert 0 < sync_redis.pttl(keys.backoff()) <= 30 * 1.2 * 1000
    assert sync_redis.zrange(keys.parked(), 0, -1) == [f"{cid}|0".encode()]


def test_paused_campaign_posts_nothing(server, settings, make_campaign, states) -> None:
    cid = make_campaign(4, state=CampaignState.PAUSED)
    didww = Didww()
    [result] = send(server, settings, cid, didww)
    assert result.stopped == PAUSED
    assert didww.posts == []
    assert set(states(cid).values()) == {"queued"}


@pytest.mark.parametrize(
    ("kind", "options"),
    [("expired", {"ttl_s": -1}), ("cancelled", {"state": CampaignState.CANCELLED})],
)
def test_expired_or_cancelled_campaign_is_settled_without_posting(
    server, settings, make_campaign, counts, read_events, kind: str, options: dict[str, Any]
) -> None:
    cid = make_campaign(5, **options)
    didww = Didww()
    [result] = send(server, settings, cid, didww)
    assert getattr(result, kind) == 5
    assert didww.posts == []
    assert counts(cid) == {kind: 5}
    assert [e["type"] for e in read_events()] == [kind] * 5


def test_missing_campaign(server, settings) -> None:
    didww = Didww()
    [result] = send(server, settings, "nope", didww)
    assert result.stopped == "missing"
    assert didww.posts == []


def test_a_batch_leaves_no_heartbeat_behind_and_sweeps_its_own_leftovers(
    server, settings, make_campaign, states, read_events, sync_redis
) -> None:
    cid = make_campaign(3)

    async def leftover(ledger: Ledger) -> None:
        # An earlier attempt by this same process claimed message 1 and then lost Redis.
        c = await ledger.campaign(cid)
        assert c is not None
        records = await ledger.records(cid, 0)
        assert await ledger.claim(c, records[1], f"{OWNER}0") == ["claimed"]

    didww = Didww()
    [result] = send(server, settings, cid, didww, before=leftover)
    assert result.accepted == 2
    assert states(cid) == {0: "accepted", 1: "unknown", 2: "accepted"}
    assert "37060000001" not in didww.destinations()
    assert sync_redis.hlen(keys.inflight()) == 0
    [unknown] = [e for e in read_events() if e["type"] == "unknown"]
    assert unknown["detail"] == "an earlier attempt stopped mid-request"


def test_a_batch_refused_by_a_backoff_is_parked(
    server, settings, make_campaign, counts, sync_redis
) -> None:
    cid = make_campaign(3)
    sync_redis.set(keys.backoff(), "{}", px=60_000)
    didww = Didww()
    [result] = send(server, settings, cid, didww)
    assert result.stopped == BACKOFF
    assert didww.destinations() == []
    assert counts(cid) == {"queued": 3}
    assert sync_redis.zrange(keys.parked(), 0, -1) == [f"{cid}|0".encode()]


def test_a_redis_error_mid_batch_comes_out_as_itself_for_the_task_to_retry(
    server, settings, make_campaign, monkeypatch
) -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    cid = make_campaign(5)

    async def broken_claim(self, c, r, owner):  # type: ignore[no-untyped-def]
        raise RedisConnectionError("Redis went away")

    monkeypatch.setattr(Ledger, "claim", broken_claim)
    with pytest.raises(RedisConnectionError, match="went away"):
        send(server, settings, cid, Didww())
