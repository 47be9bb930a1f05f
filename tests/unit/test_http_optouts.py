"""Tests for the opt-out list and inbound replies through the HTTP API
(producer.http_optouts) on fakeredis (the optout script runs there through lupa)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import fakeredis
import httpx
import pytest
from test_http_api import AUTH, campaign_body, post_json, problem, run

from ledger import keys
from ledger.store import Ledger
from producer.http_optouts import EXPORT_CHUNK_NUMBERS, keyword_action


def call(server: fakeredis.FakeServer, *requests: tuple[str, str, Any]) -> list[httpx.Response]:
    """Each (method, path, JSON body or None) in turn."""

    async def steps(client: httpx.AsyncClient, _: Ledger) -> list[httpx.Response]:
        out = []
        for method, path, body in requests:
            headers = dict(AUTH)
            content = None
            if body is not None:
                headers["content-type"] = "application/json"
                content = json.dumps(body).encode()
            out.append(await client.request(method, path, content=content, headers=headers))
        return out

    return list(run(server, steps))


def listed(sync_redis: fakeredis.FakeRedis, number: str) -> bool:
    return bool(sync_redis.sismember(keys.optout(int(number)), number))


# --- the list


def test_add_count_check_and_remove_numbers(server, sync_redis) -> None:
    numbers = ["+370 41 654321", "0037041654322", "12", "37041654321", "abc"]
    added, again, count, one, other, removed, after = call(
        server,
        ("POST", "/v1/optouts", {"numbers": numbers}),
        ("POST", "/v1/optouts", {"numbers": ["37041654322", "37041654323"]}),
        ("GET", "/v1/optouts", None),
        ("GET", "/v1/optouts/" + quote("+370 41 654321"), None),
        ("GET", "/v1/optouts/37041654399", None),
        ("DELETE", "/v1/optouts", {"numbers": ["37041654321", "37041654399"]}),
        ("GET", "/v1/optouts", None),
    )
    assert added.status_code == 200, added.text
    assert added.json() == {
        "added": 2,
        "already_listed": 0,
        "rejected": 2,
        "rejections": [
            {
                "line": 3,
                "index": 2,
                "value": "12",
                "reason": "too short for +1 (US, AG, AI, \u2026): 1 digit after +1, need 10",
            },
            {"line": 5, "index": 4, "value": "abc", "reason": "contains 'a', which is not a digit"},
        ],
    }
    assert again.json() == {"added": 1, "already_listed": 1, "rejected": 0, "rejections": []}
    assert count.json() == {"count": 3}
    assert one.json() == {"number": "37041654321", "opted_out": True}
    assert other.json() == {"number": "37041654399", "opted_out": False}
    assert removed.json() == {"removed": 1, "not_listed": 1, "rejected": 0, "rejections": []}
    assert after.json() == {"count": 2}
    assert not listed(sync_redis, "37041654321") and listed(sync_redis, "37041654323")


def test_an_opted_out_number_is_suppressed_in_the_next_campaign(server) -> None:
    async def steps(client: httpx.AsyncClient, _: Ledger) -> httpx.Response:
        await client.post("/v1/optouts", json={"numbers": ["37041654322"]}, headers=AUTH)
        return await post_json(client, campaign_body())

    response = run(server, steps)
    assert response.status_code == 201, response.text
    assert response.json()["suppressed"] == 1 and response.json()["queued"] == 2


@pytest.mark.parametrize("method", ["POST", "DELETE"])
@pytest.mark.parametrize(
    ("body", "code", "names"),
    [
        ({}, "missing_field", "numbers: required"),
        ({"numbers": "37041654321"}, "invalid_field", "numbers: must be an array"),
        ({"numbers": ["37041654321", 37041654322]}, "invalid_field", "numbers[1]: must be a"),
        ({"numbers": ["37041654321"], "number": "x"}, "unknown_field", "unknown field 'number'"),
        ({"numbers": []}, "invalid_number", "no valid number (0 rejected)"),
        ({"numbers": ["12", "x"]}, "invalid_number", "no valid number (2 rejected)"),
    ],
)
def test_a_bad_numbers_body_is_422(
    server, sync_redis, method: str, body: Any, code: str, names: str
) -> None:
    [response] = call(server, (method, "/v1/optouts", body))
    assert names in problem(response, code)["detail"]
    assert sync_redis.get(keys.optout_count()) is None


def test_no_valid_number_lists_the_rejections(server) -> None:
    [response] = call(server, ("POST", "/v1/optouts", {"numbers": ["12"]}))
    assert problem(response, "invalid_number")["errors"] == [
        {
            "line": 1,
            "index": 0,
            "value": "12",
            "reason": "too short for +1 (US, AG, AI, \u2026): 1 digit after +1, need 10",
        }
    ]


def test_the_list_needs_a_json_body(server) -> None:
    async def steps(client: httpx.AsyncClient, _: Ledger) -> httpx.Response:
        return await client.post("/v1/optouts", content=b"37041654321", headers=AUTH)

    problem(run(server, steps), "unsupported_media_type")


@pytest.mark.parametrize("raw", ["12", "abc", "0037"])
def test_checking_an_invalid_number_is_422(server, raw: str) -> None:
    [response] = call(server, ("GET", f"/v1/optouts/{raw}", None))
    out = problem(response, "invalid_number")
    assert out["detail"].startswith(f"number: invalid number {raw!r}")
    assert [(e["parameter"], e["value"]) for e in out["errors"]] == [("number", raw)]


def test_export_streams_every_number_one_per_line(server, monkeypatch) -> None:
    monkeypatch.setattr("producer.http_optouts.EXPORT_CHUNK_NUMBERS", 2)
    numbers = [f"3704165{i:04d}" for i in range(5)]
    _, exported, as_flag, empty = call(
        server,
        ("POST", "/v1/optouts", {"numbers": numbers}),
        ("GET", "/v1/optouts?export=1", None),
        ("GET", "/v1/optouts?export=true", None),
        ("GET", "/v1/optouts?export=0", None),
    )
    assert exported.status_code == 200
    assert exported.headers["content-type"] == "text/plain; charset=utf-8"
    assert sorted(exported.text.splitlines()) == numbers
    assert exported.text.endswith("\n")
    assert as_flag.text == exported.text
    assert empty.json() == {"count": 5}
    assert EXPORT_CHUNK_NUMBERS > 2


def test_export_of_an_empty_list_is_empty(server) -> None:
    [response] = call(server, ("GET", "/v1/optouts?export=1", None))
    assert response.status_code == 200 and response.text == ""


@pytest.mark.parametrize(
    ("query", "code", "names"),
    [
        ("export=maybe", "invalid_parameter", "export: must be '1', 'true', '0', 'false' or ''"),
        ("limit=5", "unknown_parameter", "unknown query parameter 'limit'"),
    ],
)
def test_a_bad_list_query_is_422(server, query: str, code: str, names: str) -> None:
    [response] = call(server, ("GET", f"/v1/optouts?{query}", None))
    assert names in problem(response, code)["detail"]


# --- POST /v1/inbound


@pytest.mark.parametrize(
    ("text", "action"),
    [
        ("STOP", "opted_out"),
        ("stop", "opted_out"),
        ("Stop.", "opted_out"),
        ("  Stop please, no more", "opted_out"),
        ("opt-out", "opted_out"),
        ("\u00a1UNSUBSCRIBE!", "opted_out"),
        ("-- stop", "opted_out"),
        ("StopAll", "opted_out"),
        ("cancel", "opted_out"),
        ("END", "opted_out"),
        ("Quit", "opted_out"),
        ("OPTOUT", "opted_out"),
        ("START", "opted_in"),
        ("unstop", "opted_in"),
        ("Yes!", "opted_in"),
        ("opt-in", "opted_in"),
        ("Hello, when is the sale?", "none"),
        ("please stop", "none"),
        ("stopp", "none"),
        ("", "none"),
        ("...", "none"),
    ],
)
def test_keyword_action_reads_the_first_word(text: str, action: str) -> None:
    assert keyword_action(text) == action


def inbound(server: fakeredis.FakeServer, *bodies: Any) -> list[httpx.Response]:
    return call(server, *(("POST", "/v1/inbound", body) for body in bodies))


def test_stop_then_start_takes_the_sender_off_and_back(server, sync_redis) -> None:
    stop, again, hello, start = inbound(
        server,
        {"source": "+370 41 654321", "text": "STOP"},
        {"source": "37041654321", "text": "stop!"},
        {"source": "37041654321", "text": "Hello"},
        {"source": "0037041654321", "text": "Start"},
    )
    assert stop.status_code == 200, stop.text
    assert stop.json() == {"action": "opted_out", "number": "37041654321", "changed": True}
    assert again.json() == {"action": "opted_out", "number": "37041654321", "changed": False}
    assert hello.json() == {"action": "none", "number": "37041654321", "changed": False}
    assert start.json() == {"action": "opted_in", "number": "37041654321", "changed": True}
    assert not listed(sync_redis, "37041654321")
    assert sync_redis.get(keys.optout_count()) == b"0"


def test_a_stop_reply_is_on_the_list_afterwards(server, sync_redis) -> None:
    [response] = inbound(server, {"source": "37041654321", "text": "unsubscribe"})
    assert response.json()["action"] == "opted_out"
    assert listed(sync_redis, "37041654321")


@pytest.mark.parametrize(
    ("body", "code", "names"),
    [
        ({"source": "12", "text": "STOP"}, "invalid_number", "source: invalid number '12'"),
        ({"source": "abc", "text": "hello"}, "invalid_number", "source: invalid number 'abc'"),
        ({"text": "STOP"}, "missing_field", "source: required"),
        ({"source": "37041654321"}, "missing_field", "text: required"),
        ({"source": "37041654321", "text": None}, "invalid_field", "text: must be a string"),
        ({"source": 37041654321, "text": "STOP"}, "invalid_field", "source: must be a string"),
        ({"source": "37041654321", "text": "STOP", "to": "x"}, "unknown_field", "unknown field"),
    ],
)
def test_a_bad_inbound_body_is_422(server, sync_redis, body: Any, code: str, names: str) -> None:
    [response] = inbound(server, body)
    assert names in problem(response, code)["detail"]
    assert sync_redis.get(keys.optout_count()) is None
