"""Tests for an existing campaign through the HTTP API (producer.http_control) on fakeredis:
the streamed per-message report, reschedule and purge."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import fakeredis
import fakeredis.aioredis
import httpx
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from smsq_testing import stored, write_campaign
from test_http_api import ABSENT, AUTH, FakeCelery, api_settings, problem, run
from test_http_campaigns import set_records

from ledger import keys
from ledger.campaigns import Campaign
from ledger.records import Record
from ledger.states import CampaignState, State
from ledger.store import Ledger
from producer import http
from producer import report as reports
from producer.enqueue import Producer
from producer.plan import MAX_SCHEDULE_S

ROWS = [
    ("37041000001", State.SENT, 1),
    ("37041000002", State.FAILED, 2),
    ("37041000003", State.FAILED, 8),
    ("37041000004", State.UNKNOWN, None),
    ("37041000005", State.QUEUED, None),
]


def report_campaign(sync_redis: fakeredis.FakeRedis) -> str:
    cid = write_campaign(sync_redis, [d for d, _, _ in ROWS])
    set_records(sync_redis, cid, ROWS)
    return cid


def get(server: fakeredis.FakeServer, *paths: str) -> list[httpx.Response]:
    async def steps(client: httpx.AsyncClient, _: Ledger) -> list[httpx.Response]:
        return [await client.get(path, headers=AUTH) for path in paths]

    return list(run(server, steps))


# --- GET /v1/campaigns/{id}/messages


def test_the_report_is_ndjson_by_default_one_row_per_message(server, sync_redis) -> None:
    cid = report_campaign(sync_redis)
    [response] = get(server, f"/v1/campaigns/{cid}/messages")

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-ndjson"
    rows = [json.loads(line) for line in response.text.splitlines()]
    assert [r["destination"] for r in rows] == [d for d, _, _ in ROWS]
    assert rows[1] == {
        "index": 1,
        "message_id": keys.message_id(cid, 1),
        "destination": "37041000002",
        "state": "failed",
        "didww_id": None,
        "status": None,
        "code_id": 2,
        "reason": rows[1]["reason"],
        "fragments": 1,
        "time_start": None,
        "time_end": None,
        "attempts": 0,
        "reference": None,
    }
    assert set(rows[0]) == set(reports.COLUMNS)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("state=failed,unknown", ["37041000002", "37041000003", "37041000004"]),
        ("state=failed&state=unknown", ["37041000002", "37041000003", "37041000004"]),
        ("state=failed&code=8", ["37041000003"]),
        ("code=2,8", ["37041000002", "37041000003"]),
        ("state=", [d for d, _, _ in ROWS]),
        ("state=expired", []),
    ],
)
def test_the_report_filters_by_state_and_code(
    server, sync_redis, query: str, expected: list[str]
) -> None:
    cid = report_campaign(sync_redis)
    [response] = get(server, f"/v1/campaigns/{cid}/messages?{query}&format=jsonl")
    assert response.status_code == 200, response.text
    assert [json.loads(line)["destination"] for line in response.text.splitlines()] == expected


def test_the_csv_report_has_a_header_and_the_same_rows(server, sync_redis) -> None:
    cid = report_campaign(sync_redis)
    [response] = get(server, f"/v1/campaigns/{cid}/messages?format=csv&state=failed")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    table = list(csv.reader(io.StringIO(response.text)))
    assert table[0] == list(reports.COLUMNS)
    assert [row[2] for row in table[1:]] == ["37041000002", "37041000003"]
    assert [row[3] for row in table[1:]] == ["failed", "failed"]


@pytest.mark.parametrize(
    ("query", "code", "names"),
    [
        ("state=lost", "invalid_parameter", "state: unknown state 'lost'"),
        ("code=two", "invalid_parameter", "code: whole numbers separated by commas, not 'two'"),
        ("format=xml", "invalid_parameter", "format: must be 'jsonl' or 'csv'"),
        ("states=failed", "unknown_parameter", "unknown query parameter 'states'"),
    ],
)
def test_a_bad_report_query_is_422(server, sync_redis, query: str, code: str, names) -> None:
    cid = report_campaign(sync_redis)
    [response] = get(server, f"/v1/campaigns/{cid}/messages?{query}")
    out = problem(response, code)
    assert names in out["detail"]
    assert [e["parameter"] for e in out["errors"]] == [query.split("=")[0]]


@pytest.mark.parametrize("cid", [ABSENT, "nope"])
def test_the_report_of_an_unknown_campaign_is_404(server, cid: str) -> None:
    [response] = get(server, f"/v1/campaigns/{cid}/messages")
    assert problem(response, "campaign_not_found")["detail"] == f"no campaign {cid!r}"


async def asgi_get(app: Any, path: str, sent: list[dict[str, Any]]) -> None:
    """GET path, noting in `sent` every ASGI message the app sends (no client between, so
    each chunk of a streamed body is seen as it is sent)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(k.encode(), v.encode()) for k, v in AUTH.items()],
        "server": ("api.test", 80),
        "client": ("127.0.0.1", 1234),
        "root_path": "",
        "app": app,
    }

    requested = False
    finished = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        # Like a server: the client stays until the answer is complete.
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            finished.set()

    await app(scope, receive, send)


