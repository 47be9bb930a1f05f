"""Lists and lookups through the HTTP API (producer/http_lists.py) on fakeredis, in process:
GET /v1/campaigns in pages by its `next` links with filters, GET /v1/messages/{message_id}, a
campaign's messages a page at a time (the whole report still streamed without `limit`), refused
parameters named in 422 problems, and answers that conform to the OpenAPI document."""

from __future__ import annotations

import json
from typing import Any

import fakeredis
import httpx
from jsonschema import Draft202012Validator
from smsq_testing import write_campaign
from test_http_api import ABSENT, AUTH, problem, run
from test_http_campaigns import set_records

from ledger import keys
from ledger.states import CampaignState, State
from ledger.store import Ledger
from producer import http
from producer.http_openapi import document

# 2023-11-14T22:13:20Z: the first campaign's creation time in these tests.
T0 = 1_700_000_000


def made(sync_redis: fakeredis.FakeRedis, count: int, **options: Any) -> list[str]:
    """`count` campaigns created one second apart from T0 (the first oldest); their ids."""
    cids = [write_campaign(sync_redis, 1, **options) for _ in range(count)]
    for n, cid in enumerate(cids):
        sync_redis.zadd(keys.campaigns(), {cid: T0 + n})
    return cids


def get(server: fakeredis.FakeServer, *paths: str) -> list[httpx.Response]:
    async def steps(client: httpx.AsyncClient, _: Ledger) -> list[httpx.Response]:
        return [await client.get(path, headers=AUTH) for path in paths]

    return list(run(server, steps))


def follow(server: fakeredis.FakeServer, first: str, key: str) -> list[list[Any]]:
    """Each page's items (under `key`), from `first` along the `next` links to the end."""
    pages: list[list[Any]] = []
    path: str | None = first
    while path is not None:
        [response] = get(server, path)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body[key])
        path = body["next"]
    return pages


def ids(pages: list[list[dict[str, Any]]]) -> list[list[str]]:
    return [[row["campaign_id"] for row in page] for page in pages]


def test_campaigns_come_newest_first_a_page_at_a_time_by_next_links(server, sync_redis) -> None:
    cids = made(sync_redis, 5)
    assert ids(follow(server, "/v1/campaigns?limit=2", "campaigns")) == [
        cids[4:2:-1],
        cids[2:0:-1],
        cids[:1],
    ]
    # The default limit holds them all: one page, no next.
    assert ids(follow(server, "/v1/campaigns", "campaigns")) == [cids[::-1]]


def test_a_campaign_in_the_list_is_its_summary(server, sync_redis) -> None:
    [cid] = made(sync_redis, 1, name="Spring sale", trunk="default")
    [response] = get(server, "/v1/campaigns")
    [row] = response.json()["campaigns"]
    assert row["campaign_id"] == cid and row["name"] == "Spring sale" and row["trunk"] == "default"
    assert row["state"] == "active" and row["total"] == 1 and row["counts"]["queued"] == 1
    assert "trunk_status" not in row and "rate_per_s" not in row


def test_filters_hold_on_every_page_and_the_next_link_keeps_them(server, sync_redis) -> None:
    sales = made(sync_redis, 3, name="Spring SALE", trunk="eu")
    [other] = made(sync_redis, 1, name="autumn", trunk="eu")
    sync_redis.zadd(keys.campaigns(), {other: T0 + 1.5})
    sync_redis.hset(keys.campaign(sales[1]), "state", str(CampaignState.CANCELLED))

    [response] = get(server, "/v1/campaigns?name=sale&trunk=eu&limit=1")
    link = response.json()["next"]
    assert link.startswith("/v1/campaigns?") and "name=sale" in link and "trunk=eu" in link
    assert "limit=1" in link and "cursor=" in link
    assert ids(follow(server, "/v1/campaigns?name=sale&trunk=eu&limit=1", "campaigns")) == [
        [sales[2]],
        [sales[1]],
        [sales[0]],
    ]

    def listed(query: str) -> list[str]:
        pages = follow(server, f"/v1/campaigns?{query}", "campaigns")
        return [cid for page in ids(pages) for cid in page]

    assert listed("state=cancelled") == [sales[1]]
    assert listed("state=active&limit=1") == [sales[2], other, sales[0]]
    assert listed("trunk=us") == []
    # T0 + 1 and T0 + 2 in ISO 8601, one written with an offset (+ encoded, as in a URL).
    assert listed(
        "created_after=2023-11-14T22:13:21Z&created_before=2023-11-14T23:13:21.9%2B01:00"
    ) == [
        other,
        sales[1],
    ]


