"""Tests for the callback ingester (callbacks.app, callbacks.document, callbacks.metrics)
through httpx.ASGITransport: the token, media types, size limit, validation, ledger updates
(applied, duplicate, orphan joined later, late) and the /metrics page."""

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
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from redis.exceptions import ConnectionError as RedisConnectionError
from smsq_testing import (
    SOURCE,
    TOKEN,
    accept,
    is_kept,
    kept_count,
    make_settings,
    write_campaign,
)

from callbacks.app import MAX_BODY_BYTES, create_app
from callbacks.document import InvalidCallback, parse
from callbacks.metrics import REGISTRY
from dispatch import CAMPAIGN_QUEUE, PRIORITY_QUEUE
from ledger import keys, records
from ledger.records import Record
from ledger.settings import Settings
from ledger.states import ALL_STATES, State
from ledger.store import Ledger

JSONAPI = "application/vnd.api+json"
DEST = "37060000000"
# DIDWW answers with UUIDs; the ledger keeps other ids too (hashed, the id beside them).
DIDWW_ID = "8c5e1b2a-4f3d-4e6a-9b7c-0d1e2f3a4b5c"
OTHER_ID = "1f0e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"
RAW_ID = "d-1"


def valid_doc(didww_id: str = DIDWW_ID, **attrs: Any) -> dict[str, Any]:
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


def new_campaign(
    server: fakeredis.FakeServer, destinations: list[str] | int = 1, trunk: str = "default"
) -> str:
    sync = fakeredis.FakeRedis(server=server)
    try:
        return write_campaign(sync, [DEST] if destinations == 1 else destinations, trunk=trunk)
    finally:
        sync.close()


async def accepted_message(
    ledger: Ledger, server: fakeredis.FakeServer, didww_id: str = DIDWW_ID
) -> str:
    """A one-message campaign whose message DIDWW has accepted as ``didww_id``."""
    cid = new_campaign(server)
    await accept(ledger, cid, didww_id)
    return cid


async def record_of(ledger: Ledger, cid: str, index: int = 0) -> Record:
    c = await ledger.campaign(cid)
    assert c is not None
    [found] = [r for r in await ledger.records(c, c.batch_of(index)) if r.index == index]
    return found


def run(
    server: fakeredis.FakeServer,
    steps: Callable[[httpx.AsyncClient, Ledger], Awaitable[Any]],
    cfg: Settings | None = None,
) -> Any:
    async def go() -> Any:
        async with ingester(server, cfg) as (client, ledger):
            return await steps(client, ledger)

    return asyncio.run(go())


def stats(sync_redis: fakeredis.FakeRedis, trunk: str = "") -> dict[str, int]:
    """The counters in all (fields without a trunk), or one trunk's (`name:trunk` fields)."""
    out = {}
    for field, value in sync_redis.hgetall(keys.stats()).items():
        name, _, of = field.decode().partition(":")
        if of == trunk:
            out[name] = int(value)
    return out


# --- the token, media types and sizes


@pytest.mark.parametrize("token", [None, "", "wrong", TOKEN + "x", TOKEN[:-1]])
def test_missing_or_wrong_token_is_401(server, read_events, sync_redis, token: str | None) -> None:
    async def steps(client: httpx.AsyncClient, _: Ledger) -> httpx.Response:
        return await post(client, valid_doc(), token=token)

    response = run(server, steps)
    assert response.status_code == 401
    assert response.json()["errors"][0]["status"] == "401"
    assert TOKEN not in response.text
    assert read_events() == []
    assert sync_redis.keys("smsq:kept*") == []


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

    response = run(server, steps)
    assert response.status_code == 415
    assert response.headers["content-type"].startswith(JSONAPI)
    assert read_events() == []


def test_body_over_64_kib_is_413(server, sync_redis) -> None:
    doc = valid_doc()
    doc["padding"] = "x" * MAX_BODY_BYTES

    async def steps(client: httpx.AsyncClient, _: Ledger) -> httpx.Response:
        return await post(client, doc)

    assert run(server, steps).status_code == 413
    assert sync_redis.keys("smsq:kept*") == []


def test_body_just_under_64_kib_is_read(server) -> None:
    doc = valid_doc()
    doc["padding"] = ""
    doc["padding"] = "x" * (MAX_BODY_BYTES - len(json.dumps(doc)))
    assert len(json.dumps(doc)) == MAX_BODY_BYTES

    async def steps(client: httpx.AsyncClient, _: Ledger) -> httpx.Response:
        return await post(client, doc)

    response = run(server, steps)
    assert response.status_code == 200 and response.json() == {"result": "orphan"}


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


