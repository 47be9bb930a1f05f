"""ledger/webhooks.py and its scripts on a private redis-server: subscriptions (no secret in a
listing, rotate, delete with what is owed), scheduling acknowledges the events, a lease keeps
a delivery to one process until it ends, outcomes apply only under their lease, failures are
listed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from redis.asyncio import Redis
from smsq_testing import make_settings

from ledger import keys
from ledger.errors import InputError
from ledger.webhooks import ROTATION_GRACE_S, Outcome, WebhookStore

T = TypeVar("T")
GROUP = "smsq-webhooks"
CID = "0123456789abcdef"


def run(redis_server: Any, work: Callable[[WebhookStore], Awaitable[T]], **settings: Any) -> T:
    async def main() -> T:
        client = Redis.from_url(redis_server.url)
        try:
            custom = make_settings(**{"webhook_allow_private": True, **settings})
            return await work(WebhookStore(client, custom))
        finally:
            await client.aclose()

    return asyncio.run(main())


def add_events(real_redis: Any, *events: dict[str, Any]) -> list[str]:
    real_redis.xgroup_create("smsq:events", GROUP, id="0", mkstream=True)
    return [real_redis.xadd("smsq:events", {"data": json.dumps(e)}).decode() for e in events]


def test_create_list_rotate_delete(redis_server: Any, real_redis: Any) -> None:
    async def work(store: WebhookStore) -> None:
        created = await store.create("http://127.0.0.1:9/hook", ["sent", "failed"], CID)
        sub = created.subscription
        assert created.secret.startswith("whsec_")
        assert sub.id.startswith("wh_") and sub.created_at_ms > 0
        listed = await store.subscriptions()
        assert listed == [sub]
        assert created.secret not in json.dumps([s.public() for s in listed])
        assert created.secret not in str(real_redis.hgetall(keys.webhooks()))
        now_ms = sub.created_at_ms
        assert await store.secrets(now_ms) == {sub.id: [created.secret]}

        new = await store.rotate(sub.id)
        assert new and new != created.secret
        # The previous secret signs beside the new one for the grace period, then stops.
        assert await store.secrets(now_ms) == {sub.id: [new, created.secret]}
        after_grace = now_ms + (ROTATION_GRACE_S + 60) * 1000
        assert await store.secrets(after_grace) == {sub.id: [new]}
        newest = await store.rotate(sub.id)
        assert await store.secrets(now_ms) == {sub.id: [newest, new]}
        assert await store.rotate("wh_missing") is None

        assert await store.delete(sub.id)
        assert not await store.delete(sub.id)
        assert await store.subscriptions() == []
        assert await store.secrets(now_ms) == {}

    run(redis_server, work)


def test_create_refuses_bad_input(redis_server: Any, real_redis: Any) -> None:
    async def work(store: WebhookStore) -> None:
        with pytest.raises(InputError):
            await store.create("http://127.0.0.1/hook")
        with pytest.raises(InputError):
            await store.create("https://93.184.215.14/hook", ["delivered"])
        with pytest.raises(InputError):
            await store.create("https://93.184.215.14/hook", ["sent"], "not-a-campaign")
        assert await store.subscriptions() == []

    run(redis_server, work, webhook_allow_private=False)


def test_schedule_acks_and_skips_deleted_subscriptions(redis_server: Any, real_redis: Any) -> None:
    first, second, third = add_events(
        real_redis, {"type": "sent"}, {"type": "failed"}, {"type": "sent"}
    )
    real_redis.xreadgroup(GROUP, "c1", {"smsq:events": ">"})

    async def work(store: WebhookStore) -> None:
        a = (await store.create("http://127.0.0.1:9/a")).subscription
        b = (await store.create("http://127.0.0.1:9/b")).subscription
        await store.delete(b.id)
        plan = [(first, b'{"type":"sent"}', [a.id, b.id]), (second, b"{}", []), (third, "", [])]
        assert await store.schedule(GROUP, plan, [a.id, b.id]) == 1
        assert await store.schedule(GROUP, plan[:1], [a.id, b.id]) == 0  # owed once
        assert await store.pending(a.id) == 1

    run(redis_server, work)
    assert real_redis.xpending("smsq:events", GROUP)["pending"] == 0
    assert real_redis.keys("smsq:webhook:wh_*") != []
    assert all(b"wh_" in k for k in real_redis.keys("smsq:webhook:*:*"))


def test_a_lease_holds_a_delivery_and_its_end_frees_it(redis_server: Any, real_redis: Any) -> None:
    (eid,) = add_events(real_redis, {"type": "sent"})

    async def work(store: WebhookStore) -> None:
        wid = (await store.create("http://127.0.0.1:9/a")).subscription.id
        await store.schedule(GROUP, [(eid, b'{"type":"sent"}', [wid])], [wid])
        (one,) = await store.claim(wid, 10, lease_ms=300)
        assert one.id == f"msg_{eid}" and one.event == b'{"type":"sent"}'
        assert one.attempts == 0 and one.first_attempt_ms is None
        assert await store.claim(wid, 10, lease_ms=300) == []  # leased: nobody else
        await asyncio.sleep(0.35)
        (again,) = await store.claim(wid, 10, lease_ms=60_000)  # the lease ended
        assert again.id == one.id and again.leased != one.leased
        # The first holder's outcome no longer applies; the second's does.
        assert await store.settle(wid, [Outcome(one.id, one.leased, "delivered")]) == 0
        retry = Outcome(again.id, again.leased, "retry", 1, attempts=1, first_attempt_ms=5)
        assert await store.settle(wid, [retry]) == 1
        (third,) = await store.claim(wid, 10, lease_ms=60_000)
        assert (third.attempts, third.first_attempt_ms) == (1, 5)
        assert await store.settle(wid, [Outcome(third.id, third.leased, "delivered")]) == 1
        assert await store.pending(wid) == 0
        assert await store.claim(wid, 10, lease_ms=60_000) == []

    run(redis_server, work)
    assert real_redis.keys("smsq:webhook:wh_*") == []


def test_release_makes_it_due_at_once(redis_server: Any, real_redis: Any) -> None:
    (eid,) = add_events(real_redis, {"type": "sent"})

    async def work(store: WebhookStore) -> None:
        wid = (await store.create("http://127.0.0.1:9/a")).subscription.id
        await store.schedule(GROUP, [(eid, b"{}", [wid])], [wid])
        (one,) = await store.claim(wid, 10, lease_ms=60_000)
        assert await store.settle(wid, [Outcome(one.id, one.leased, "release")]) == 1
        assert [c.id for c in await store.claim(wid, 10, lease_ms=60_000)] == [one.id]

    run(redis_server, work)


def test_failures_are_recorded_and_listed(redis_server: Any, real_redis: Any) -> None:
    ids = add_events(real_redis, *({"type": "sent", "n": n} for n in range(3)))

    async def work(store: WebhookStore) -> None:
        a = (await store.create("http://127.0.0.1:9/a")).subscription.id
        b = (await store.create("http://127.0.0.1:9/b")).subscription.id
        plan = [(eid, json.dumps({"type": "sent", "n": n}), [a, b]) for n, eid in enumerate(ids)]
        await store.schedule(GROUP, plan, [a, b])
        for wid in (a, b):
            claimed = await store.claim(wid, 10, lease_ms=60_000)
            failure = {"webhook": wid, "url": "u", "attempts": 7, "error": "5xx"}
            outcomes = [
                Outcome(c.id, c.leased, "failed", failure={**failure, "id": c.id}) for c in claimed
            ]
            assert await store.settle(wid, outcomes) == 3
            assert await store.pending(wid) == 0
        everything = await store.failures()
        assert len(everything) == 6
        of_a = await store.failures(webhook=a)
        assert [f.id for f in of_a] == [f"msg_{e}" for e in reversed(ids)]
        assert of_a[0].event == {"type": "sent", "n": 2}
        assert (of_a[0].attempts, of_a[0].error) == (7, "5xx")
        assert len(await store.failures(limit=2)) == 2

    run(redis_server, work)


def test_delete_drops_what_is_owed(redis_server: Any, real_redis: Any) -> None:
    (eid,) = add_events(real_redis, {"type": "sent"})

    async def work(store: WebhookStore) -> None:
        wid = (await store.create("http://127.0.0.1:9/a")).subscription.id
        await store.schedule(GROUP, [(eid, b"{}", [wid])], [wid])
        (one,) = await store.claim(wid, 10, lease_ms=60_000)
        retry = Outcome(one.id, one.leased, "retry", 1, attempts=1, first_attempt_ms=1)
        await store.settle(wid, [retry])
        await store.delete(wid)
        assert await store.settle(wid, [Outcome(one.id, one.leased, "delivered")]) == 0

    run(redis_server, work)
    assert real_redis.keys("smsq:webhook*") == []


def test_the_oldest_owed_event_gives_the_lag(redis_server: Any, real_redis: Any) -> None:
    first, second = add_events(real_redis, {"type": "sent"}, {"type": "sent"})
    first_ms, second_ms = (int(e.partition("-")[0]) for e in (first, second))

    async def work(store: WebhookStore) -> None:
        wid = (await store.create("http://127.0.0.1:9/a")).subscription.id
        assert await store.oldest_owed_ms(wid) is None
        await store.schedule(GROUP, [(first, b"{}", [wid]), (second, b"{}", [wid])], [wid])
        assert await store.oldest_owed_ms(wid) == first_ms
        one, two = sorted(await store.claim(wid, 10, lease_ms=60_000), key=lambda c: c.id)
        assert (one.id, two.id) == (f"msg_{first}", f"msg_{second}")
        # Being sent, or waiting to be retried, it is still owed.
        assert await store.oldest_owed_ms(wid) == first_ms
        retry = Outcome(two.id, two.leased, "retry", 10**13, attempts=1, first_attempt_ms=1)
        await store.settle(wid, [retry, Outcome(one.id, one.leased, "delivered")])
        assert await store.oldest_owed_ms(wid) == second_ms
        await store.delete(wid)
        assert await store.oldest_owed_ms(wid) is None

    run(redis_server, work)


def test_a_full_backlog_records_new_events_as_failed(redis_server: Any, real_redis: Any) -> None:
    ids = add_events(real_redis, *({"type": "sent", "n": n} for n in range(3)))

    async def work(store: WebhookStore) -> None:
        full = (await store.create("http://127.0.0.1:9/full")).subscription.id
        plan = [(eid, json.dumps({"type": "sent", "n": n}), [full]) for n, eid in enumerate(ids)]
        assert await store.schedule(GROUP, plan, [full]) == 2
        assert await store.pending(full) == 2
        (failure,) = await store.failures()
        assert (failure.webhook, failure.id) == (full, f"msg_{ids[2]}")
        assert failure.error == "backlog_full"
        assert failure.url == "http://127.0.0.1:9/full" and failure.attempts == 0
        assert failure.event == {"type": "sent", "n": 2}

    run(redis_server, work, webhook_max_pending=2)