def raw_app_run(server: fakeredis.FakeServer, path: str) -> Any:
    """Run one raw ASGI GET against the app; returns (messages, error or None)."""
    cfg = api_settings()

    async def go() -> Any:
        redis = fakeredis.aioredis.FakeRedis(server=server)
        producer = Producer(cfg)
        producer.celery = FakeCelery()  # type: ignore[assignment]
        app = http.create_app(cfg, redis=redis, producer=producer)
        sent: list[dict[str, Any]] = []
        try:
            async with app.router.lifespan_context(app):
                try:
                    await asgi_get(app, path, sent)
                except Exception as exc:
                    return sent, exc
                return sent, None
        finally:
            producer.close()
            await redis.aclose()

    return asyncio.run(go())


def test_the_report_is_streamed_in_chunks_not_built_whole(server, sync_redis, monkeypatch) -> None:
    monkeypatch.setattr(reports, "CHUNK_ROWS", 2)
    cid = report_campaign(sync_redis)
    sent, error = raw_app_run(server, f"/v1/campaigns/{cid}/messages")
    assert error is None
    start, *bodies = sent
    assert start["type"] == "http.response.start" and start["status"] == 200
    chunks = [m["body"] for m in bodies if m["body"]]
    # 5 rows, 2 per chunk: 3 chunks, each sent as it was made.
    assert [c.count(b"\n") for c in chunks] == [2, 2, 1]
    assert all(m["more_body"] for m in bodies[:-1]) and not bodies[-1]["more_body"]


def test_redis_failing_mid_report_cuts_the_stream_instead_of_ending_it(
    server, sync_redis, monkeypatch
) -> None:
    monkeypatch.setattr(reports, "CHUNK_ROWS", 2)
    real_scan = reports.scan_records

    async def failing(redis: Any, c: Campaign) -> AsyncIterator[Record]:
        count = 0
        async for record in real_scan(redis, c):
            if count == 3:
                raise RedisConnectionError("Redis went away")
            count += 1
            yield record

    monkeypatch.setattr(reports, "scan_records", failing)
    cid = report_campaign(sync_redis)
    sent, error = raw_app_run(server, f"/v1/campaigns/{cid}/messages")
    assert isinstance(error, RedisConnectionError)
    assert sent[0]["status"] == 200
    # The first chunk went; the body was never ended, so a client sees it incomplete.
    assert [m["body"].count(b"\n") for m in sent[1:]] == [2]
    assert all(m.get("more_body") for m in sent[1:])


# --- POST /v1/campaigns/{id}/reschedule


def reschedule(server: fakeredis.FakeServer, cid: str, body: Any) -> httpx.Response:
    async def steps(client: httpx.AsyncClient, _: Ledger) -> httpx.Response:
        return await client.post(
            f"/v1/campaigns/{cid}/reschedule",
            content=json.dumps(body).encode(),
            headers={"content-type": "application/json", **AUTH},
        )

    return run(server, steps)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def test_reschedule_moves_a_scheduled_campaign_and_its_ttl(server, sync_redis) -> None:
    old_at = time.time() + 3600
    cid = write_campaign(
        sync_redis, 150, batch_size=100, state=CampaignState.SCHEDULED, send_at=old_at
    )
    # write_campaign counts the TTL from its creation; the producer counts it from send_at.
    sync_redis.hset(keys.campaign(cid), mapping=Campaign.encode(expires_at=old_at + 600))
    new_at = round(time.time()) + 7200
    response = reschedule(server, cid, {"send_at": iso(new_at)})

    assert response.status_code == 200, response.text
    assert response.json() == {"campaign_id": cid, "state": "scheduled", "send_at": new_at}
    c = stored(sync_redis, cid)
    assert c.send_at == pytest.approx(new_at)
    assert c.expires_at == pytest.approx(new_at + 600)
    parked = dict(sync_redis.zrange(keys.parked(), 0, -1, withscores=True))
    assert parked == {
        keys.batch_member(cid, 0).encode(): new_at,
        keys.batch_member(cid, 1).encode(): new_at,
    }


