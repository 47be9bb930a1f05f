"""`smsq list` (producer/cli_lists.py) on fakeredis, in process: a table or JSON, pages by the
cursor it prints, the filters, and refused options as one line or, with --json, the problem
object."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click
import fakeredis
import fakeredis.aioredis
import pytest
from smsq_testing import write_campaign
from test_http_lists import trunk_figures

from ledger import keys
from ledger.states import CampaignState

# 2023-11-14T22:13:20Z: the first campaign's creation time in these tests.
T0 = 1_700_000_000


def made(sync_redis: fakeredis.FakeRedis, count: int, **options: Any) -> list[str]:
    """`count` campaigns created one second apart from T0 (the first oldest); their ids."""
    cids = [write_campaign(sync_redis, 2, **options) for _ in range(count)]
    for n, cid in enumerate(cids):
        sync_redis.zadd(keys.campaigns(), {cid: T0 + n})
        sync_redis.hset(keys.campaign(cid), "created_at", str(T0 + n))
    return cids


def listed(smsq: Callable[..., click.testing.Result], *args: str) -> dict[str, Any]:
    result = smsq("list", "--json", *args)
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.output))


def test_the_table_shows_each_campaign_and_its_counts(smsq, sync_redis) -> None:
    old, new = made(sync_redis, 2, name="Spring sale")
    sync_redis.hset(keys.counts(new), mapping={"queued": 0, "sent": 1, "failed": 1})
    result = smsq("list")
    assert result.exit_code == 0, result.output
    head, first, second = result.output.splitlines()
    assert head.split() == ["id", "name", "state", "queued", "sent", "failed", "created"]
    assert first.split() == [new, "Spring", "sale", "done", "0", "1", "1", "2023-11-14T22:13:21Z"]
    assert second.split() == [
        old,
        "Spring",
        "sale",
        "active",
        "2",
        "0",
        "0",
        "2023-11-14T22:13:20Z",
    ]


def test_pages_follow_the_printed_cursor_with_the_same_filters(smsq, sync_redis) -> None:
    cids = made(sync_redis, 3, name="promo")
    first = smsq("list", "--limit", "2", "--name", "PROMO")
    assert first.exit_code == 0, first.output
    *rows, more = first.output.splitlines()
    assert [row.split()[0] for row in rows[1:]] == [cids[2], cids[1]]
    cursor = more.split("--cursor ")[1].split()[0]

    page = listed(smsq, "--limit", "2", "--name", "PROMO", "--cursor", cursor)
    assert [c["campaign_id"] for c in page["campaigns"]] == [cids[0]]
    assert page["next_cursor"] is None
    last = smsq("list", "--limit", "2", "--name", "PROMO", "--cursor", cursor)
    assert "more:" not in last.output


def test_json_holds_the_campaigns_and_the_next_cursor(smsq, sync_redis) -> None:
    cids = made(sync_redis, 3)
    page = listed(smsq, "--limit", "2")
    assert [c["campaign_id"] for c in page["campaigns"]] == [cids[2], cids[1]]
    assert page["campaigns"][0]["counts"]["queued"] == 2
    rest = listed(smsq, "--limit", "2", "--cursor", page["next_cursor"])
    assert [c["campaign_id"] for c in rest["campaigns"]] == [cids[0]]


def test_filters_by_state_trunk_name_and_creation_time(smsq, sync_redis) -> None:
    a, b, c = made(sync_redis, 3, name="sale", trunk="eu")
    [other] = made(sync_redis, 1, name="autumn", trunk="us")
    sync_redis.hset(keys.campaign(b), "state", str(CampaignState.CANCELLED))

    def ids(*args: str) -> list[str]:
        return [row["campaign_id"] for row in listed(smsq, *args)["campaigns"]]

    assert ids("--state", "cancelled") == [b]
    assert ids("--trunk", "us") == [other]
    assert ids("--name", "SAL") == [c, b, a]
    after, before = "2023-11-14T22:13:21Z", "2023-11-14T23:13:22+01:00"
    assert ids("--created-after", after, "--created-before", before) == [c, b]


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (("--state", "finished"), "invalid_filter", "unknown campaign state 'finished'"),
        (("--limit", "0"), "invalid_limit", "limit must be 1 to 500"),
        (("--limit", "501"), "invalid_limit", "limit must be 1 to 500"),
        (("--cursor", "zzzz"), "invalid_cursor", "the cursor is not one this API gave"),
        (("--created-after", "yesterday"), "invalid_input", "--created-after: 'yesterday'"),
        (("--created-before", "2026-12-01T00:00"), "invalid_input", "has no time zone"),
    ],
)
def test_refused_options_exit_2_with_one_line_or_the_problem_object(
    smsq, sync_redis, args: tuple[str, ...], code: str, says: str
) -> None:
    made(sync_redis, 1)
    plain = smsq("list", *args)
    assert plain.exit_code == 2
    assert plain.stdout == "" and plain.stderr.startswith("smsq: ") and says in plain.stderr
    as_json = smsq("list", "--json", *args)
    assert as_json.exit_code == 2
    body = json.loads(as_json.stdout)
    assert body["code"] == code and says in body["detail"]


def test_trunks_print_each_trunks_own_figures(smsq, sync_redis) -> None:
    trunk_figures(sync_redis)
    sync_redis.set(keys.halt("default"), json.dumps({"detail": "DIDWW answered 401", "at": 1.0}))
    result = smsq("trunks")
    assert result.exit_code == 0, result.output
    head, row, why = result.output.splitlines()
    assert head.split() == ["trunk", "sending", "claimed/s", "parked", "waiting"]
    assert row.split() == ["default", "HALTED", "5.0", "2", "2"]
    assert why.strip() == "DIDWW answered 401"
    as_json = smsq("trunks", "--json")
    assert as_json.exit_code == 0, as_json.output
    [trunk] = json.loads(as_json.output)["trunks"]
    assert (trunk["name"], trunk["parked_batches"], trunk["stats"]) == (
        "default",
        2,
        {"callbacks_applied": 10},
    )