# --- validation


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
    "code-id-too-big": valid_doc(code_id=2**31),
    "fragments-string": valid_doc(fragments_sent="7"),
    "missing-destination": _without("data.attributes.destination"),
    "source-number": valid_doc(source=37041123456),
    "time-start-number": valid_doc(time_start=5),
    "time-end-number": valid_doc(time_end=5),
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

    async def steps(client: httpx.AsyncClient, ledger: Ledger) -> tuple[httpx.Response, Record]:
        cid = await accepted_message(ledger, server)
        return await post(client, body), await record_of(ledger, cid)

    response, record = run(server, steps)
    assert response.status_code == 400, response.text
    assert response.json()["errors"][0]["status"] == "400"
    assert response.headers["content-type"].startswith(JSONAPI)
    assert [e["type"] for e in read_events()] == ["accepted"]
    assert record.state is State.ACCEPTED
    assert sync_redis.keys("smsq:kept*") == []


@pytest.mark.parametrize("spelling", ["end_time", "time_end"])
def test_end_time_in_either_spelling(spelling: str) -> None:
    doc = valid_doc()
    attrs = doc["data"]["attributes"]
    del attrs["end_time"]
    attrs[spelling] = "2001-07-16T19:20:30.45Z"
    update = parse(json.dumps(doc).encode())
    assert update.event["time_end"] == "2001-07-16T19:20:30.45Z"
    assert "end_time" not in update.event


@pytest.mark.parametrize("spelling", ["end_time", "time_end"])
def test_end_time_through_the_app(server, read_events, spelling: str) -> None:
    doc = valid_doc(time_start="2001-01-01T00:00:00Z")
    del doc["data"]["attributes"]["end_time"]
    doc["data"]["attributes"][spelling] = "2001-01-01T00:00:09Z"

    async def steps(client: httpx.AsyncClient, ledger: Ledger) -> tuple[httpx.Response, Record]:
        cid = await accepted_message(ledger, server)
        return await post(client, doc), await record_of(ledger, cid)

    response, record = run(server, steps)
    assert response.status_code == 200 and response.json() == {"result": "applied"}
    assert read_events()[-1]["time_end"] == "2001-01-01T00:00:09Z"
    assert "end_time" not in read_events()[-1]
    assert (record.t2, record.time_start, record.time_end) == (
        9,
        "2001-01-01T00:00:00Z",
        "2001-01-01T00:00:09Z",
    )


def test_unknown_code_id_passes_through_as_a_number(server, read_events) -> None:
    async def steps(client: httpx.AsyncClient, ledger: Ledger) -> tuple[httpx.Response, Record]:
        cid = await accepted_message(ledger, server)
        return await post(client, valid_doc(status="Failed", code_id=999)), await record_of(
            ledger, cid
        )

    response, record = run(server, steps)
    assert response.status_code == 200 and response.json() == {"result": "applied"}
    failed = read_events()[-1]
    assert failed["type"] == "failed"
    assert failed["status"] == "Failed"
    assert failed["code_id"] == 999
    assert failed["reason"] is None
    assert record.state is State.FAILED and record.code_id == 999


def test_routing_error_fails_the_message(server, read_events, counts) -> None:
    async def steps(client: httpx.AsyncClient, ledger: Ledger) -> tuple[str, httpx.Response]:
        cid = await accepted_message(ledger, server)
        return cid, await post(client, valid_doc(status="Routing Error", code_id=None))

    cid, response = run(server, steps)
    assert response.json() == {"result": "applied"}
    assert read_events()[-1]["type"] == "failed"
    assert counts(cid) == {"failed": 1}


# --- what a callback does to the ledger


