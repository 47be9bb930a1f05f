"""Creating campaigns through the HTTP API: POST /v1/campaigns (or its dry run) and
POST /v1/campaigns/{id}/resend, through the same producer as `smsq send` and `smsq resend`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ledger.enqueuing import ENQUEUE_STALL_S
from ledger.errors import InputError
from producer import report as reports
from producer import resend as resends
from producer.enqueue import EnqueueResult, NotStored, Producer, StoredNotQueued, parse_send_at
from producer.http_common import (
    Api,
    ApiError,
    boolean,
    campaign_id,
    check_fields,
    idempotency_key,
    indexed,
    log,
    message_filter,
    read_json,
    required_string,
    string,
    string_list,
)
from producer.numbers import NumbersResult, normalize_recipients

# Fields of POST /v1/campaigns; any other is refused, so a misspelt one is not ignored.
REQUIRED_FIELDS = ("source", "text")
RECIPIENT_FIELDS = ("destinations", "recipients")
OPTIONAL_FIELDS = (
    "name",
    "ttl_s",
    "priority",
    "trunk",
    "send_at",
    "window",
    "timezone",
    "dry_run",
)
# Keys of a recipient given as an object.
RECIPIENT_KEYS = frozenset({"destination", "fields"})


@dataclass(frozen=True, slots=True)
class CampaignRequest:
    source: str
    text: str
    # Numbers, or {"destination": ..., "fields": {...}} objects.
    recipients: list[str | dict[str, Any]]
    options: dict[str, Any] = field(default_factory=dict)
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class Outcome:
    """The answer to an enqueue: 201 created, 200 a repeat or a dry run, 202 stored but not
    all queued."""

    status: int
    body: dict[str, Any]


def parse_campaign(doc: Mapping[str, Any]) -> CampaignRequest:
    """Check a POST /v1/campaigns body's shape; the producer checks what the values mean."""
    check_fields(doc, REQUIRED_FIELDS, (*RECIPIENT_FIELDS, *OPTIONAL_FIELDS))
    given = [name for name in RECIPIENT_FIELDS if name in doc]
    if not given:
        raise ApiError(422, "destinations: required (or recipients)")
    if len(given) > 1:
        raise ApiError(422, "give destinations or recipients, not both")
    source, text = required_string(doc, "source"), required_string(doc, "text")
    if given[0] == "destinations":
        recipients: list[Any] = string_list(doc, "destinations")
    else:
        recipients = parse_recipients(doc["recipients"])
    ttl_s = doc.get("ttl_s")
    # bool is an int in Python, and true is no number of seconds.
    if ttl_s is not None and (isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or ttl_s < 1):
        raise ApiError(422, "ttl_s: must be a positive whole number of seconds or null")
    try:
        send_at = parse_send_at(string(doc, "send_at"))
    except InputError as exc:
        raise ApiError(422, f"send_at: {exc}") from None
    options = {
        "name": string(doc, "name"),
        "ttl_s": ttl_s,
        "priority": boolean(doc, "priority"),
        "trunk": string(doc, "trunk"),
        "send_at": send_at,
        "window": string(doc, "window"),
        "timezone": string(doc, "timezone"),
    }
    return CampaignRequest(source, text, recipients, options, boolean(doc, "dry_run"))


def parse_recipients(value: Any) -> list[str | dict[str, Any]]:
    """`recipients`: numbers, or objects {"destination": "...", "fields": {"name": "Ana"}}
    whose field values are text, numbers or null; the first malformed item is named."""
    if not isinstance(value, list):
        raise ApiError(422, "recipients: must be an array")
    for index, item in enumerate(value):
        where = f"recipients[{index}]"
        if isinstance(item, str):
            continue
        if not isinstance(item, dict):
            raise ApiError(422, f"{where}: must be a string or an object {{destination, fields}}")
        unknown = sorted(set(item) - RECIPIENT_KEYS)
        if unknown:
            raise ApiError(
                422, f"{where}: unknown key {unknown[0]!r} (the keys are destination, fields)"
            )
        if not isinstance(item.get("destination"), str):
            raise ApiError(422, f"{where}.destination: required, a string")
        fields = item.get("fields")
        if fields is None:
            continue
        if not isinstance(fields, dict):
            raise ApiError(422, f"{where}.fields: must be an object")
        for name, v in fields.items():
            if v is not None and (isinstance(v, bool) or not isinstance(v, str | int | float)):
                raise ApiError(422, f"{where}.fields.{name}: must be a string, a number or null")
    return value


def created_body(result: EnqueueResult) -> dict[str, Any]:
    """EnqueueResult.as_dict() with its rejections by 0-based index as `rejected`."""
    out = result.as_dict()
    # The same rejections are `rejected`, by index in the request's array rather than line.
    del out["rejections"]
    out.update(
        rejected=indexed(result.rejections),
        rejected_count=result.rejected,
        priority=bool(result.summary.get("priority")),
        send_at=result.summary.get("send_at"),
    )
    return out


