"""Lists and lookups (ledger/lookups.py) on a real redis-server: campaigns newest first, paged by
an opaque cursor and filtered with bounded work; a message by its id; a campaign's messages
paged and filtered by state."""

from __future__ import annotations

from typing import Any

import pytest
from script_helpers import claim, run
from smsq_testing import write_campaign

from ledger import keys
from ledger.errors import InputError
from ledger.lookups import MAX_LIMIT, SCAN_FACTOR, CampaignFilter
from ledger.states import CampaignState, State


def made(client: Any, count: int, **options: Any) -> list[str]:
    """`count` campaigns created one second apart (the first oldest); their ids."""
    cids = [write_campaign(client, 1, **options) for _ in range(count)]
    for n, cid in enumerate(cids):
        client.zadd(keys.campaigns(), {cid: 1_700_000_000 + n})
    return cids


def every_page(real_ledger, limit: int, where: CampaignFilter | None = None) -> list[list[str]]:
    """The ids of each page, following the cursor to the end."""

    async def go(ledger):
        pages, cursor = [], None
        while True:
            page = await ledger.list_campaigns(limit, cursor, where)
            pages.append([row["campaign_id"] for row in page.items])
            if page.next_cursor is None:
                return pages
            cursor = page.next_cursor

    return run(real_ledger, go)


def test_campaigns_come_newest_first_in_pages_until_there_is_no_cursor(
    real_ledger, real_redis
) -> None:
    cids = made(real_redis, 5)
    assert every_page(real_ledger, 2) == [cids[4:2:-1], cids[2:0:-1], cids[0:1]]
    assert every_page(real_ledger, 5) == [cids[::-1]]


def test_a_row_is_the_campaigns_summary(real_ledger, real_redis) -> None:
    [cid] = made(real_redis, 1, name="Spring sale", trunk="default")

    async def go(ledger):
        return (await ledger.list_campaigns(10)).items

    [row] = run(real_ledger, go)
    assert row["campaign_id"] == cid and row["name"] == "Spring sale"
    assert row["state"] == "active" and row["total"] == 1 and row["counts"]["queued"] == 1
    assert "trunk_status" not in row and "rate_per_s" not in row


def test_campaigns_created_in_the_same_instant_are_each_listed_once(
    real_ledger, real_redis
) -> None:
    cids = [write_campaign(real_redis, 1) for _ in range(5)]
    real_redis.zadd(keys.campaigns(), dict.fromkeys(cids, 1_700_000_000))
    pages = every_page(real_ledger, 2)
    listed = [cid for page in pages for cid in page]
    assert sorted(listed) == sorted(cids) and len(listed) == 5


def test_filters_by_state_trunk_name_and_creation_time(real_ledger, real_redis) -> None:
    old, mid, new = made(real_redis, 3, name="Spring SALE")
    [other] = made(real_redis, 1, name="autumn")
    real_redis.zadd(keys.campaigns(), {other: 1_700_000_001.5})
    real_redis.hset(keys.campaign(mid), "state", str(CampaignState.CANCELLED))
    # Nothing pending: done.
    real_redis.hset(keys.counts(new), mapping={"queued": 0, "delivered": 1})

    def ids(**where: Any) -> list[str]:
        pages = every_page(real_ledger, 10, CampaignFilter(**where))
        return [cid for page in pages for cid in page]

    assert ids(state="cancelled") == [mid]
    assert ids(state="done") == [new]
    assert ids(state="active") == [other, old]
    assert ids(name="sale") == [new, mid, old]
    assert ids(trunk="elsewhere") == []
    assert ids(created_after=1_700_000_001, created_before=1_700_000_001.9) == [other, mid]


def test_a_rare_match_is_found_by_following_cursors_each_page_reading_a_bounded_number(
    real_ledger, real_redis
) -> None:
    limit = 2
    count = limit * SCAN_FACTOR * 3
    cids = made(real_redis, count, name="plain")
    real_redis.hset(keys.campaign(cids[0]), "name", "the one")
    pages = every_page(real_ledger, limit, CampaignFilter(name="one"))
    # Each call reads at most limit x SCAN_FACTOR campaigns: the oldest is on the third page.
    assert pages == [[], [], [cids[0]]]


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (lambda ledger: ledger.list_campaigns(0), "invalid_limit"),
        (lambda ledger: ledger.list_campaigns(MAX_LIMIT + 1), "invalid_limit"),
        (lambda ledger: ledger.list_campaigns(10, "not-a-cursor"), "invalid_cursor"),
        (lambda ledger: ledger.list_campaigns(10, "MTIz"), "invalid_cursor"),
    ],
)
def test_bad_limits_and_cursors_are_refused_with_their_code(real_ledger, call, code) -> None:
    async def go(ledger):
        with pytest.raises(InputError) as caught:
            await call(ledger)
        return caught.value.code

    assert run(real_ledger, go) == code


def test_an_unknown_state_filter_is_refused() -> None:
    with pytest.raises(InputError, match="unknown campaign state 'finished'") as caught:
        CampaignFilter(state="finished")
    assert caught.value.code == "invalid_filter"


def test_a_message_is_found_by_its_id(real_ledger, real_redis) -> None:
    cid = write_campaign(real_redis, 150, batch_size=100)

    async def go(ledger):
        await claim(ledger, cid, [120], batch=1)
        found = await ledger.message(f"{cid}-120")
        missing = [
            await ledger.message(mid)
            for mid in (f"{cid}-150", f"{cid}-99999", "0000000000000abc-1", "nonsense", f"{cid}-x")
        ]
        return found, missing

    (c, record, raw_id, reference), missing = run(real_ledger, go)
    assert c.id == cid and record.index == 120 and record.state == State.SENDING
    assert record.destination == "37060000120" and raw_id is None and reference is None
    assert missing == [None] * 5


def test_a_campaigns_messages_come_in_pages_filtered_by_state(real_ledger, real_redis) -> None:
    cid = write_campaign(real_redis, 250, batch_size=100)

    async def go(ledger):
        await claim(ledger, cid, [101, 102], batch=1)
        c = await ledger.campaign(cid)
        indexes, cursor = [], None
        while True:
            found, _, _, cursor = await ledger.message_page(c, 60, cursor)
            indexes.append([r.index for r in found])
            if cursor is None:
                break
        sending, _, _, after = await ledger.message_page(c, 10, None, frozenset({State.SENDING}))
        return indexes, [r.index for r in sending], after

    pages, sending, after = run(real_ledger, go)
    assert [i for page in pages for i in page] == list(range(250))
    assert [len(page) for page in pages] == [60, 60, 60, 60, 10]
    assert sending == [101, 102] and after is None
