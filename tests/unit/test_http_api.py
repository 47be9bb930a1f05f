"""Tests for the HTTP API (producer.http) through httpx.ASGITransport on fakeredis: the bearer
token on every endpoint, creating a campaign (priority campaigns and the trunk's urgent lane),
status, pause, resume and cancel, the body limit, Redis failures and JSON for every error.
The fakes and run() here serve test_http_campaigns, test_http_control and test_http_optouts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import fakeredis
import fakeredis.aioredis
import httpx
import pytest
from smsq_testing import SOURCE, accept, make_settings, stored, write_campaign

from dispatch import CAMPAIGN_QUEUE, PRIORITY_QUEUE, SEND_BATCH
from ledger import events, keys, records
from ledger.errors import ConfigError
from ledger.rate import RateParams
from ledger.settings import Settings
from ledger.states import ALL_STATES, CampaignState
from ledger.store import Ledger
from producer import http, http_common, problems
from producer.enqueue import Producer
from producer.plan import MAX_REPORTED_REJECTIONS

API_TOKEN = "api-SECRET-token"
AUTH = {"authorization": f"Bearer {API_TOKEN}"}
NUMBERS = ["+370 41 654321", "0037041654322", "37041654323"]
# A well-formed campaign id that no test stores.
ABSENT = "0123456789abcdef"


class FakeCelery:
    """Records the tasks the API publishes instead of talking to a broker."""

    def __init__(self, fail: bool = False, error: Exception | None = None) -> None:
        self.sent: list[tuple[str, list[Any], str]] = []
        self.kwargs: list[dict[str, Any]] = []
        self.fail = fail
        self.declared: set[str] = set()
        self.error = error or ConnectionError("broker unreachable")

    @contextlib.contextmanager
    def producer_or_acquire(self) -> Iterator[FakeCelery]:
        yield self

    def maybe_declare(self, queue: Any) -> None:
        self.declared.add(queue.name)

    def send_task(
        self,
        name: str,
        args: list[Any],
        kwargs: dict[str, Any],
        queue: str,
        producer: Any,
        shadow: str,
        argsrepr: str,
        kwargsrepr: str,
        declare: tuple[Any, ...],
    ) -> None:
        if self.fail:
            raise self.error
        assert shadow == f"{name}[{kwargs['trunk']}]"
        # Flower's texts as Celery would make them; the queues declared once, before.
        assert (argsrepr, kwargsrepr) == (repr(args), repr(kwargs))
        assert declare == () and queue in self.declared
        self.sent.append((name, args, queue))
        self.kwargs.append(kwargs)


def api_settings(**overrides: Any) -> Settings:
    return make_settings(api_token=API_TOKEN, **overrides)


Steps = Callable[[httpx.AsyncClient, Ledger], Awaitable[Any]]


def run(
    server: fakeredis.FakeServer,
    steps: Steps,
    *,
    celery: FakeCelery | None = None,
    cfg: Settings | None = None,
    raise_app_exceptions: bool = True,
) -> Any:
    """Run ``steps`` against the app (lifespan included) on this test's fake Redis."""
    cfg = cfg or api_settings()

    async def go() -> Any:
        redis = fakeredis.aioredis.FakeRedis(server=server)
        producer = Producer(cfg)
        producer.redis.close()
        producer.redis = fakeredis.FakeRedis(server=server)
        producer.planner.redis = producer.redis
        producer.celery = celery or FakeCelery()  # type: ignore[assignment]
        app = http.create_app(cfg, redis=redis, producer=producer)
        try:
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
                async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as c:
                    return await steps(c, app.state.api.ledger)
        finally:
            producer.close()
            await redis.aclose()

    return asyncio.run(go())


def campaign_body(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"source": SOURCE, "text": "Sale today", "destinations": NUMBERS}
    body.update(fields)
    return body


async def post_json(
    client: httpx.AsyncClient, body: Any, headers: dict[str, str] | None = None
) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await client.post(
        "/v1/campaigns",
        content=content,
        headers={"content-type": "application/json", **AUTH, **(headers or {})},
    )


def create(server: fakeredis.FakeServer, body: Any, celery: FakeCelery | None = None) -> Any:
    async def steps(client: httpx.AsyncClient, _: Ledger) -> httpx.Response:
        return await post_json(client, body)

    return run(server, steps, celery=celery)


