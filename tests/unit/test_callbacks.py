"""Tests for the callback ingester (callbacks.app and callbacks.document) through
httpx.ASGITransport: the token, media types, size limit, validation, and ledger updates."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import fakeredis
import fakeredis.aioredis
import httpx
import pytest
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from redis.exceptions import ConnectionError as RedisConnectionError
from smsq_testing import OWNER, SOURCE, TOKEN, make_settings, write_campaign

from callbacks.app import MAX_BODY_BYTES, create_app
from callbacks.document import InvalidCallback, parse
from ledger.settings import Settings
from ledger.store import Ledger

JSONAPI = "application/vnd.api+json"
DEST = "37060000000"


def valid_doc(didww_id: str = "d-1", **attrs: Any) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "time_start": "1997-07-16T19:20:30.45Z",
        "end_time": "2001-07-16T19:20:30.45Z",
        "destination": DEST,
        "source": SOURCE,
        "status": "Success",
        "code_id": None,
        "fragments_sent": 7,
    }
    attributes.update(attrs)
    return {
        "data": {"type": "outbound_message_callbacks", "id": didww_id, "attributes": attributes}
    }


@asynccontextmanager
async def ingester(
    server: fakeredis.FakeServer, cfg: Settings | None = None
) -> AsyncIterator[tuple[httpx.AsyncClient, Ledger]]:
    """The app with its lifespan run, and a client that reaches it without a socket."""
    redis = fakeredis.aioredis.FakeRedis(server=server)
    app = create_app(cfg or make_settings(), redis=redis)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cb.test") as client:
            yield client, app.state.ledger
    await redis.aclose()


async def post(
    client: httpx.AsyncClient,
    body: bytes | dict[str, Any],
    *,
    token: str | None = TOKEN,
    content_type: str | None = JSONAPI,
) -> httpx.Response:
    content = json.dumps(body).encode() if isinstance(body, dict) else body
    headers = {"content-type": content_type} if content_type is not None else {}
    params = {"token": token} if token is not None else {}
    return await client.post("/callbacks", content=content, headers=headers, params=params)


async def accepted_message(ledger: Ledger, server: fakeredis.FakeServer, didww_id: str) -> str:
    """A one-message campaign whose message DIDWW has accepted as ``didww_id``."""
    sync = fakeredis.FakeRedis(server=server)
    cid = write_campaign(sync, [DEST])
    sync.close()
    c = await ledger.campaign(cid)
    assert c is not None
    [r] = await ledger.records(cid, 0)
    assert await ledger.claim(c, r, OWNER) == ["claimed"]
    assert (await ledger.accept(c, r, didww_id))[0] == "accepted"
    return cid


def run(
    server: fakeredis.FakeServer,
    steps: Callable[[httpx.AsyncClient, Ledger], Awaitable[Any]],
    cfg: Settings | None = None,
) -> Any:
    async def go() -> Any:
        async with ingester(server, cfg) as (client, ledger):
            return await steps(client, ledger)

    return asyncio.run(go())


@pytest.mark.parametrize("token", [None, "", "wrong", TOKEN + "x", TOKEN[:-1]])
def test_missing_or_wrong_token_is_401(server, read_events, token: str | None) -> None:
    async def steps(client: httpx.AsyncClient, _: Ledger) -> httpx.Response:
        return await post(client, valid_doc(), token=token)

    response = run(server, steps)
    assert response.status_code == 401
    assert TOKEN not in response.text
    assert read_events() == []


def test_no_configured_token_refuses_everything(server) -> None:
    async def steps(client: httpx.AsyncClient, _: Ledger) -> list[int]:
        return [
            (await post(client, valid_doc(), token="")).status_code,
            (await post(client, valid_doc(), token=None)).status_code,
        ]

    assert run(server, steps, make_settings(callback_token="")) == [401, 401]


@pytest.mark.parametrize(
    "content_type", ["application/json", JSONAPI, f"{JSONAPI}; charset=utf-8", "Application/JSON"]
)
def test_json_media_types_are_accepted(server, content_type: str) -> None:
    async def steps(client: httpx.AsyncClient, _: Ledger) -> httpx.Response:
        return await post(client, valid_doc(), content_type=content_type)

    response = run(server, steps)
    assert response.status_code == 200
    assert response.json() == {"result": "orphan"}


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_other_media_types_are_415(server, read_events, content_type: str | None) -> None:
    async def steps(client: httpx.AsyncClient, _: Ledger) -> httpx.Response:
        return await post(client, valid_doc(), content_type=content_type)

    assert run(server, steps).status_code == 415
    assert read_events() == []


def test_body_over_64_kib_is_413(server, sync_redis) -> None:
    doc = valid_doc()
    doc["padding"] = "x" * MAX_BODY_BYTES

    async def steps(client: httpx.AsyncClient, _: Ledger) -> httpx.Response:
        return await post(client, doc)

    assert run(server, steps).status_code == 413
    assert sync_redis.keys("smsq:orphan:*") == []


def test_streamed_body_over_64_kib_without_length_is_413(server) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b" " * 4096

    async def steps(client: httpx.AsyncClient, _: Ledger) -> httpx.Response:
        return await client.post(
            "/callbacks",
            content=chunks(),
            headers={"content-type": JSONAPI},
            params={"token": TOKEN},
        )

    response = run(server, steps)
    assert response.status_code == 413


def _without(path: str) -> dict[str, Any]:
    doc = valid_doc()
    *parents, last = path.split(".")
    node = doc
    for name in parents:
        node = node[name]
    del node[last]
    return doc


MALFORMED: dict[str, bytes | dict[str, Any]] = {
    "not-json": b"{not json",
    "empty": b"",
    "list": b"[1, 2]",
    "no-data": {"meta": {}},
    "data-not-object": {"data": "x"},
    "wrong-type": {"data": {**valid_doc()["data"], "type": "outbound_messages"}},
    "missing-id": _without("data.id"),
    "empty-id": {"data": {**valid_doc()["data"], "id": ""}},
    "numeric-id": {"data": {**valid_doc()["data"], "id": 5}},
    "long-id": {"data": {**valid_doc()["data"], "id": "x" * 101}},
    "no-attributes": _without("data.attributes"),
    "bad-status": valid_doc(status="Delivered"),
    "status-list": valid_doc(status=[]),
    "status-object": valid_doc(status={"Success": 1}),
    "missing-status": _without("data.attributes.status"),
    "code-id-string": valid_doc(code_id="2"),
    "code-id-true": valid_doc(code_id=True),
    "code-id-float": valid_doc(code_id=2.5),
    "code-id-negative": valid_doc(code_id=-1),
    "fragments-string": valid_doc(fragments_sent="7"),
    "missing-destination": _without("data.attributes.destination"),
    "source-number": valid_doc(source=37041123456),
    "time-start-number": valid_doc(time_start=5),
    # JSON may escape a lone surrogate, which no UTF-8 store can hold.
    "surrogate-destination": valid_doc(destination="\ud800"),
    "surrogate-time-end": valid_doc(end_time="2001\udfff"),
    "surrogate-id": {"data": {**valid_doc()["data"], "id": "d-\ud83d"}},
    # Deep enough to hit the parser's recursion limit, small enough to pass the size limit.
    "deep-nesting": b"[" * 30_000 + b"]" * 30_000,
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_documents_are_400(server, read_events, sync_redis, name: str) -> None:
    body = MALFORMED[name]

    async def steps(client: httpx.AsyncClient, ledger: Ledger) -> httpx.Response:
        await accepted_message(ledger, server, "d-1")
        return await post(client, body)

    response = run(server, steps)
    assert response.status_code == 400, response.text
    assert response.json()["errors"][0]["status"] == "400"
    assert [e["type"] for e in read_events()] == ["accepted"]
    assert sync_redis.keys("smsq:orphan:*") == []


@pytest.mark.parametrize("spelling", ["end_time", "time_end"])
def test_end_time_in_either_spelling(spelling: str) -> None:
    doc = valid_doc()
    attrs = doc["data"]["attributes"]
    del attrs["end_time"]
    attrs[spelling] = "2001-07-16T19:20:30.45Z"
    update = parse(json.dumps(doc).encode())
    assert update.event["time_end"] == "2001-07-16T19:20:30.45Z"
    assert "end_time" not in update.event


def test_end_time_through_the_app(server, read_events) -> None:
    doc = valid_doc()
    del doc["data"]["attributes"]["end_time"]
    doc["data"]["attributes"]["time_end"] = "2001-01-01T00:00:00Z"

    async def steps(client: httpx.AsyncClient, ledger: Ledger) -> httpx.Response:
        await accepted_message(ledger, server, "d-1")
        return await post(client, doc)

    assert run(server, steps).status_code == 200
    assert read_events()[-1]["time_end"] == "2001-01-01T00:00:00Z"


def test_unknown_code_id_passes_through_as_a_number(server, read_events) -> None:
    async def steps(client: httpx.AsyncClient, ledger: Ledger) -> httpx.Response:
        await accepted_message(ledger, server, "d-1")
        return await post(client, valid_doc(status="Failed", code_id=999))

    assert run(server, steps).status_code == 200
    failed = read_events()[-1]
    assert failed["type"] == "failed"
    assert failed["code_id"] == 999
    assert failed["reason"] is None


def test_a_valid_callback_settles_the_message_once(server, read_events, states) -> None:
    async def steps(client: httpx.AsyncClient, ledger: Ledger) -> tuple[Any, ...]:
        cid = await accepted_message(ledger, server, "d-1")
        first = await post(client, valid_doc())
        after_first = len(read_events())
        second = await post(client, valid_doc(), content_type="application/json")
        return cid, first, after_first, second

    cid, first, after_first, second = run(server, steps)
    assert first.status_code == 200 and first.json() == {"result": "applied"}
    assert second.status_code == 200 and second.json() == {"result": "duplicate"}
    events = read_events()
    assert len(events) == after_first == 2
    sent = events[-1]
    assert sent["type"] == "sent"
    assert sent["campaign_id"] == cid
    assert sent["message_id"] == f"{cid}-0"
    assert sent["didww_id"] == "d-1"
    assert sent["destination"] == DEST and sent["source"] == SOURCE
    assert sent["status"] == "Success"
    assert sent["code_id"] is None
    assert sent["fragments_sent"] == 7
    assert sent["time_start"] == "1997-07-16T19:20:30.45Z"
    assert sent["time_end"] == "2001-07-16T19:20:30.45Z"
    assert states(cid) == {0: "sent"}


def test_redis_failure_answers_503(server, monkeypatch) -> None:
    async def broken(self: Ledger, update: Any) -> str:
        raise RedisConnectionError("redis down")

    monkeypatch.setattr(Ledger, "apply_callback", broken)

    async def steps(client: httpx.AsyncClient, _: Ledger) -> httpx.Response:
        return await post(client, valid_doc())

    assert run(server, steps).status_code == 503


def test_healthz(server) -> None:
    async def steps(client: httpx.AsyncClient, _: Ledger) -> httpx.Response:
        return await client.get("/healthz")

    response = run(server, steps)
    assert response.status_code == 200 and response.json() == {"ok": True}


# Generated bodies: whatever arrives, the answer is 200 or 4xx, and only valid ones count.

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**40), max_value=2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["\ud800", "x\udfff", "\x00", "\u2028"]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)

FIELDS = [
    "time_start",
    "end_time",
    "time_end",
    "destination",
    "source",
    "status",
    "code_id",
    "fragments_sent",
]


@st.composite
def mutated_documents(draw: st.DrawFn) -> dict[str, Any]:
    doc = copy.deepcopy(valid_doc(draw(st.sampled_from(["d-1", "d-2", "x" * 100]))))
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(["attr", "attr-del", "data", "data-del", "root"]))
        attrs = doc["data"].get("attributes") if isinstance(doc.get("data"), dict) else None
        if where == "attr" and isinstance(attrs, dict):
            value = draw(
                json_values
                | st.sampled_from(["Success", "Failed", "Routing Error", 0, 4, 105, 2**31, None])
            )
            attrs[draw(st.sampled_from(FIELDS))] = value
        elif where == "attr-del" and isinstance(attrs, dict):
            attrs.pop(draw(st.sampled_from(FIELDS)), None)
        elif where == "data" and isinstance(doc.get("data"), dict):
            doc["data"][draw(st.sampled_from(["type", "id", "attributes"]))] = draw(json_values)
        elif where == "data-del" and isinstance(doc.get("data"), dict):
            doc["data"].pop(draw(st.sampled_from(["type", "id", "attributes"])), None)
        elif where == "root":
            doc[draw(st.sampled_from(["data", "meta"]))] = draw(json_values)
    return doc


@st.composite
def valid_documents(draw: st.DrawFn) -> dict[str, Any]:
    """Documents DIDWW could send: every field of the right type, optional ones maybe absent."""
    attrs: dict[str, Any] = {
        "destination": draw(st.from_regex(r"[1-9][0-9]{7,14}", fullmatch=True)),
        "source": SOURCE,
        "status": draw(st.sampled_from(["Success", "Failed", "Routing Error"])),
        "code_id": draw(st.none() | st.integers(0, 2**31 - 1)),
        "fragments_sent": draw(st.none() | st.integers(0, 255)),
    }
    for name in ("time_start", "end_time", "time_end"):
        if draw(st.booleans()):
            attrs[name] = draw(st.text(min_size=1, max_size=64) | st.just("\ud800"))
    didww_id = draw(st.sampled_from(["d-1", "d-2"]) | st.text(min_size=1, max_size=100))
    return {"data": {"type": "outbound_message_callbacks", "id": didww_id, "attributes": attrs}}


bodies = st.one_of(
    st.binary(max_size=200),
    valid_documents().map(lambda d: json.dumps(d).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    mutated_documents().map(lambda d: json.dumps(d).encode()),
    # Raw UTF-8 on the wire; a lone surrogate goes out as bytes no decoder accepts.
    mutated_documents().map(
        lambda d: json.dumps(d, ensure_ascii=False).encode("utf-8", "surrogatepass")
    ),
)


@hsettings(
    max_examples=320,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(body=bodies, content_type=st.sampled_from([JSONAPI, "application/json"]))
def test_generated_bodies_never_break_the_ingester(body: bytes, content_type: str) -> None:
    server = fakeredis.FakeServer()
    sync = fakeredis.FakeRedis(server=server)
    stream = make_settings().events_stream

    async def steps(client: httpx.AsyncClient, ledger: Ledger) -> tuple[int, int, httpx.Response]:
        await accepted_message(ledger, server, "d-1")
        before = await ledger.redis.xlen(stream)
        response = await post(client, body, content_type=content_type)
        return before, await ledger.redis.xlen(stream), response

    try:
        before, after, response = run(server, steps)
        orphans = sync.keys("smsq:orphan:*")
    finally:
        sync.close()
    assert response.status_code == 200 or 400 <= response.status_code < 500, response.text
    event(f"HTTP {response.status_code}")
    try:
        update = parse(body)
    except InvalidCallback:
        update = None
    if response.status_code != 200:
        assert response.status_code == 400
        assert update is None
        assert after == before
        assert orphans == []
    else:
        assert update is not None
        assert response.json()["result"] in {"applied", "orphan"}
        assert after - before == (1 if response.json()["result"] == "applied" else 0)
        if response.json()["result"] == "applied":
            assert update.didww_id == "d-1"
