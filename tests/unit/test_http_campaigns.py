"""Tests for creating campaigns through the HTTP API (producer.http_campaigns) on fakeredis:
recipients with fields, trunk, schedule, quiet hours, dry runs, the Idempotency-Key header,
a stored campaign whose publishing failed (202), and resends."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import httpx
import pytest
from kombu.exceptions import BatchPublishError, OperationalError
from smsq_testing import SOURCE, stored, write_campaign
from test_http_api import (
    ABSENT,
    AUTH,
    NUMBERS,
    FakeCelery,
    campaign_body,
    post_json,
    problem,
    run,
    stored_campaigns,
)

from dispatch import CAMPAIGN_QUEUE, PRIORITY_QUEUE, SEND_BATCH
from ledger import keys, records
from ledger.campaigns import FIELD_SEPARATOR
from ledger.states import State
from ledger.store import Ledger


def iso_in(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat()


def create_with(
    server: fakeredis.FakeServer,
    *bodies: Any,
    key: str | None = None,
    celery: FakeCelery | None = None,
) -> list[httpx.Response]:
    """POST each body in turn, all with the same Idempotency-Key if one is given."""
    headers = {"idempotency-key": key} if key is not None else None

    async def steps(client: httpx.AsyncClient, _: Ledger) -> list[httpx.Response]:
        return [await post_json(client, body, headers) for body in bodies]

    return list(run(server, steps, celery=celery))


def recipients_body(recipients: Any, **fields: Any) -> dict[str, Any]:
    body = campaign_body(**fields)
    del body["destinations"]
    body["recipients"] = recipients
    return body


# --- recipients


def test_recipients_with_fields_fill_a_templated_text(server, sync_redis) -> None:
    recipients = [
        {"destination": "+370 41 654321", "fields": {"name": "Ana", "code": 1234}},
        "37041654322",
        {"destination": "37041654323", "fields": {"name": "Bo", "code": None}},
        {"destination": "12", "fields": {"name": "Cy"}},
    ]
    body = recipients_body(recipients, text="Hi {name|there}, {code|no code}")
    [response] = create_with(server, body)

    assert response.status_code == 201, response.text
    out = response.json()
    assert out["queued"] == 3 and out["rejected"] == 1
    assert out["rejections"] == [
        {
            "line": 4,
            "index": 3,
            "value": "12",
            "reason": "too short for +1 (US, AG, AI, \u2026): 1 digit after +1, need 10",
        }
    ]
    cid = out["campaign_id"]
    assert stored(sync_redis, cid).fields == ("name", "code")
    values = sync_redis.hgetall(keys.fields(cid, 0))
    assert values[b"0"].decode().split(FIELD_SEPARATOR) == ["Ana", "1234"]
    assert values[b"1"].decode().split(FIELD_SEPARATOR) == ["", ""]
    assert values[b"2"].decode().split(FIELD_SEPARATOR) == ["Bo", ""]


def test_a_recipient_missing_a_field_without_default_is_rejected_by_index(server) -> None:
    recipients = [
        {"destination": "37041654321", "fields": {"name": "Ana"}},
        {"destination": "37041654322", "fields": {}},
    ]
    [response] = create_with(server, recipients_body(recipients, text="Hi {name}"))
    assert response.status_code == 201, response.text
    out = response.json()
    assert out["queued"] == 1
    assert out["rejections"] == [
        {"line": 2, "index": 1, "value": "37041654322", "reason": "no value for {name}"}
    ]


@pytest.mark.parametrize(
    ("recipients", "code", "names"),
    [
        ("37041654321", "invalid_field", "recipients: must be an array"),
        ({"destination": "37041654321"}, "invalid_field", "recipients: must be an array"),
        (["37041654321", 1], "invalid_field", "recipients[1]: must be a string or an object"),
        (["37041654321", None], "invalid_field", "recipients[1]: must be a string or an object"),
        ([{"fields": {"name": "Ana"}}], "missing_field", "recipients[0].destination: required"),
        ([{"destination": 1}], "invalid_field", "recipients[0].destination: must be a string"),
        (
            [{"destination": "37041654321", "name": "Ana"}],
            "unknown_field",
            "unknown field 'recipients[0].name'",
        ),
        (
            [{"destination": "37041654321", "fields": ["Ana"]}],
            "invalid_field",
            "recipients[0].fields: must be an object",
        ),
        (
            ["37041654321", {"destination": "37041654322", "fields": {"name": {"x": 1}}}],
            "invalid_field",
            "recipients[1].fields.name: must be a string, a number or null",
        ),
        (
            [{"destination": "37041654321", "fields": {"vip": True}}],
            "invalid_field",
            "recipients[0].fields.vip: must be a string, a number or null",
        ),
        (
            [{"destination": "37041654321", "fields": {"n": [1]}}],
            "invalid_field",
            "recipients[0].fields.n: must be",
        ),
        (
            ["37041654321", {"destination": "37041654322", "reference": 17}],
            "invalid_field",
            "recipients[1].reference: must be a string",
        ),
    ],
)
def test_malformed_recipients_are_422_naming_the_item(
    server, sync_redis, recipients: Any, code: str, names: str
) -> None:
    celery = FakeCelery()
    [response] = create_with(server, recipients_body(recipients), celery=celery)
    assert names in problem(response, code)["detail"]
    assert stored_campaigns(sync_redis) == [] and celery.sent == []


def test_references_are_stored_and_a_bad_one_rejects_its_recipient(server, sync_redis) -> None:
    recipients = [
        {"destination": "37041654321", "reference": "order-1017"},
        "37041654322",
        {"destination": "37041654323", "reference": "r" * 65},
        {"destination": "37041654324", "reference": "a\tb"},
        {"destination": "37041654325", "reference": None},
        {"destination": "37041654326", "reference": "é" * 64},
    ]
    [response] = create_with(server, recipients_body(recipients))
    assert response.status_code == 201, response.text
    out = response.json()
    assert out["queued"] == 4
    assert [(r["line"], r["index"], r["reason"]) for r in out["rejections"]] == [
        (3, 2, "reference is 65 characters long; at most 64"),
        (4, 3, "reference contains a control character"),
    ]
    cid = out["campaign_id"]
    assert stored(sync_redis, cid).references is True
    # Only the messages with one have a field (indexes after the rejected are renumbered).
    assert sync_redis.hgetall(keys.refs(cid, 0)) == {
        b"0": b"order-1017",
        b"3": ("é" * 64).encode(),
    }


def test_a_campaign_without_references_stores_none(server, sync_redis) -> None:
    recipients = [{"destination": "37041654321", "reference": ""}, "37041654322"]
    [response] = create_with(server, recipients_body(recipients))
    assert response.status_code == 201, response.text
    cid = response.json()["campaign_id"]
    assert stored(sync_redis, cid).references is False
    assert sync_redis.keys(keys.refs(cid, 0)) == []


def test_destinations_and_recipients_are_one_or_the_other(server, sync_redis) -> None:
    both = {**campaign_body(), "recipients": NUMBERS}
    neither = campaign_body()
    del neither["destinations"]
    given_both, given_neither = create_with(server, both, neither)
    both = problem(given_both, "invalid_field")
    assert both["detail"] == "give destinations or recipients, not both"
    neither = problem(given_neither, "missing_field")
    assert neither["detail"] == "destinations: required (or recipients)"
    assert neither["errors"] == [{"field": "destinations", "reason": "required (or recipients)"}]
    assert stored_campaigns(sync_redis) == []


# --- trunk, schedule, quiet hours


def test_an_unknown_trunk_is_422_and_the_default_one_is_accepted(server, sync_redis) -> None:
    unknown, named, null = create_with(
        server,
        campaign_body(trunk="backup"),
        campaign_body(trunk="default"),
        campaign_body(trunk=None, send_at=None, window=None, timezone=None, name=None),
    )
    assert problem(unknown, "unknown_trunk")["detail"] == "no trunk 'backup' (configured: default)"
    assert named.status_code == 201 and named.json()["trunk"] == "default"
    assert null.status_code == 201, null.text
    assert len(stored_campaigns(sync_redis)) == 2


def test_a_scheduled_campaign_waits_parked_until_its_time(server, sync_redis) -> None:
    celery = FakeCelery()
    send_at = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2)
    body = campaign_body(destinations=["37041654321"], send_at=send_at.isoformat())
    [response] = create_with(server, body, celery=celery)

    assert response.status_code == 201, response.text
    out = response.json()
    assert out["send_at"] == pytest.approx(send_at.timestamp())
    # One message scheduled for later is not urgent: the urgent lane means now.
    assert out["priority"] is False
    cid = out["campaign_id"]
    assert stored(sync_redis, cid).state == "scheduled"
    assert sync_redis.zscore(keys.parked(), keys.batch_member(cid, 0)) == pytest.approx(
        send_at.timestamp()
    )
    assert celery.sent == []


@pytest.mark.parametrize(
    ("send_at", "names"),
    [
        ("2030-01-01T09:00", "needs a time zone"),
        ("2001-01-01T09:00Z", "is in the past"),
        ("2999-01-01T09:00Z", "more than a year ahead"),
        ("tomorrow", "is not an ISO 8601 time"),
        (1767225600, "send_at: must be a string"),
    ],
)
def test_a_bad_send_time_is_422(server, sync_redis, send_at: Any, names: str) -> None:
    [response] = create_with(server, campaign_body(send_at=send_at))
    out = problem(response, "invalid_field")
    assert out["detail"].startswith("send_at: ") and names in out["detail"]
    assert [e["field"] for e in out["errors"]] == ["send_at"]
    assert stored_campaigns(sync_redis) == []


def test_quiet_hours_are_stored_and_reported(server, sync_redis) -> None:
    body = campaign_body(window="09:00-20:00", timezone="Europe/Vilnius")
    [response] = create_with(server, body)
    assert response.status_code == 201, response.text
    window = response.json()["window"]
    assert window["window"] == "09:00-20:00"
    assert set(window) == {"window", "inside_now", "waiting", "next_open"}
    c = stored(sync_redis, response.json()["campaign_id"])
    assert c.window == "09:00-20:00" and c.timezone == "Europe/Vilnius"


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        ({"window": "9-5"}, "window '9-5'"),
        ({"window": "09:00-20:00", "timezone": "Mars/Olympus"}, "Mars/Olympus"),
        ({"window": 9}, "window: must be a string"),
        ({"timezone": ["UTC"]}, "timezone: must be a string"),
        ({"trunk": 1}, "trunk: must be a string"),
    ],
)
def test_bad_quiet_hours_or_trunk_are_422(server, sync_redis, fields, names: str) -> None:
    [response] = create_with(server, campaign_body(**fields))
    assert names in problem(response, "invalid_field")["detail"]
    assert stored_campaigns(sync_redis) == []


def test_opted_out_numbers_are_counted_as_suppressed(server, sync_redis) -> None:
    async def steps(client: httpx.AsyncClient, ledger: Ledger) -> httpx.Response:
        await ledger.optout_change("add", ["37041654322"])
        return await post_json(client, campaign_body())

    response = run(server, steps)
    assert response.status_code == 201, response.text
    assert response.json()["queued"] == 2 and response.json()["suppressed"] == 1


# --- dry run


def test_a_dry_run_answers_the_preview_and_writes_nothing(server, sync_redis) -> None:
    celery = FakeCelery()
    body = campaign_body(destinations=[*NUMBERS, "12"], dry_run=True)
    [response] = create_with(server, body, key="dry-1", celery=celery)

    assert response.status_code == 200, response.text
    out = response.json()
    assert out["dry_run"] is True
    assert out["queued"] == 3 and out["rejected"] == 1 and out["suppressed"] == 0
    assert out["total_segments"] == 3 and out["max_segments"] == 1
    assert out["segments_per_message"] == {"1": 3}
    assert out["encoding"] == "GSM-7" and out["trunk"] == "default"
    assert out["longest_message"] == "Sale today" and out["duration_s"] >= 0
    assert out["rejections"] == [
        {
            "line": 4,
            "index": 3,
            "value": "12",
            "reason": "too short for +1 (US, AG, AI, \u2026): 1 digit after +1, need 10",
        }
    ]
    assert out["campaign_id"] is None and "location" not in response.headers
    assert sync_redis.keys("*") == [] and celery.sent == []


@pytest.mark.parametrize(
    ("fields", "code", "names"),
    [
        ({"dry_run": "yes"}, "invalid_field", "dry_run: must be true or false"),
        ({"dry_run": True, "text": ""}, "empty_text", "the message text is empty"),
    ],
)
def test_a_bad_dry_run_is_refused(server, sync_redis, fields, code: str, names: str) -> None:
    [response] = create_with(server, campaign_body(**fields))
    assert names in problem(response, code)["detail"]
    assert sync_redis.keys("*") == []


# --- Idempotency-Key


def test_a_repeat_with_the_same_key_is_200_with_the_same_campaign(server, sync_redis) -> None:
    celery = FakeCelery()
    first, again = create_with(
        server, campaign_body(), campaign_body(), key="order-42", celery=celery
    )
    assert first.status_code == 201, first.text
    assert again.status_code == 200, again.text
    cid = first.json()["campaign_id"]
    assert again.json()["campaign_id"] == cid and again.json()["repeated"] is True
    assert first.json()["repeated"] is False
    assert again.headers["location"] == f"/v1/campaigns/{cid}"
    assert stored_campaigns(sync_redis) == [cid.encode()]
    assert celery.sent == [(SEND_BATCH, [cid, 0], CAMPAIGN_QUEUE)]


def test_a_key_reused_for_another_campaign_is_422(server, sync_redis) -> None:
    first, other = create_with(
        server, campaign_body(), campaign_body(text="Another text"), key="order-42"
    )
    assert first.status_code == 201
    out = problem(other, "idempotency_conflict")
    assert "idempotency key was used within 24 hours" in out["detail"]
    assert len(stored_campaigns(sync_redis)) == 1


def test_different_keys_make_different_campaigns(server, sync_redis) -> None:
    [first] = create_with(server, campaign_body(), key="a")
    [second] = create_with(server, campaign_body(), key="b")
    assert first.json()["campaign_id"] != second.json()["campaign_id"]
    assert len(stored_campaigns(sync_redis)) == 2


@pytest.mark.parametrize("key", ["", " ", "x" * 201, "caf\xe9", "tab\there", "del\x7f"])
def test_a_malformed_key_is_400(server, sync_redis, key: str) -> None:
    async def steps(client: httpx.AsyncClient, _: Ledger) -> httpx.Response:
        headers = [(b"idempotency-key", key.encode("latin-1"))]
        return await client.post(
            "/v1/campaigns",
            json=campaign_body(),
            headers=[*headers, *((k.encode(), v.encode()) for k, v in AUTH.items())],
        )

    response = run(server, steps)
    assert "Idempotency-Key" in problem(response, "invalid_idempotency_key")["detail"]
    assert stored_campaigns(sync_redis) == []


def test_a_key_of_200_printable_characters_is_accepted(server) -> None:
    [response] = create_with(server, campaign_body(), key="k-" + "x" * 197 + "~")
    assert response.status_code == 201, response.text


# --- stored, not all queued


@pytest.mark.parametrize(
    "error",
    [
        ConnectionError("broker unreachable"),
        OperationalError("broker unreachable"),
        # What kombu's batched publish raises when Redis refuses some of a batch (full).
        BatchPublishError("OOM command not allowed when used memory > 'maxmemory'"),
    ],
)
def test_publishing_failed_after_storing_is_202_and_the_same_key_completes_it(
    server, sync_redis, error: Exception
) -> None:
    [stored] = create_with(server, campaign_body(), key="k1", celery=FakeCelery(True, error))
    assert stored.status_code == 202, stored.text
    cid = stored.json()["campaign_id"]
    assert stored.json()["queued"] == 3 and stored.json()["rejected"] == 0
    assert "the workers queue the rest" in stored.json()["note"]

    celery = FakeCelery()
    [again] = create_with(server, campaign_body(), key="k1", celery=celery)
    assert again.status_code == 201, again.text
    assert again.json()["campaign_id"] == cid
    assert celery.sent == [(SEND_BATCH, [cid, 0], CAMPAIGN_QUEUE)]
    assert stored_campaigns(sync_redis) == [cid.encode()]
    assert sync_redis.zcard(keys.enqueuing()) == 0


def test_redis_down_is_503_and_the_same_key_then_creates_once(server, sync_redis) -> None:
    server.connected = False
    [down] = create_with(server, campaign_body(), key="k2")
    problem(down, "redis_unavailable")
    assert down.headers["retry-after"]
    server.connected = True
    first, again = create_with(server, campaign_body(), campaign_body(), key="k2")
    assert (first.status_code, again.status_code) == (201, 200)
    assert len(stored_campaigns(sync_redis)) == 1


# --- resend


def set_records(
    sync_redis: fakeredis.FakeRedis, cid: str, rows: list[tuple[str, State, int | None]]
) -> None:
    """Replace batch 0 of a campaign by these (destination, state, code_id) records."""
    data = b"".join(records.pack(state, d, code_id=code) for d, state, code in rows)
    sync_redis.set(keys.batch(cid, 0), data)
    sync_redis.delete(keys.counts(cid))
    for _, state, _ in rows:
        sync_redis.hincrby(keys.counts(cid), str(state), 1)


def parent_campaign(sync_redis: fakeredis.FakeRedis) -> str:
    rows = [
        ("37041000001", State.SENT, 1),
        ("37041000002", State.FAILED, 2),
        ("37041000003", State.FAILED, 8),
        ("37041000004", State.UNKNOWN, None),
        ("37041000005", State.EXPIRED, None),
    ]
    cid = write_campaign(sync_redis, [d for d, _, _ in rows], name="promo")
    set_records(sync_redis, cid, rows)
    return cid


def resend(
    server: fakeredis.FakeServer,
    cid: str,
    *bodies: Any,
    key: str | None = None,
    celery: FakeCelery | None = None,
) -> list[httpx.Response]:
    headers = {"content-type": "application/json", **AUTH}
    if key is not None:
        headers["idempotency-key"] = key

    async def steps(client: httpx.AsyncClient, _: Ledger) -> list[httpx.Response]:
        return [
            await client.post(f"/v1/campaigns/{cid}/resend", json=body, headers=headers)
            for body in bodies
        ]

    return list(run(server, steps, celery=celery))


def destinations(sync_redis: fakeredis.FakeRedis, cid: str) -> list[str]:
    return [r.destination for r in records.iter_batch(0, sync_redis.get(keys.batch(cid, 0)))]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"state": "failed,unknown"}, ["37041000002", "37041000003", "37041000004"]),
        ({"state": ["failed", "unknown"]}, ["37041000002", "37041000003", "37041000004"]),
        ({"state": "failed", "code": "2"}, ["37041000002"]),
        ({"state": ["failed"], "code": [8, 2]}, ["37041000002", "37041000003"]),
        ({"state": "expired", "code": None}, ["37041000005"]),
    ],
)
def test_resend_creates_a_campaign_of_the_chosen_recipients(
    server, sync_redis, body: dict[str, Any], expected: list[str]
) -> None:
    parent = parent_campaign(sync_redis)
    celery = FakeCelery()
    [response] = resend(server, parent, body, celery=celery)

    assert response.status_code == 201, response.text
    out = response.json()
    cid = out["campaign_id"]
    assert out["parent"] == parent and cid != parent
    assert response.headers["location"] == f"/v1/campaigns/{cid}"
    assert out["queued"] == len(expected) and out["repeated"] is False
    assert destinations(sync_redis, cid) == expected
    c = stored(sync_redis, cid)
    assert c.parent == parent and c.name == "promo (resend)"
    # A resend of one message is a campaign of one: the priority queue.
    queue = PRIORITY_QUEUE if len(expected) == 1 else CAMPAIGN_QUEUE
    assert celery.sent == [(SEND_BATCH, [cid, 0], queue)]


def test_a_repeated_resend_with_the_same_key_is_200(server, sync_redis) -> None:
    parent = parent_campaign(sync_redis)
    first, again = resend(server, parent, {"state": "failed"}, {"state": "failed"}, key="r1")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["campaign_id"] == first.json()["campaign_id"]
    assert again.json()["repeated"] is True and again.json()["parent"] == parent
    assert len(stored_campaigns(sync_redis)) == 2


@pytest.mark.parametrize(
    ("body", "code", "names"),
    [
        ({}, "missing_field", "state: required"),
        ({"state": ""}, "missing_field", "state: required"),
        ({"state": " , "}, "missing_field", "state: required"),
        ({"state": "failed", "states": "x"}, "unknown_field", "unknown field 'states'"),
        ({"state": "lost"}, "invalid_field", "state: unknown state 'lost'"),
        ({"state": "sent"}, "invalid_field", "state: state 'sent' cannot be chosen here"),
        ({"state": "failed", "code": "two"}, "invalid_field", "code: whole numbers separated"),
        ({"state": "failed", "code": [2, "8"]}, "invalid_field", "code[1]: must be a whole"),
        ({"state": "failed", "code": [True]}, "invalid_field", "code[0]: must be"),
        ({"state": "failed", "code": 2}, "invalid_field", "code: must be a comma-separated"),
        (
            {"state": 5},
            "invalid_field",
            "state: must be a comma-separated string or an array of state names",
        ),
        ({"state": "queued"}, "invalid_field", "cannot be chosen here"),
        ({"state": "cancelled"}, "nothing_to_resend", "no message in the chosen states"),
    ],
)
def test_a_bad_resend_is_422(
    server, sync_redis, body: dict[str, Any], code: str, names: str
) -> None:
    parent = parent_campaign(sync_redis)
    [response] = resend(server, parent, body)
    assert names in problem(response, code)["detail"]
    assert stored_campaigns(sync_redis) == [parent.encode()]


@pytest.mark.parametrize("cid", [ABSENT, "nope"])
def test_resend_of_an_unknown_campaign_is_404(server, cid: str) -> None:
    [response] = resend(server, cid, {"state": "failed"})
    assert problem(response, "campaign_not_found")["detail"] == f"no campaign {cid!r}"


def test_resend_needs_a_json_body(server, sync_redis) -> None:
    parent = parent_campaign(sync_redis)

    async def steps(client: httpx.AsyncClient, _: Ledger) -> httpx.Response:
        return await client.post(f"/v1/campaigns/{parent}/resend", headers=AUTH)

    problem(run(server, steps), "unsupported_media_type")


def test_resend_keeps_a_templated_parents_values(server, sync_redis) -> None:
    recipients = [
        {"destination": "37041654321", "fields": {"name": "Ana"}},
        {"destination": "37041654322", "fields": {"name": "Bo"}},
    ]
    [created] = create_with(server, recipients_body(recipients, text="Hi {name}", source=SOURCE))
    parent = created.json()["campaign_id"]
    set_records(
        sync_redis,
        parent,
        [("37041654321", State.SENT, None), ("37041654322", State.FAILED, 2)],
    )
    [response] = resend(server, parent, {"state": "failed"})
    assert response.status_code == 201, response.text
    cid = response.json()["campaign_id"]
    assert destinations(sync_redis, cid) == ["37041654322"]
    assert sync_redis.hgetall(keys.fields(cid, 0)) == {b"0": b"Bo"}
    assert time.time() < stored(sync_redis, cid).expires_at