def test_refused_list_parameters_are_422_naming_the_parameter(server, sync_redis) -> None:
    made(sync_redis, 1)
    cases = {
        "limit=0": ("invalid_limit", "limit"),
        "limit=501": ("invalid_limit", "limit"),
        "limit=ten": ("invalid_parameter", "limit"),
        "cursor=not-one-of-ours": ("invalid_cursor", "cursor"),
        "state=finished": ("invalid_filter", "state"),
        "created_after=yesterday": ("invalid_parameter", "created_after"),
        # Without a zone it would mean a different instant on every host.
        "created_before=2026-12-01T00:00": ("invalid_parameter", "created_before"),
        "colour=red": ("unknown_parameter", "colour"),
    }
    responses = get(server, *(f"/v1/campaigns?{query}" for query in cases))
    for (query, (code, parameter)), response in zip(cases.items(), responses, strict=True):
        body = problem(response, code)
        assert response.status_code == 422, query
        assert body["errors"][0]["parameter"] == parameter, (query, body)


def test_a_message_is_its_report_row_and_its_campaign(server, sync_redis) -> None:
    cid = write_campaign(sync_redis, 3)
    set_records(
        sync_redis,
        cid,
        [
            ("37041000001", State.SENT, 1),
            ("37041000002", State.FAILED, 8),
            ("37041000003", State.QUEUED, None),
        ],
    )
    found, report = get(server, f"/v1/messages/{cid}-1", f"/v1/campaigns/{cid}/messages")
    assert found.status_code == 200, found.text
    rows = [json.loads(line) for line in report.text.splitlines()]
    assert found.json() == {**rows[1], "campaign_id": cid}
    assert found.json()["state"] == "failed" and found.json()["message_id"] == f"{cid}-1"


def test_a_message_that_is_not_there_is_404_message_not_found(server, sync_redis) -> None:
    cid = write_campaign(sync_redis, 3)
    absent = (f"{cid}-3", f"{cid}-99999", f"{ABSENT}-0", "nonsense", f"{cid}-x")
    for response in get(server, *(f"/v1/messages/{mid}" for mid in absent)):
        assert response.status_code == 404
        assert problem(response, "message_not_found")["detail"].startswith("no message ")


def test_a_campaigns_messages_come_a_page_at_a_time_with_limit(server, sync_redis) -> None:
    cid = write_campaign(sync_redis, 250, batch_size=100)
    pages = follow(server, f"/v1/campaigns/{cid}/messages?limit=60", "messages")
    assert [len(page) for page in pages] == [60, 60, 60, 60, 10]
    assert [row["index"] for page in pages for row in page] == list(range(250))
    assert pages[0][0]["message_id"] == f"{cid}-0" and pages[0][0]["state"] == "queued"


