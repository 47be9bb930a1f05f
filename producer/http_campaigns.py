"""Creating campaigns through the HTTP API: POST /v1/campaigns (or its dry run) and
POST /v1/campaigns/{id}/resend, through the same producer as `smsq send` and `smsq resend`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from ledger.enqueuing import ENQUEUE_STALL_S
from ledger.errors import InputError
from producer import report as reports
from producer import resend as resends
from producer.enqueue import EnqueueResult, NotStored, Producer, StoredNotQueued, parse_send_at
from producer.http_common import (
    Api,
    ApiError,
    campaign_id,
    coded,
    idempotency_key,
    log,
    message_filter,
    not_found,
    read_body,
    refused,
    reply,
)
from producer.http_models import CampaignCreate, CampaignCreated, CampaignPreview, Resend
from producer.numbers import NumbersResult, normalize_recipients
from producer.plan import rejection_items
from producer.problems import code_of


@dataclass(frozen=True, slots=True)
class CampaignRequest:
    source: str
    text: str
    # Numbers, or {"destination": ..., "fields": {...}, "reference": ...} objects.
    recipients: list[str | dict[str, Any]]
    options: dict[str, Any] = field(default_factory=dict)
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class Outcome:
    """The answer to an enqueue: 201 created, 200 a repeat or a dry run, 202 stored but not
    all queued."""

    status: int
    body: dict[str, Any]
    preview: bool = False


def parse_campaign(req: CampaignCreate) -> CampaignRequest:
    """A POST /v1/campaigns body whose shape its model checked, as the producer takes it;
    the producer checks what the values mean."""
    given = [name for name in ("destinations", "recipients") if getattr(req, name) is not None]
    if not given:
        raise ApiError(
            "missing_field",
            "destinations: required (or recipients)",
            errors=[{"field": "destinations", "reason": "required (or recipients)"}],
        )
    if len(given) > 1:
        raise ApiError(
            "invalid_field",
            "give destinations or recipients, not both",
            errors=[{"field": "recipients", "reason": "not with destinations"}],
        )
    recipients: list[Any] = req.destinations if req.destinations is not None else req.recipients
    options = {
        "name": req.name,
        "ttl_s": req.ttl_s,
        "priority": req.priority,
        "trunk": req.trunk,
        # Its model has checked it.
        "send_at": parse_send_at(req.send_at),
        "window": req.window,
        "timezone": req.timezone,
    }
    return CampaignRequest(req.source, req.text, recipients, options, req.dry_run)


def created_body(result: EnqueueResult) -> dict[str, Any]:
    """The enqueue result, as the Python API and `smsq send --json` give it."""
    return result.as_dict()


def preview_body(summary: dict[str, Any]) -> dict[str, Any]:
    """A dry run's answer: the plan's summary, the enqueue result's names without an id."""
    return summary


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
            return Outcome(200, preview_body(plan.summary()), preview=True)
        result = producer.write(plan, idempotency_key=key)
    except InputError as exc:
        code = code_of(exc)
        # The rejected recipients are what is at fault when none is left.
        rejected = numbers.rejections if code == "no_valid_recipient" else []
        raise ApiError(
            code, str(exc), errors=rejection_items(rejected), errors_count=len(rejected)
        ) from None
    except NotStored as exc:
        # Nothing is left (or, said in the message, Redis could not tell): a retry is safe.
        log.error("api_enqueue_not_stored", error=str(exc), maybe_stored=exc.maybe_stored)
        maybe = exc.campaign_id if exc.maybe_stored else None
        raise ApiError("redis_unavailable", str(exc), campaign_id=maybe) from None
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


def _answer(outcome: Outcome, **extra: Any) -> Response:
    body = {**outcome.body, **extra}
    if outcome.preview:
        return reply(CampaignPreview, body)
    location = {"Location": f"/v1/campaigns/{body['campaign_id']}"}
    return reply(CampaignCreated, body, outcome.status, headers=location)


async def post_campaign(request: Request, api: Api) -> Response:
    key = idempotency_key(request)
    req = parse_campaign(await read_body(request, CampaignCreate))
    outcome = await run_in_threadpool(create_campaign, api.producer, req, key)
    if outcome.status in (200, 201) and not req.dry_run:
        log.info(
            "campaign_created",
            campaign_id=outcome.body["campaign_id"],
            queued=outcome.body["queued"],
            rejected=outcome.body["rejected"],
            duplicates=outcome.body["duplicates"],
            suppressed=outcome.body["suppressed"],
            repeated=outcome.body["repeated"],
        )
    return _answer(outcome)


def _text(value: str | list[Any] | None) -> str | None:
    """`state` or `code` as comma-separated text: given as text or as an array."""
    if value is None or isinstance(value, str):
        return value
    return ",".join(str(v) for v in value)


def resend_filter(req: Resend) -> reports.Filter:
    states = _text(req.state)
    if not states or not states.strip(" ,"):
        raise refused("state", 'required, e.g. "failed,unknown"', states, code="missing_field")
    return message_filter(states, _text(req.code), reports.RESENDABLE, parameter=False)


async def resend_campaign(request: Request, api: Api) -> Response:
    cid = campaign_id(request)
    key = idempotency_key(request)
    keep = resend_filter(await read_body(request, Resend))
    parent = await api.ledger.campaign(cid)
    if parent is None:
        raise not_found(cid)
    try:
        numbers = await resends.recipients(api.ledger.redis, parent, keep)
    except InputError as exc:
        raise coded(exc, "nothing_to_resend") from None
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