@pytest.mark.parametrize(
    ("state", "send_in_s"),
    [(CampaignState.ACTIVE, 0), (CampaignState.PAUSED, 0), (CampaignState.SCHEDULED, -60)],
)
def test_reschedule_of_a_campaign_not_waiting_is_409(
    server, sync_redis, state: CampaignState, send_in_s: float
) -> None:
    send_at = time.time() + send_in_s if send_in_s else 0.0
    cid = write_campaign(sync_redis, 2, state=state, send_at=send_at)
    response = reschedule(server, cid, {"send_at": iso(time.time() + 7200)})
    out = problem(response, "campaign_not_scheduled")
    assert "only a scheduled campaign that has not started" in out["detail"]
    assert sync_redis.zcard(keys.parked()) == 0


@pytest.mark.parametrize(
    ("body", "code", "names"),
    [
        ({}, "missing_field", "send_at: required"),
        ({"send_at": None}, "invalid_field", "send_at: must be a string"),
        ({"send_at": 1767225600}, "invalid_field", "send_at: must be a string"),
        ({"send_at": "soon"}, "invalid_field", "is not an ISO 8601 time"),
        ({"send_at": "2031-01-01T09:00"}, "invalid_field", "needs a time zone"),
        ({"send_at": iso(time.time() - 60)}, "invalid_field", "is in the past"),
        (
            {"send_at": iso(time.time() + MAX_SCHEDULE_S + 3600)},
            "invalid_field",
            "more than a year ahead",
        ),
        ({"send_at": iso(time.time() + 3600), "at": 1}, "unknown_field", "unknown field 'at'"),
    ],
)
def test_a_bad_new_time_is_422(
    server, sync_redis, body: dict[str, Any], code: str, names: str
) -> None:
    old_at = time.time() + 3600
    cid = write_campaign(sync_redis, 2, state=CampaignState.SCHEDULED, send_at=old_at)
    response = reschedule(server, cid, body)
    assert names in problem(response, code)["detail"]
    assert stored(sync_redis, cid).send_at == pytest.approx(old_at)


@pytest.mark.parametrize("cid", [ABSENT, "nope"])
def test_reschedule_of_an_unknown_campaign_is_404(server, cid: str) -> None:
    response = reschedule(server, cid, {"send_at": iso(time.time() + 3600)})
    assert problem(response, "campaign_not_found")["detail"] == f"no campaign {cid!r}"


# --- DELETE /v1/campaigns/{id}


def delete(server: fakeredis.FakeServer, cid: str, *then: str) -> list[httpx.Response]:
    async def steps(client: httpx.AsyncClient, _: Ledger) -> list[httpx.Response]:
        out = [await client.delete(f"/v1/campaigns/{cid}", headers=AUTH)]
        for action in then:
            if action == "delete":
                out.append(await client.delete(f"/v1/campaigns/{cid}", headers=AUTH))
            elif action == "get":
                out.append(await client.get(f"/v1/campaigns/{cid}", headers=AUTH))
            else:
                out.append(await client.post(f"/v1/campaigns/{cid}/{action}", headers=AUTH))
        return out

    return list(run(server, steps))


def test_purging_a_finished_campaign_deletes_everything_it_keeps(server, sync_redis) -> None:
    cid = write_campaign(sync_redis, 2)
    set_records(sync_redis, cid, [("37041000001", State.SENT, 1), ("37041000002", State.FAILED, 2)])
    purged, status, again = delete(server, cid, "get", "delete")
    assert purged.status_code == 200, purged.text
    assert purged.json() == {"campaign_id": cid, "purged": True}
    problem(status, "campaign_not_found")
    assert problem(again, "campaign_not_found")["detail"] == f"no campaign {cid!r}"
    assert sync_redis.keys(f"*{cid}*") == []
    assert sync_redis.zscore(keys.campaigns(), cid) is None


def test_purging_a_campaign_with_pending_messages_is_409_until_cancelled(
    server, sync_redis
) -> None:
    cid = write_campaign(sync_redis, 3)
    refused, cancelled, purged = delete(server, cid, "cancel", "delete")
    assert "still has 3 messages queued" in problem(refused, "campaign_pending")["detail"]
    assert cancelled.status_code == 200
    assert purged.status_code == 200 and purged.json()["purged"] is True
    assert sync_redis.exists(keys.campaign(cid)) == 0


@pytest.mark.parametrize("cid", [ABSENT, "nope"])
def test_purging_an_unknown_campaign_is_404(server, cid: str) -> None:
    [response] = delete(server, cid)
    assert problem(response, "campaign_not_found")["detail"] == f"no campaign {cid!r}"


def test_redis_down_while_purging_is_503(server) -> None:
    server.connected = False
    [response] = delete(server, ABSENT)
    problem(response, "redis_unavailable")
    assert response.headers["retry-after"]