def test_a_valid_callback_settles_the_message_once(server, read_events, counts, sync_redis) -> None:
    async def steps(client: httpx.AsyncClient, ledger: Ledger) -> tuple[Any, ...]:
        cid = await accepted_message(ledger, server)
        first = await post(client, valid_doc())
        after_first = len(read_events())
        second = await post(client, valid_doc(), content_type="application/json")
        c = await ledger.campaign(cid)
        return cid, first, after_first, second, await record_of(ledger, cid), c

    cid, first, after_first, second, record, c = run(server, steps)
    assert first.status_code == 200 and first.json() == {"result": "applied"}
    assert second.status_code == 200 and second.json() == {"result": "duplicate"}
    events = read_events()
    assert len(events) == after_first == 2
    sent = events[-1]
    assert sent["type"] == "sent"
    assert sent["campaign_id"] == cid
    assert sent["message_id"] == f"{cid}-0"
    assert sent["didww_id"] == DIDWW_ID
    assert sent["destination"] == DEST and sent["source"] == SOURCE
    assert sent["status"] == "Success"
    assert sent["code_id"] is None
    assert sent["fragments_sent"] == 7
    assert sent["time_start"] == "1997-07-16T19:20:30.45Z"
    assert sent["time_end"] == "2001-07-16T19:20:30.45Z"
    assert "late" not in sent
    assert record.state is State.SENT
    assert (record.didww_id, record.fragments, record.code_id) == (DIDWW_ID, 7, None)
    assert record.flags & records.LATE == 0
    assert record.time_start == "1997-07-16T19:20:30Z"
    assert counts(cid) == {"sent": 1}
    assert c is not None and c.done_at is not None
    assert stats(sync_redis) == {"callbacks_applied": 1, "callbacks_duplicate": 1}
    # Counted for the message's trunk too.
    assert stats(sync_redis, "default") == {"callbacks_applied": 1, "callbacks_duplicate": 1}


def test_a_didww_id_that_is_not_a_uuid_is_found_too(server, read_events, sync_redis) -> None:
    async def steps(client: httpx.AsyncClient, ledger: Ledger) -> tuple[Any, ...]:
        cid = await accepted_message(ledger, server, RAW_ID)
        other = await post(client, valid_doc("d-2"))
        return cid, await post(client, valid_doc(RAW_ID)), other, await record_of(ledger, cid)

    cid, response, other, record = run(server, steps)
    assert response.json() == {"result": "applied"}
    assert other.json() == {"result": "orphan"}
    assert read_events()[-1]["didww_id"] == RAW_ID
    assert read_events()[-1]["message_id"] == f"{cid}-0"
    assert record.state is State.SENT and record.flags & records.RAW_ID
    assert sync_redis.hget(keys.raw_ids(cid), "0") == RAW_ID.encode()


def test_a_callback_before_its_201_is_kept_then_joined(
    server, read_events, counts, sync_redis
) -> None:
    cid = new_campaign(server)

    async def steps(client: httpx.AsyncClient, ledger: Ledger) -> tuple[Any, ...]:
        kept = await post(client, valid_doc())
        again = await post(client, valid_doc())
        waiting = is_kept(sync_redis, DIDWW_ID), kept_count(sync_redis)
        recorded = await accept(ledger, cid, DIDWW_ID)
        late_copy = await post(client, valid_doc())
        return kept, again, waiting, recorded, late_copy, await record_of(ledger, cid)

    kept, again, waiting, recorded, late_copy, record = run(server, steps)
    assert kept.json() == {"result": "orphan"}
    assert again.json() == {"result": "duplicate"}
    assert waiting == (True, 1)
    # Settled by the same step that recorded DIDWW's 201.
    assert recorded.settled == ["sent"]
    assert late_copy.json() == {"result": "duplicate"}
    assert [e["type"] for e in read_events()] == ["accepted", "sent"]
    sent = read_events()[-1]
    assert sent["campaign_id"] == cid and sent["message_id"] == f"{cid}-0"
    assert sent["didww_id"] == DIDWW_ID and sent["fragments_sent"] == 7
    assert record.state is State.SENT and record.fragments == 7
    assert counts(cid) == {"sent": 1}
    assert not is_kept(sync_redis, DIDWW_ID) and kept_count(sync_redis) == 0
    assert stats(sync_redis) == {
        "orphans_kept": 1,
        "orphans_joined": 1,
        "callbacks_duplicate": 2,
    }


def test_a_late_callback_settles_an_unconfirmed_message(
    server, read_events, counts, sync_redis
) -> None:
    async def steps(client: httpx.AsyncClient, ledger: Ledger) -> tuple[Any, ...]:
        cid = await accepted_message(ledger, server)
        unconfirmed = await ledger.unconfirm(0)
        before = counts(cid)
        late = await post(client, valid_doc())
        again = await post(client, valid_doc())
        return cid, unconfirmed, before, late, again, await record_of(ledger, cid)

    cid, unconfirmed, before, late, again, record = run(server, steps)
    assert unconfirmed == 1 and before == {"unconfirmed": 1}
    assert late.status_code == 200 and late.json() == {"result": "late"}
    assert again.json() == {"result": "duplicate"}
    assert [e["type"] for e in read_events()] == ["accepted", "unconfirmed", "sent"]
    sent = read_events()[-1]
    assert sent["late"] is True
    assert sent["previous_state"] == "unconfirmed"
    assert sent["campaign_id"] == cid and sent["message_id"] == f"{cid}-0"
    assert sent["didww_id"] == DIDWW_ID
    assert record.state is State.SENT and record.flags & records.LATE
    assert counts(cid) == {"sent": 1}
    assert stats(sync_redis)["callbacks_late"] == 1


