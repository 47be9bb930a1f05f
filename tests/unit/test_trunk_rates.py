"""A trunk's rates ring (keys.rates, ledger/lua/_common.lua rates_add, ledger/trunks.py): the
messages each claim takes and the callbacks settled, second by second over the last hour, on a
real Redis; what the dashboard's chart is drawn from."""

from __future__ import annotations

from script_helpers import accepted, callback, claim, dest, did, redis_now, run
from smsq_testing import write_campaign
from test_ledger import lua_common

from ledger import keys
from ledger.trunks import RATES_SLOT, decode_rates


def test_the_ring_in_lua_is_the_ring_ledger_trunks_reads(real_redis) -> None:
    ring, slot, key = lua_common(real_redis, "return {RATES_RING, RATES_SLOT, rates_key('eu')}")
    assert (ring, slot, key.decode()) == (keys.RATES_RING_S, RATES_SLOT.size, keys.rates("eu"))


def test_claims_and_callbacks_are_counted_in_their_second(real_ledger, real_redis) -> None:
    cid = write_campaign(real_redis, 5)

    async def go(ledger):
        await claim(ledger, cid, [0, 1, 2])
        await claim(ledger, cid, [3, 4])
        await ledger.record([accepted(cid, i, did(i)) for i in range(5)])
        for i in (0, 1, 3):
            await ledger.apply_callback(callback(did(i), destination=dest(i)))
        # Duplicates settle nothing and are not counted.
        await ledger.apply_callback(callback(did(0), destination=dest(0)))

    began = int(redis_now(real_redis))
    run(real_ledger, go)
    ended = int(redis_now(real_redis))
    ring = real_redis.get(keys.rates("default"))
    rates = decode_rates(ring, began, ended + 1)
    assert (sum(rates.claimed), sum(rates.callbacks)) == (5, 3)
    # A trunk's ring never grows past its hour of slots: 28,800 bytes.
    assert len(ring) <= keys.RATES_RING_S * RATES_SLOT.size <= 50 * 1024


def test_the_ledger_gives_whole_seconds_of_the_last_hour_and_drops_stale_slots(
    real_ledger, real_redis
) -> None:
    now = int(redis_now(real_redis))
    ring = bytearray(keys.RATES_RING_S * RATES_SLOT.size)
    for second, claimed, callbacks in [
        (now - 10, 7, 3),  # ten seconds ago
        (now - 1, 2, 1),  # the last whole second
        (now, 9, 9),  # the current second: not over, not given
        (now - 2 * keys.RATES_RING_S + 5, 4, 4),  # an hour older than its slot's last use
    ]:
        off = (second % keys.RATES_RING_S) * RATES_SLOT.size
        ring[off : off + RATES_SLOT.size] = RATES_SLOT.pack(second, claimed, callbacks)
    real_redis.set(keys.rates("default"), bytes(ring))

    async def go(ledger):
        return await ledger.trunk_rates("default"), await ledger.trunk_rates("default", now - 5)

    hour, recent = run(real_ledger, go)
    assert hour.end - hour.start == keys.RATES_RING_S - 1 and hour.end in (now, now + 1)
    # The second `now` counts once it is over (Redis's clock may have moved on meanwhile).
    over = 9 if hour.end > now else 0
    assert sum(hour.claimed) == 9 + over and sum(hour.callbacks) == 4 + over
    assert hour.claimed[now - 10 - hour.start] == 7
    assert recent.start == now - 4 and sum(recent.claimed) == 2 + (9 if recent.end > now else 0)
    empty = run(real_ledger, lambda ledger: ledger.trunk_rates("eu"))
    assert set(empty.claimed) == set(empty.callbacks) == {0}
