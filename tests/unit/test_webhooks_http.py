"""/v1/webhooks (producer/http_webhooks.py) on a private redis-server, its routes served as
producer/http.py serves its own (every failure a problem-details answer): create shows the
secret once, list never does, rotate, failures, delete, refused input with its code; and the
routes make a valid OpenAPI document with the API's."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from openapi_spec_validator import validate
from redis.asyncio import Redis
from smsq_testing import make_settings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ledger.store import Ledger
from producer import http
from producer.http_common import Api, Handler, answer_problem
from producer.http_openapi import document
from producer.http_webhooks import ENDPOINTS, PATH_PARAMETERS


def _route(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return await answer_problem(handler, request)

    return endpoint


def call(redis_server: Any, steps: Callable[[httpx.AsyncClient], Awaitable[Any]], **cfg: Any):
    async def go() -> Any:
        redis = Redis.from_url(redis_server.url)
        app = Starlette(
            routes=[Route(e.path, _route(e.handler), methods=[e.method]) for e in ENDPOINTS]
        )
        settings = make_settings(**{"webhook_allow_private": True, **cfg})
        app.state.api = Api(Ledger(redis, settings), None)  # type: ignore[arg-type]
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as c:
                return await steps(c)
        finally:
            await redis.aclose()

    return asyncio.run(go())


def test_create_list_rotate_failures_delete(redis_server: Any, real_redis: Any) -> None:
    async def steps(c: httpx.AsyncClient) -> None:
        body = {"url": "http://127.0.0.1:9/hook", "events": ["sent"], "campaign": None}
        created = await c.post("/v1/webhooks", json=body)
        assert created.status_code == 201, created.text
        shown = created.json()
        assert shown["secret"].startswith("whsec_") and shown["events"] == ["sent"]
        assert created.headers["location"] == f"/v1/webhooks/{shown['id']}"

        listed = await c.get("/v1/webhooks")
        assert listed.status_code == 200
        assert [w["id"] for w in listed.json()["webhooks"]] == [shown["id"]]
        assert "secret" not in listed.text

        rotated = await c.post(f"/v1/webhooks/{shown['id']}/rotate")
        assert rotated.status_code == 200
        assert rotated.json()["secret"] not in (shown["secret"], None)

        failures = await c.get("/v1/webhooks/failures", params={"limit": "5"})
        assert failures.status_code == 200 and failures.json() == {"failures": []}

        assert (await c.delete(f"/v1/webhooks/{shown['id']}")).status_code == 204
        gone = await c.delete(f"/v1/webhooks/{shown['id']}")
        assert gone.status_code == 404
        assert gone.headers["content-type"] == "application/problem+json"
        assert (await c.post("/v1/webhooks/nope/rotate")).status_code == 404

    call(redis_server, steps)


def test_refused_input_has_its_code(redis_server: Any, real_redis: Any) -> None:
    async def steps(c: httpx.AsyncClient) -> list[tuple[int, str]]:
        bodies = [
            {"url": "https://127.0.0.1/hook"},
            {"url": "http://hooks.example.com/"},
            {"url": "https://93.184.215.14/", "events": ["delivered"]},
            {"url": "https://93.184.215.14/", "campaign": "nope"},
            {"url": "https://93.184.215.14/", "secret": "mine"},
        ]
        found = []
        for body in bodies:
            answer = await c.post("/v1/webhooks", json=body)
            found.append((answer.status_code, answer.json()["code"]))
        bad_limit = await c.get("/v1/webhooks/failures", params={"limit": "0"})
        found.append((bad_limit.status_code, bad_limit.json()["code"]))
        return found

    assert call(redis_server, steps, webhook_allow_private=False) == [
        (422, "private_url"),
        (422, "invalid_url"),
        (422, "unknown_event_type"),
        (422, "invalid_campaign"),
        (422, "unknown_field"),
        (422, "invalid_parameter"),
    ]
    assert real_redis.keys("smsq:webhook*") == []


def test_the_routes_make_a_valid_openapi_document() -> None:
    doc = document([*http.ROUTES, *ENDPOINTS], {**http.PATH_PARAMETERS, **PATH_PARAMETERS}, "smsq")
    validate(doc)
    assert {"/v1/webhooks", "/v1/webhooks/{wid}/rotate"} <= set(doc["paths"])