def test_a_callback_without_fragments_sent_keeps_the_estimate(server) -> None:
    sync = fakeredis.FakeRedis(server=server)
    cid = write_campaign(sync, [DEST], segments=2)
    sync.close()

    async def steps(client: httpx.AsyncClient, ledger: Ledger) -> tuple[httpx.Response, Record]:
        await accept(ledger, cid, DIDWW_ID)
        assert (await record_of(ledger, cid)).fragments == 2
        return await post(client, valid_doc(fragments_sent=None)), await record_of(ledger, cid)

    response, record = run(server, steps)
    assert response.json() == {"result": "applied"}
    assert record.state is State.SENT
    assert record.fragments == 2


@pytest.mark.parametrize("time_start", ["0001-01-01T00:00:00Z", "2200-01-01T00:00:00Z"])
def test_a_time_start_the_record_cannot_hold_is_not_stored_as_another_date(
    server, time_start: str
) -> None:
    async def steps(client: httpx.AsyncClient, ledger: Ledger) -> Record:
        cid = await accepted_message(ledger, server)
        await post(client, valid_doc(time_start=time_start))
        return await record_of(ledger, cid)

    record = run(server, steps)
    assert record.time_start in (None, time_start)


@pytest.mark.parametrize("how", ["apply_callback raises", "server down"])
def test_redis_failure_answers_503(server, monkeypatch, how: str) -> None:
    async def broken(self: Ledger, update: Any, trunk: str = "") -> str:
        raise RedisConnectionError("redis down")

    if how == "apply_callback raises":
        monkeypatch.setattr(Ledger, "apply_callback", broken)

    async def steps(client: httpx.AsyncClient, _: Ledger) -> httpx.Response:
        server.connected = how != "server down"
        return await post(client, valid_doc())

    response = run(server, steps)
    assert response.status_code == 503
    assert response.json()["errors"][0]["status"] == "503"


def test_healthz(server) -> None:
    async def steps(client: httpx.AsyncClient, _: Ledger) -> httpx.Response:
        return await client.get("/healthz")

    response = run(server, steps)
    assert response.status_code == 200 and response.json() == {"ok": True}