def stored_campaigns(sync_redis: fakeredis.FakeRedis) -> list[bytes]:
    return list(sync_redis.zrange(keys.campaigns(), 0, -1))


PROBLEM_MEMBERS = {"type", "title", "status", "detail", "code", "errors", "errors_count"}


def problem(response: httpx.Response, code: str | None = None) -> dict[str, Any]:
    """The answer's problem details (RFC 9457), checked against producer/problems.py's table:
    its media type, its status and title those of its code (`code` when given)."""
    assert response.headers["content-type"] == problems.MEDIA_TYPE, response.text
    body = dict(response.json())
    spec = problems.CODES[body["code"]]
    assert code is None or body["code"] == code, body
    assert response.status_code == body["status"] == spec.status, body
    assert body["type"] == f"/v1/docs#{body['code']}" and body["title"] == spec.title
    assert isinstance(body["detail"], str) and body["detail"], body
    assert PROBLEM_MEMBERS <= set(body) <= {*PROBLEM_MEMBERS, "campaign_id"}, body
    assert body["errors_count"] >= len(body["errors"])
    return body


def urgent_lane(sync_redis: fakeredis.FakeRedis) -> list[str]:
    return [m.decode() for m in sync_redis.lrange(keys.urgent("default"), 0, -1)]


# --- POST /v1/campaigns


def test_create_campaign_is_201_with_the_enqueue_result(server, sync_redis) -> None:
    celery = FakeCelery()
    body = campaign_body(destinations=[*NUMBERS, "12", NUMBERS[0]], name="sale", ttl_s=600)
    response = create(server, body, celery)

    assert response.status_code == 201, response.text
    out = response.json()
    cid = out["campaign_id"]
    assert response.headers["location"] == f"/v1/campaigns/{cid}"
    assert out == {
        "campaign_id": cid,
        "dry_run": False,
        "repeated": False,
        "queued": 3,
        "rejected": 1,
        "rejections": [
            {
                "line": 4,
                "index": 3,
                "value": "12",
                "reason": "too short for +1 (US, AG, AI, \u2026): 1 digit after +1, need 10",
            }
        ],
        "duplicates": 1,
        "suppressed": 0,
        "max_segments": 1,
        "total_segments": 3,
        "segments_per_message": {"1": 3},
        "encoding": "GSM-7",
        "encodings": {"GSM-7": 3},
        "longest_message": "Sale today",
        "longest_segments": 1,
        "trunk": "default",
        "send_at": None,
        "priority": False,
        "duration_s": out["duration_s"],
    }
    assert keys.CAMPAIGN_ID.fullmatch(cid)
    c = stored(sync_redis, cid)
    assert c.name == "sale" and c.text == "Sale today"
    assert c.trunk == "default" and c.priority is False
    assert c.expires_at - c.created_at == pytest.approx(600)
    stored_records = list(records.iter_batch(0, sync_redis.get(keys.batch(cid, 0))))
    assert [r.destination for r in stored_records] == ["37041654321", "37041654322", "37041654323"]
    assert {r.state for r in stored_records} == {"queued"}
    assert sync_redis.hget(keys.counts(cid), "queued") == b"3"
    assert celery.sent == [(SEND_BATCH, [cid, 0], CAMPAIGN_QUEUE)]
    assert celery.kwargs == [{"trunk": "default", "urgent": False}]
    assert urgent_lane(sync_redis) == []


def test_a_single_message_goes_on_the_priority_queue(server, sync_redis) -> None:
    celery = FakeCelery()
    response = create(server, campaign_body(destinations=["37041654321"], name=None), celery)
    assert response.status_code == 201
    assert response.json()["priority"] is True
    cid = response.json()["campaign_id"]
    assert celery.sent == [(SEND_BATCH, [cid, 0], PRIORITY_QUEUE)]
    assert celery.kwargs == [{"trunk": "default", "urgent": True}]
    assert urgent_lane(sync_redis) == [f"{cid}|0|0"]