def test_a_page_of_messages_filtered_by_state_and_the_stream_without_limit(
    server, sync_redis
) -> None:
    cid = write_campaign(sync_redis, 5)
    set_records(
        sync_redis,
        cid,
        [
            ("37041000001", State.SENT, 1),
            ("37041000002", State.FAILED, 2),
            ("37041000003", State.UNKNOWN, None),
            ("37041000004", State.FAILED, 8),
            ("37041000005", State.SENT, 1),
        ],
    )
    base = f"/v1/campaigns/{cid}/messages"
    pages = follow(server, f"{base}?limit=2&state=failed,unknown", "messages")
    assert [[row["index"] for row in page] for page in pages] == [[1, 2], [3]]
    [first] = get(server, f"{base}?limit=2&state=failed&state=unknown")
    assert "state=failed%2Cunknown" in first.json()["next"]
    # Without limit or cursor: the whole report, streamed as before.
    [whole] = get(server, f"{base}?state=sent")
    assert whole.headers["content-type"].startswith("application/x-ndjson")
    assert [json.loads(line)["index"] for line in whole.text.splitlines()] == [0, 4]


def test_refused_page_parameters_are_422_naming_the_parameter(server, sync_redis) -> None:
    cid = write_campaign(sync_redis, 3)
    cases = {
        "limit=0": ("invalid_limit", "limit"),
        "limit=2&cursor=zzzz": ("invalid_cursor", "cursor"),
        "limit=2&format=csv": ("invalid_parameter", "format"),
        "cursor=MA&code=2": ("invalid_parameter", "code"),
        "limit=2&state=lost": ("invalid_parameter", "state"),
    }
    base = f"/v1/campaigns/{cid}/messages"
    responses = get(server, *(f"{base}?{query}" for query in cases))
    for (query, (code, parameter)), response in zip(cases.items(), responses, strict=True):
        body = problem(response, code)
        assert body["errors"][0]["parameter"] == parameter, (query, body)
    [missing] = get(server, f"/v1/campaigns/{ABSENT}/messages?limit=2")
    problem(missing, "campaign_not_found")


def test_answers_conform_to_the_documented_schemas(server, sync_redis) -> None:
    made(sync_redis, 3)
    cid = write_campaign(sync_redis, 3)
    listed, found, page = get(
        server,
        "/v1/campaigns?limit=2",
        f"/v1/messages/{cid}-0",
        f"/v1/campaigns/{cid}/messages?limit=2",
    )
    doc = document(http.ROUTES, http.PATH_PARAMETERS)
    for name, response in (
        ("CampaignList", listed),
        ("MessageFound", found),
        ("MessagePage", page),
    ):
        assert response.status_code == 200, response.text
        schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
        Draft202012Validator(schema).validate(response.json())
    assert listed.json()["next"] is not None and page.json()["next"] is not None


def trunk_figures(sync_redis: fakeredis.FakeRedis) -> str:
    """A campaign on the trunk `default` with two batches parked, two kept callbacks its token
    brought, its counters, and claims in the last second (5 units) and before (7 units)."""
    cid = write_campaign(sync_redis, 250, batch_size=100)
    sync_redis.zadd(keys.parked(), {f"{cid}|0": 1.0, f"{cid}|1": 5.0})
    sync_redis.hset(keys.kept_info(), mapping={"count": 3, "count:default": 2, "count:eu": 1})
    sync_redis.hset(
        keys.stats(),
        mapping={"callbacks_applied": 12, "callbacks_applied:default": 10, "orphans_kept:eu": 1},
    )
    seconds, micros = sync_redis.time()
    now_us = seconds * 1_000_000 + micros
    sync_redis.lpush(keys.rate_window("default"), f"{now_us - 2_000_000} 7", f"{now_us - 1000} 5")
    return cid


def test_trunks_give_each_trunk_its_own_figures(server, sync_redis) -> None:
    trunk_figures(sync_redis)
    [response] = get(server, "/v1/trunks")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "trunks": [
            {
                "name": "default",
                "halted": False,
                "halted_why": None,
                "backing_off": False,
                "backoff_why": None,
                "parked_batches": 2,
                "orphan_callbacks_waiting": 2,
                "claimed_per_s": 5.0,
                "stats": {"callbacks_applied": 10},
            }
        ]
    }