def preview_body(summary: dict[str, Any]) -> dict[str, Any]:
    """Plan.summary() for a dry run, its rejections by 0-based index like every answer's."""
    rejections = [
        {"index": r["line"] - 1, "value": r["value"], "reason": r["reason"]}
        for r in summary["rejections"]
    ]
    return {"dry_run": True, **summary, "rejections": rejections}


def enqueue(
    shared: Producer,
    source: str,
    text: str,
    numbers: NumbersResult,
    options: dict[str, Any],
    key: str | None,
    dry_run: bool = False,
) -> Outcome:
    """Plan and write a campaign as `smsq send` does; blocking, run in a thread."""
    # The producer notes the campaign it writes in `campaign_id`; a shallow copy per request
    # (same connections) keeps concurrent requests from reading each other's.
    producer = copy.copy(shared)
    producer.campaign_id = None
    try:
        plan = producer.plan(source, text, numbers, **options)
        if dry_run:
            return Outcome(200, preview_body(plan.summary()))
        result = producer.write(plan, idempotency_key=key)
    except InputError as exc:
        rejected = numbers.rejections
        raise ApiError(
            422, str(exc), rejected=indexed(rejected), rejected_count=len(rejected)
        ) from None
    except NotStored as exc:
        # Nothing is left (or, said in the message, Redis could not tell): a retry is safe.
        log.error("api_enqueue_not_stored", error=str(exc), maybe_stored=exc.maybe_stored)
        extra = {"campaign_id": exc.campaign_id} if exc.maybe_stored else {}
        raise ApiError(503, str(exc), **extra) from None
    except StoredNotQueued as exc:
        log.error("api_enqueue_incomplete", campaign_id=exc.campaign_id, error=str(exc))
        return Outcome(
            202,
            {
                **created_body(exc.result),
                "note": "the campaign is stored but not all its batches are queued yet; the "
                f"workers queue the rest within {ENQUEUE_STALL_S:.0f} s",
            },
        )
    return Outcome(200 if result.repeated else 201, created_body(result))


def create_campaign(producer: Producer, req: CampaignRequest, key: str | None) -> Outcome:
    """Normalise the recipients and enqueue them (a million take a second: not on the
    event loop); blocking, run in a thread."""
    numbers = normalize_recipients(req.recipients)
    return enqueue(producer, req.source, req.text, numbers, req.options, key, req.dry_run)


def _answer(outcome: Outcome, **extra: Any) -> JSONResponse:
    body = {**outcome.body, **extra}
    headers = None
    if "campaign_id" in body:
        headers = {"Location": f"/v1/campaigns/{body['campaign_id']}"}
    return JSONResponse(body, status_code=outcome.status, headers=headers)


async def post_campaign(request: Request, api: Api) -> Response:
    key = idempotency_key(request)
    req = parse_campaign(await read_json(request))
    outcome = await run_in_threadpool(create_campaign, api.producer, req, key)
    if outcome.status in (200, 201) and not req.dry_run:
        log.info(
            "campaign_created",
            campaign_id=outcome.body["campaign_id"],
            queued=outcome.body["queued"],
            rejected=outcome.body["rejected_count"],
            duplicates=outcome.body["duplicates"],
            suppressed=outcome.body["suppressed"],
            repeated=outcome.body["repeated"],
        )
    return _answer(outcome)


def _filter_text(doc: Mapping[str, Any], name: str, kind: type) -> str | None:
    """`state` or `code` as comma-separated text: given as text or as an array."""
    value = doc.get(name)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(
        isinstance(v, kind) and not isinstance(v, bool) for v in value
    ):
        return ",".join(str(v) for v in value)
    what = "state names" if kind is str else "whole numbers"
    raise ApiError(422, f"{name}: must be a comma-separated string or an array of {what}")


def resend_filter(doc: Mapping[str, Any]) -> reports.Filter:
    check_fields(doc, ("state",), ("code",))
    states = _filter_text(doc, "state", str)
    codes = _filter_text(doc, "code", int)
    if not states or not states.strip(" ,"):
        raise ApiError(422, 'state: required, e.g. "failed,unknown"')
    return message_filter(states, codes, reports.RESENDABLE)


async def resend_campaign(request: Request, api: Api) -> Response:
    cid = campaign_id(request)
    key = idempotency_key(request)
    keep = resend_filter(await read_json(request))
    parent = await api.ledger.campaign(cid)
    if parent is None:
        raise ApiError(404, f"no campaign {cid!r}")
    try:
        numbers = await resends.recipients(api.ledger.redis, parent, keep)
    except InputError as exc:
        raise ApiError(422, str(exc)) from None
    outcome = await run_in_threadpool(
        enqueue, api.producer, parent.source, parent.text, numbers, resends.options(parent), key
    )
    log.info(
        "campaign_resent",
        campaign_id=outcome.body["campaign_id"],
        parent=cid,
        queued=outcome.body["queued"],
        repeated=outcome.body.get("repeated", False),
    )
    return _answer(outcome, parent=cid)