def test_a_priority_campaign_takes_the_urgent_lane(server, sync_redis) -> None:
    celery = FakeCelery()
    cfg = api_settings(batch_size=2)

    async def steps(client: httpx.AsyncClient, _: Ledger) -> httpx.Response:
        return await post_json(client, campaign_body(priority=True))

    response = run(server, steps, celery=celery, cfg=cfg)
    assert response.status_code == 201, response.text
    assert response.json()["priority"] is True
    cid = response.json()["campaign_id"]
    # Every message, as cid|batch|index, in index order.
    assert urgent_lane(sync_redis) == [f"{cid}|0|0", f"{cid}|0|1", f"{cid}|1|2"]
    assert stored(sync_redis, cid).priority is True
    assert celery.sent == [
        (SEND_BATCH, [cid, 0], PRIORITY_QUEUE),
        (SEND_BATCH, [cid, 1], PRIORITY_QUEUE),
    ]
    assert celery.kwargs == [{"trunk": "default", "urgent": True}] * 2


def test_priority_false_is_an_ordinary_campaign(server, sync_redis) -> None:
    celery = FakeCelery()
    response = create(server, campaign_body(priority=False), celery)
    assert response.status_code == 201, response.text
    assert response.json()["priority"] is False
    cid = response.json()["campaign_id"]
    assert urgent_lane(sync_redis) == []
    assert stored(sync_redis, cid).priority is False
    assert celery.sent == [(SEND_BATCH, [cid, 0], CAMPAIGN_QUEUE)]


def cut(value: Any) -> dict[str, Any]:
    """An item's `value` member: a scalar's (null left out), never an array or object."""
    return {} if value is None or isinstance(value, list | dict) else {"value": value}


@pytest.mark.parametrize("value", ["true", 1, 0, None, [], {}, "yes"])
def test_priority_must_be_a_boolean(server, sync_redis, value: Any) -> None:
    celery = FakeCelery()
    response = create(server, campaign_body(priority=value), celery)
    out = problem(response, "invalid_field")
    assert out["detail"] == "priority: must be true or false"
    assert out["errors"] == [{"field": "priority", "reason": "must be true or false", **cut(value)}]
    assert stored_campaigns(sync_redis) == [] and urgent_lane(sync_redis) == []
    assert celery.sent == []


def test_rejections_listed_are_capped_but_all_counted(server) -> None:
    bad = [f"x{i}" for i in range(MAX_REPORTED_REJECTIONS + 5)]
    out = create(server, campaign_body(destinations=[*bad, "37041654321"])).json()
    assert len(out["rejections"]) == MAX_REPORTED_REJECTIONS
    assert out["rejected"] == MAX_REPORTED_REJECTIONS + 5
    assert out["rejections"][-1]["index"] == MAX_REPORTED_REJECTIONS - 1


@pytest.mark.parametrize(
    ("body", "code", "names"),
    [
        (b"{not json", "invalid_json", "not valid JSON"),
        (b"\xff\xfe\x00", "invalid_json", "not valid JSON"),
        (b"[" * 100_000, "invalid_json", "not valid JSON"),
        ([], "invalid_body", "JSON object"),
        ({"text": "hi", "destinations": NUMBERS}, "missing_field", "source: required"),
        ({"source": SOURCE, "destinations": NUMBERS}, "missing_field", "text: required"),
        ({"source": SOURCE, "text": "hi"}, "missing_field", "destinations: required"),
        (campaign_body(source=37041123456), "invalid_field", "source: must be a string"),
        (campaign_body(text=None), "invalid_field", "text: must be a string"),
        (campaign_body(destinations="37041654321"), "invalid_field", "destinations: must be an"),
        (campaign_body(destinations=["37041654321", 1]), "invalid_field", "destinations[1]: must"),
        (campaign_body(name=5), "invalid_field", "name: must be a string"),
        (campaign_body(name="n" * 201), "invalid_field", "name: must be at most 200 characters"),
        (campaign_body(ttl_s=0), "invalid_field", "ttl_s: must be at least 1"),
        (campaign_body(ttl_s=-5), "invalid_field", "ttl_s: must be at least 1"),
        (campaign_body(ttl_s=1.5), "invalid_field", "ttl_s: must be a whole number"),
        (campaign_body(ttl_s=True), "invalid_field", "ttl_s: must be a whole number"),
        (campaign_body(ttl_s="60"), "invalid_field", "ttl_s: must be a whole number"),
        (campaign_body(destination=["37041654321"]), "unknown_field", "unknown field 'destinat"),
        (
            campaign_body(urgent=True),
            "unknown_field",
            "unknown field 'urgent' (the fields are source, text, destinations, recipients, "
            "name, ttl_s, priority, trunk, send_at, window, timezone, dry_run)",
        ),
        # A misspelt field is named first, whatever else is wrong.
        ({"text": 5, "to": ["37041654321"]}, "unknown_field", "unknown field 'to'"),
    ],
)
def test_malformed_bodies_are_refused_naming_the_field(
    server, sync_redis, body: Any, code: str, names: str
) -> None:
    celery = FakeCelery()
    response = create(server, body, celery)
    assert names in problem(response, code)["detail"]
    assert stored_campaigns(sync_redis) == [] and celery.sent == []