# --- /metrics


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page: (name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def orphans_counted() -> float:
    labels = {"status": "Success", "outcome": "orphan"}
    return REGISTRY.get_sample_value("smsq_callbacks_total", labels) or 0.0


@pytest.mark.parametrize(("flag", "halted", "backing_off"), [("halt", 1, 0), ("back_off", 0, 1)])
def test_metrics_show_the_ledger_the_trunk_and_the_callbacks(
    server, flag: str, halted: int, backing_off: int
) -> None:
    new_campaign(server, 3)
    before = orphans_counted()

    async def steps(client: httpx.AsyncClient, ledger: Ledger) -> httpx.Response:
        if flag == "halt":
            assert await ledger.halt("default", "Authorization failed")
        else:
            assert await ledger.back_off("default", "DIDWW answers 503", 60)
        assert (await post(client, valid_doc())).json() == {"result": "orphan"}
        return await client.get("/metrics")

    response = run(server, steps)
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    assert f'smsq_halted{{trunk="default"}} {halted}.0' in response.text.splitlines()
    got = samples(response.text)
    for state in ALL_STATES:
        expected = 3 if state is State.QUEUED else 0
        assert got[("smsq_messages", (("state", str(state)),))] == expected, state
    assert got[("smsq_halted", (("trunk", "default"),))] == halted
    assert got[("smsq_backing_off", (("trunk", "default"),))] == backing_off
    assert got[("smsq_queue_depth", (("queue", CAMPAIGN_QUEUE),))] == 0
    assert got[("smsq_queue_depth", (("queue", PRIORITY_QUEUE),))] == 0
    assert got[("smsq_parked_batches", (("trunk", "default"),))] == 0
    assert 0 <= got[("smsq_oldest_queued_age_seconds", ())] < 60
    assert got[("smsq_orphan_callbacks_waiting", (("trunk", "default"),))] == 1
    kept = (("result", "orphans_kept"), ("trunk", "default"))
    assert got[("smsq_callback_results", kept)] == 1
    assert got[("smsq_trunk_claimed_per_second", (("trunk", "default"),))] == 0
    # The alert the flag raised.
    assert got[("smsq_events_stream_length", ())] == 1
    labels = (("outcome", "orphan"), ("status", "Success"))
    assert got[("smsq_callbacks_total", labels)] == before + 1


def test_metrics_with_nothing_stored(server) -> None:
    async def steps(client: httpx.AsyncClient, _: Ledger) -> httpx.Response:
        return await client.get("/metrics")

    got = samples(run(server, steps).text)
    assert got[("smsq_halted", (("trunk", "default"),))] == 0
    assert got[("smsq_backing_off", (("trunk", "default"),))] == 0
    assert got[("smsq_oldest_queued_age_seconds", ())] == 0
    assert got[("smsq_messages", (("state", "queued"),))] == 0


def test_metrics_answer_503_while_redis_is_down(server) -> None:
    async def steps(client: httpx.AsyncClient, _: Ledger) -> httpx.Response:
        server.connected = False
        return await client.get("/metrics")

    response = run(server, steps)
    assert response.status_code == 503
    assert response.text == "redis unavailable\n"


# --- generated bodies: whatever arrives, the answer is 200 or 4xx, and only valid ones count

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
    doc = copy.deepcopy(valid_doc(draw(st.sampled_from([DIDWW_ID, OTHER_ID, "x" * 100]))))
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
    didww_id = draw(
        st.sampled_from([DIDWW_ID, OTHER_ID, RAW_ID]) | st.text(min_size=1, max_size=100)
    )
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
        await accepted_message(ledger, server)
        before = await ledger.redis.xlen(stream)
        response = await post(client, body, content_type=content_type)
        return before, await ledger.redis.xlen(stream), response

    try:
        before, after, response = run(server, steps)
        orphans = kept_count(sync)
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
        assert orphans == 0
    else:
        assert update is not None
        result = response.json()["result"]
        event(f"result {result}")
        assert result in {"applied", "orphan"}
        assert after - before == (1 if result == "applied" else 0)
        assert (orphans == 1) == (result == "orphan")
        if result == "applied":
            assert update.didww_id == DIDWW_ID


# --- a token settles only its own trunk's messages

EU_TOKEN = "eu-callbacks-token-0123"


def two_trunks(monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in {
        "SMSQ_TRUNK_EU_USERNAME": "eu",
        "SMSQ_TRUNK_EU_PASSWORD": "eu-password",
        "SMSQ_TRUNK_EU_CALLBACK_TOKEN": EU_TOKEN,
    }.items():
        monkeypatch.setenv(name, value)
    return make_settings(trunk_names="eu")


def test_another_trunks_token_cannot_settle_a_message(server, sync_redis, monkeypatch) -> None:
    cfg = two_trunks(monkeypatch)

    async def steps(client: httpx.AsyncClient, ledger: Ledger) -> tuple[Any, ...]:
        cid = new_campaign(server, trunk="eu")
        await accept(ledger, cid, DIDWW_ID)
        refused = await post(client, valid_doc())  # the default trunk's token
        after_refusal = await record_of(ledger, cid)
        applied = await post(client, valid_doc(), token=EU_TOKEN)
        return refused, after_refusal, applied, await record_of(ledger, cid)

    refused, after_refusal, applied, record = run(server, steps, cfg)
    assert refused.status_code == 403
    assert refused.json()["errors"][0]["title"] == "Forbidden"
    assert after_refusal.state == State.ACCEPTED
    assert applied.status_code == 200 and applied.json() == {"result": "applied"}
    assert record.state == State.SENT
    assert stats(sync_redis)["callbacks_forbidden"] == 1


def test_a_callback_kept_under_another_trunks_token_is_not_joined(
    server, sync_redis, monkeypatch
) -> None:
    """A callback that came before its 201, with the wrong trunk's token, is kept but never
    settles the message when its id is recorded."""
    cfg = two_trunks(monkeypatch)

    async def steps(client: httpx.AsyncClient, ledger: Ledger) -> tuple[Any, ...]:
        kept = await post(client, valid_doc())  # the default trunk's token, an id not yet known
        cid = new_campaign(server, trunk="eu")
        await accept(ledger, cid, DIDWW_ID)
        return kept, await record_of(ledger, cid)

    kept, record = run(server, steps, cfg)
    assert kept.json() == {"result": "orphan"}
    assert record.state == State.ACCEPTED
    assert stats(sync_redis)["callbacks_forbidden"] == 1