@pytest.mark.parametrize(
    ("fields", "code", "names"),
    [
        ({"text": "  "}, "empty_text", "the message text is empty"),
        ({"source": "12"}, "invalid_number", "invalid source number"),
        ({"text": "x" * 2000}, "text_too_long", "SMS segments"),
        ({"text": "hi {name"}, "invalid_template", "{name"),
        ({"text": "hi \ud800"}, "invalid_input", "message text is not valid UTF-8"),
        ({"name": "n\udcff"}, "invalid_field", "name: must be valid UTF-8 text"),
        ({"destinations": []}, "no_valid_recipient", "no valid destination number"),
    ],
)
def test_values_the_producer_refuses_are_422(
    server, sync_redis, fields, code: str, names: str
) -> None:
    celery = FakeCelery()
    response = create(server, campaign_body(**fields), celery)
    assert names in problem(response, code)["detail"]
    assert stored_campaigns(sync_redis) == [] and celery.sent == []


def test_no_valid_destination_is_422_with_every_rejection(server, sync_redis) -> None:
    response = create(server, campaign_body(destinations=["12", "abc"]))
    out = problem(response, "no_valid_recipient")
    assert out["detail"] == "no valid destination number (2 rejected)"
    assert [r["index"] for r in out["errors"]] == [0, 1] and out["errors_count"] == 2
    assert [r["value"] for r in out["errors"]] == ["12", "abc"]
    assert stored_campaigns(sync_redis) == []


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "application/xml"]
)
def test_other_content_types_are_415(server, sync_redis, content_type: str | None) -> None:
    async def steps(client: httpx.AsyncClient, _: Ledger) -> httpx.Response:
        headers = dict(AUTH)
        if content_type:
            headers["content-type"] = content_type
        return await client.post(
            "/v1/campaigns", content=json.dumps(campaign_body()).encode(), headers=headers
        )

    response = run(server, steps)
    assert "application/json" in problem(response, "unsupported_media_type")["detail"]
    assert stored_campaigns(sync_redis) == []


def test_json_with_a_charset_is_accepted(server) -> None:
    async def steps(client: httpx.AsyncClient, _: Ledger) -> httpx.Response:
        return await client.post(
            "/v1/campaigns",
            content=json.dumps(campaign_body()).encode(),
            headers={"content-type": "Application/JSON; charset=utf-8", **AUTH},
        )

    assert run(server, steps).status_code == 201


def test_body_over_the_limit_is_413(server, sync_redis, monkeypatch) -> None:
    monkeypatch.setattr(http_common, "MAX_BODY_BYTES", 1024)
    response = create(server, campaign_body(destinations=[f"3704165{i:04d}" for i in range(100)]))
    assert "1024 bytes" in problem(response, "body_too_large")["detail"]
    assert stored_campaigns(sync_redis) == []


def test_streamed_body_over_the_limit_without_length_is_413(server, monkeypatch) -> None:
    monkeypatch.setattr(http_common, "MAX_BODY_BYTES", 1024)
    sent: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            sent.append(1)
            yield b" " * 256

    async def steps(client: httpx.AsyncClient, _: Ledger) -> httpx.Response:
        headers = {"content-type": "application/json", **AUTH}
        return await client.post("/v1/campaigns", content=chunks(), headers=headers)

    response = run(server, steps)
    problem(response, "body_too_large")
    # Refused as the limit was crossed, not after reading the whole body.
    assert len(sent) < 100


def test_redis_down_while_creating_is_503(server) -> None:
    server.connected = False
    response = create(server, campaign_body())
    assert "Redis" in problem(response, "redis_unavailable")["detail"]
    assert response.headers["retry-after"] == str(http.RETRY_AFTER_S)


def test_stored_but_not_queued_is_202_naming_the_campaign(server, sync_redis) -> None:
    response = create(server, campaign_body(), FakeCelery(fail=True))
    assert response.status_code == 202, response.text
    [cid] = stored_campaigns(sync_redis)
    out = response.json()
    assert out["campaign_id"] == cid.decode()
    assert response.headers["location"] == f"/v1/campaigns/{cid.decode()}"
    assert out["queued"] == 3 and "workers queue the rest" in out["note"]
    # Left for the workers' supervisors to finish (ledger/enqueuing.py).
    assert sync_redis.zcard(keys.enqueuing()) == 1


# --- the token


PROTECTED = [
    ("POST", "/v1/campaigns"),
    ("GET", "/v1/campaigns/c1"),
    ("DELETE", "/v1/campaigns/c1"),
    ("GET", "/v1/campaigns/c1/messages"),
    ("POST", "/v1/campaigns/c1/pause"),
    ("POST", "/v1/campaigns/c1/resume"),
    ("POST", "/v1/campaigns/c1/cancel"),
    ("POST", "/v1/campaigns/c1/reschedule"),
    ("POST", "/v1/campaigns/c1/resend"),
    ("GET", "/v1/optouts"),
    ("POST", "/v1/optouts"),
    ("DELETE", "/v1/optouts"),
    ("GET", "/v1/optouts/37041654321"),
    ("POST", "/v1/inbound"),
]
BAD_AUTH = [
    None,
    "",
    "Bearer",
    "Bearer ",
    "Bearer wrong",
    f"Bearer {API_TOKEN}x",
    f"Bearer {API_TOKEN[:-1]}",
    f"Basic {API_TOKEN}",
    API_TOKEN,
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize("authorization", BAD_AUTH)
def test_missing_or_wrong_token_is_401(
    server, sync_redis, method: str, path: str, authorization: str | None
) -> None:
    cid = write_campaign(sync_redis, 3)
    path = path.replace("c1", cid)
    celery = FakeCelery()

    async def steps(client: httpx.AsyncClient, _: Ledger) -> httpx.Response:
        headers = {"content-type": "application/json"}
        if authorization is not None:
            headers["authorization"] = authorization
        body = {**campaign_body(), "numbers": NUMBERS, "state": "failed"}
        content = json.dumps(body).encode() if method != "GET" else None
        return await client.request(method, path, content=content, headers=headers)

    response = run(server, steps, celery=celery)
    assert problem(response, "unauthorized")["detail"] == "missing or wrong bearer token"
    assert response.headers["www-authenticate"] == 'Bearer realm="smsq"'
    assert API_TOKEN not in response.text
    assert stored_campaigns(sync_redis) == [cid.encode()] and celery.sent == []
    assert stored(sync_redis, cid).state == "active"
    assert sync_redis.get(keys.optout_count()) is None


def test_bearer_scheme_is_case_insensitive(server, sync_redis) -> None:
    cid = write_campaign(sync_redis, 3)

    async def steps(client: httpx.AsyncClient, _: Ledger) -> httpx.Response:
        return await client.get(
            f"/v1/campaigns/{cid}", headers={"authorization": f"bearer {API_TOKEN}"}
        )

    assert run(server, steps).status_code == 200


def test_the_app_refuses_to_exist_without_a_token() -> None:
    with pytest.raises(ConfigError, match="SMSQ_API_TOKEN is not set"):
        http.create_app(make_settings())


def test_main_without_a_token_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        http.main(["--port", "1"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == "smsq: configuration error: SMSQ_API_TOKEN is not set\n"


# --- GET /v1/campaigns/{id}


def test_status_is_what_smsq_status_json_prints(server, sync_redis) -> None:
    cid = write_campaign(sync_redis, 5, name="promo")

    async def steps(client: httpx.AsyncClient, ledger: Ledger) -> tuple[httpx.Response, Any]:
        response = await client.get(f"/v1/campaigns/{cid}", headers=AUTH)
        status = await ledger.status(cid)
        assert status is not None
        return response, status.as_dict()

    response, expected = run(server, steps)
    assert response.status_code == 200
    assert response.json() == expected
    out = response.json()
    assert out["campaign_id"] == cid and out["name"] == "promo" and out["total"] == 5
    assert out["state"] == "active" and out["done"] is False
    assert out["trunk"] == "default" and out["priority"] is False
    # Every message state is counted, the side exits included.
    assert out["counts"] == {str(state): 5 if state == "queued" else 0 for state in ALL_STATES}
    assert {"unconfirmed", "suppressed"} <= set(out["counts"])
    trunk = out["trunk_status"]
    assert trunk["name"] == "default"
    assert (trunk["halted"], trunk["halted_why"]) == (False, None)
    assert (trunk["backing_off"], trunk["backoff_why"]) == (False, None)
    assert trunk["parked_batches"] == 0 and trunk["orphan_callbacks_waiting"] == 0


def get_status(server: fakeredis.FakeServer, cid: str, before: Steps | None = None) -> Any:
    """GET /v1/campaigns/{cid}, after running ``before`` (given the client and the ledger)."""

    async def steps(client: httpx.AsyncClient, ledger: Ledger) -> httpx.Response:
        if before is not None:
            await before(client, ledger)
        return await client.get(f"/v1/campaigns/{cid}", headers=AUTH)

    response = run(server, steps)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize(
    ("state", "send_in_s", "expected"),
    [
        (CampaignState.ACTIVE, 0, "active"),
        (CampaignState.PAUSED, 0, "paused"),
        (CampaignState.CANCELLED, 0, "cancelled"),
        (CampaignState.SCHEDULED, 3600, "scheduled"),
        # Its time has come: active, though no worker has claimed from it yet.
        (CampaignState.SCHEDULED, -60, "active"),
    ],
)
def test_status_state_of_a_pending_campaign(
    server, sync_redis, state: CampaignState, send_in_s: float, expected: str
) -> None:
    send_at = time.time() + send_in_s if send_in_s else 0.0
    cid = write_campaign(sync_redis, 2, state=state, send_at=send_at)
    out = get_status(server, cid)
    assert out["state"] == expected and out["done"] is False
    assert out["send_at"] == (pytest.approx(send_at, abs=0.001) if send_at else None)


def test_status_of_a_finished_campaign_is_done_with_every_count(server, sync_redis) -> None:
    numbers = ["37041654321", "37041654322"]
    cid = write_campaign(sync_redis, numbers)

    async def finish(_: httpx.AsyncClient, ledger: Ledger) -> None:
        await accept(ledger, cid, "8c5e1b2a-4f3d-4e6a-9b7c-0d1e2f3a4b5c")
        assert await ledger.unconfirm(0) == 1
        # The other number opted out: its turn suppresses it, nothing is claimed.
        assert await ledger.optout_change("add", [numbers[1]]) == 1
        reply = await ledger.claim(
            "default",
            1,
            RateParams.of(1000, 1.0),
            due=0,
            want=0,
            max_messages=1,
            batches=[(cid, 0, [1])],
            event_base=events.encode(events.message_event(None, None, "", "", None)),
        )
        assert reply.claimed == []

    out = get_status(server, cid, finish)
    assert out["state"] == "done" and out["done"] is True and out["done_at"] is not None
    expected = dict.fromkeys(map(str, ALL_STATES), 0)
    expected.update(unconfirmed=1, suppressed=1)
    assert out["counts"] == expected


def test_a_cancelled_campaign_stays_cancelled_once_finished(server, sync_redis) -> None:
    cid = write_campaign(sync_redis, 2)
    [response] = control(server, cid, "cancel")
    assert response.status_code == 200
    out = get_status(server, cid)
    assert out["state"] == "cancelled" and out["done"] is True
    assert out["counts"]["cancelled"] == 2


@pytest.mark.parametrize(
    ("flag", "halted", "backing_off"), [("halt", True, False), ("back_off", False, True)]
)
def test_status_shows_its_trunk_halted_or_backing_off(
    server, sync_redis, flag: str, halted: bool, backing_off: bool
) -> None:
    cid = write_campaign(sync_redis, 2)

    async def stop(_: httpx.AsyncClient, ledger: Ledger) -> None:
        if flag == "halt":
            assert await ledger.halt("default", "Authorization failed")
        else:
            assert await ledger.back_off("default", "DIDWW answers 503", 60)

    trunk = get_status(server, cid, stop)["trunk_status"]
    assert trunk["name"] == "default"
    assert trunk["halted"] is halted and trunk["backing_off"] is backing_off
    assert trunk["halted_why"] == ("Authorization failed" if halted else None)
    assert trunk["backoff_why"] == ("DIDWW answers 503" if backing_off else None)


def test_another_trunks_halt_is_not_this_campaigns(server, sync_redis) -> None:
    cid = write_campaign(sync_redis, 2)
    other = write_campaign(sync_redis, 2, trunk="backup")

    async def stop(_: httpx.AsyncClient, ledger: Ledger) -> None:
        assert await ledger.halt("backup", "Authorization failed")
        assert await ledger.back_off("backup", "DIDWW answers 503", 60)

    out = get_status(server, cid, stop)
    assert out["trunk"] == "default"
    assert out["trunk_status"]["halted"] is False
    assert out["trunk_status"]["backing_off"] is False
    backup = get_status(server, other)
    assert backup["trunk"] == "backup" and backup["trunk_status"]["name"] == "backup"
    assert backup["trunk_status"]["halted"] is True
    assert backup["trunk_status"]["backing_off"] is True


@pytest.mark.parametrize("cid", [ABSENT, "c1", "0123456789ABCDEF", "a:b", "x" * 65, "%20"])
def test_unknown_campaign_is_404(server, cid: str) -> None:
    async def steps(client: httpx.AsyncClient, _: Ledger) -> list[httpx.Response]:
        return [
            await client.get(f"/v1/campaigns/{cid}", headers=AUTH),
            *[
                await client.post(f"/v1/campaigns/{cid}/{action}", headers=AUTH)
                for action in ("pause", "resume", "cancel")
            ],
        ]

    for response in run(server, steps):
        # %20 arrives as a space.
        out = problem(response, "campaign_not_found")
        assert out["detail"] == f"no campaign {cid.replace('%20', ' ')!r}"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/campaigns/c1"),
        ("POST", "/v1/campaigns/c1/resume"),
        ("POST", "/v1/campaigns/c1/pause"),
        ("POST", "/v1/campaigns/c1/cancel"),
    ],
)
def test_an_id_that_cannot_be_a_campaigns_is_404_unread(server, method: str, path: str) -> None:
    server.connected = False

    async def steps(client: httpx.AsyncClient, _: Ledger) -> httpx.Response:
        return await client.request(method, path, headers=AUTH)

    response = run(server, steps)
    assert problem(response, "campaign_not_found")["detail"] == "no campaign 'c1'"


def test_redis_down_while_reading_status_is_503(server) -> None:
    server.connected = False

    async def steps(client: httpx.AsyncClient, _: Ledger) -> httpx.Response:
        return await client.get(f"/v1/campaigns/{ABSENT}", headers=AUTH)

    response = run(server, steps)
    problem(response, "redis_unavailable")
    assert response.headers["retry-after"] == str(http.RETRY_AFTER_S)


# --- pause, resume, cancel


def control(server: fakeredis.FakeServer, cid: str, *actions: str, celery=None) -> list[Any]:
    async def steps(client: httpx.AsyncClient, _: Ledger) -> list[httpx.Response]:
        return [
            await client.post(f"/v1/campaigns/{cid}/{action}", headers=AUTH) for action in actions
        ]

    return list(run(server, steps, celery=celery))


@pytest.mark.parametrize(("priority", "queue"), [(False, CAMPAIGN_QUEUE), (True, PRIORITY_QUEUE)])
def test_pause_then_resume_requeues_the_batches_with_queued_messages(
    server, sync_redis, priority: bool, queue: str
) -> None:
    cid = write_campaign(sync_redis, 250, batch_size=100, priority=priority)
    celery = FakeCelery()
    paused, resumed = control(server, cid, "pause", "resume", celery=celery)
    assert paused.status_code == 200
    assert paused.json() == {"campaign_id": cid, "state": "paused"}
    assert resumed.status_code == 200
    assert resumed.json() == {
        "campaign_id": cid,
        "state": "active",
        "batches_queued": 3,
        "halt_lifted": False,
    }
    assert sorted(args[1] for _, args, _ in celery.sent) == [0, 1, 2]
    assert {q for _, _, q in celery.sent} == {queue}
    assert celery.kwargs == [{"trunk": "default", "urgent": priority}] * 3
    assert stored(sync_redis, cid).state == "active"


def test_paused_state_is_stored(server, sync_redis) -> None:
    cid = write_campaign(sync_redis, 3)
    [response] = control(server, cid, "pause")
    assert response.status_code == 200
    assert stored(sync_redis, cid).state == "paused"


@pytest.mark.parametrize(
    ("flag", "restored"),
    [(keys.halt("default"), "auth_restored"), (keys.backoff("default"), "api_restored")],
)
def test_resume_lifts_a_halt_or_backoff_and_requeues_parked_batches(
    server, sync_redis, read_events, flag: str, restored: str
) -> None:
    cid = write_campaign(sync_redis, 3)
    other = write_campaign(sync_redis, 3)
    sync_redis.set(flag, json.dumps({"detail": "Authorization failed"}))
    sync_redis.zadd(keys.parked(), {f"{other}|0": 1.0})
    celery = FakeCelery()
    [response] = control(server, cid, "resume", celery=celery)
    assert response.status_code == 200
    assert response.json()["halt_lifted"] is True
    assert response.json()["batches_queued"] == 2
    assert sync_redis.get(flag) is None and sync_redis.zcard(keys.parked()) == 0
    assert sorted(args[0] for _, args, _ in celery.sent) == sorted([cid, other])
    assert [e["type"] for e in read_events()] == [restored]


def test_cancel_cancels_queued_messages_and_a_repeat_is_409(server, sync_redis, counts) -> None:
    cid = write_campaign(sync_redis, 4)
    first, again = control(server, cid, "cancel", "cancel")
    assert first.status_code == 200
    assert first.json() == {"campaign_id": cid, "state": "cancelled", "cancelled": 4}
    assert problem(again, "campaign_finished")["detail"].startswith(f"campaign {cid} is cancelled")
    assert counts(cid) == {"cancelled": 4}


def test_pause_or_resume_of_a_cancelled_campaign_is_409(server, sync_redis) -> None:
    cid = write_campaign(sync_redis, 2, state=CampaignState.CANCELLED)
    celery = FakeCelery()
    for response in control(server, cid, "pause", "resume", celery=celery):
        out = problem(response, "campaign_finished")
        assert out["detail"].startswith(f"campaign {cid} is cancelled: it can no longer")
    assert stored(sync_redis, cid).state == "cancelled" and celery.sent == []


@pytest.mark.parametrize("action", ["pause", "resume", "cancel"])
def test_redis_down_while_controlling_is_503(server, action: str) -> None:
    server.connected = False
    [response] = control(server, ABSENT, action)
    problem(response, "redis_unavailable")
    assert response.headers["retry-after"] == str(http.RETRY_AFTER_S)


# --- the rest


def test_healthz_needs_no_token(server) -> None:
    async def steps(client: httpx.AsyncClient, _: Ledger) -> httpx.Response:
        return await client.get("/healthz")

    response = run(server, steps)
    assert response.status_code == 200 and response.json() == {"ok": True}


def test_unknown_paths_and_methods_answer_problems(server) -> None:
    async def steps(client: httpx.AsyncClient, _: Ledger) -> list[httpx.Response]:
        return [
            await client.get("/v2/campaigns", headers=AUTH),
            await client.put(f"/v1/campaigns/{ABSENT}", headers=AUTH),
        ]

    missing, wrong_method = run(server, steps)
    assert problem(missing, "not_found")["detail"] == "no endpoint at /v2/campaigns"
    assert problem(wrong_method, "method_not_allowed")["detail"] == (
        f"PUT is not allowed on /v1/campaigns/{ABSENT}"
    )
    assert "allow" in wrong_method.headers


def test_a_bug_answers_json_500_without_a_traceback(server, monkeypatch) -> None:
    async def broken(*_: Any) -> Any:
        raise RuntimeError("a bug with a secret detail")

    monkeypatch.setattr(http_common.Ledger, "status", broken)

    async def steps(client: httpx.AsyncClient, _: Ledger) -> httpx.Response:
        return await client.get(f"/v1/campaigns/{ABSENT}", headers=AUTH)

    response = run(server, steps, raise_app_exceptions=False)
    assert problem(response, "internal_error")["detail"] == "internal error; see the API's log"
    assert "secret" not in response.text


def test_a_malformed_trunk_setting_is_a_json_500_naming_it(server, sync_redis) -> None:
    async def steps(client: httpx.AsyncClient, _: Ledger) -> httpx.Response:
        return await post_json(client, campaign_body())

    response = run(server, steps, cfg=api_settings(trunk_names="Not A Name"))
    out = problem(response, "configuration_error")
    assert out["detail"].startswith("configuration error: SMSQ_TRUNKS")
    assert stored_campaigns(sync_redis) == []
