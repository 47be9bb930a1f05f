"""Webhook subscriptions through the HTTP API (as `smsq webhook`): create (the secret shown
this once), list (never a secret), delete, rotate the secret, and the deliveries given up.
docs/webhooks.md. producer/http.py adds ENDPOINTS to its route table and PATH_PARAMETERS to
its own.
"""

from __future__ import annotations

import re
from weakref import WeakKeyDictionary

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from ledger.store import Ledger
from ledger.webhooks import EVENT_TYPES, WebhookStore
from producer.http_common import Api, ApiError, read_body, read_query, reply
from producer.http_openapi import Answer, Endpoint, json_answer

# A subscription id as the ledger makes them; any other is answered 404 unread.
WEBHOOK_ID = re.compile(r"wh_[0-9a-f]{16}")
# The most failures one answer lists.
MAX_FAILURES = 1000
PATH_PARAMETERS = {
    "wid": {
        "description": "a webhook subscription id (`wh_` and 16 hex digits)",
        "schema": {"type": "string", "pattern": f"^{WEBHOOK_ID.pattern}$"},
    },
}
_EVENTS = f"event types (none: every type, later ones too): {', '.join(sorted(EVENT_TYPES))}"


class WebhookCreate(BaseModel):
    """POST /v1/webhooks."""

    model_config = ConfigDict(extra="forbid", strict=True)

    url: str = Field(
        description="https://... (http and private addresses only with "
        "SMSQ_WEBHOOK_ALLOW_PRIVATE=true)"
    )
    events: list[str] = Field(default_factory=list, description=_EVENTS)
    campaign: str | None = Field(None, description="only this campaign's events")


class Webhook(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    url: str
    events: list[str] = Field(description="empty: every type")
    campaign: str | None
    created_at: str = Field(description="ISO 8601, UTC, milliseconds")


class WebhookCreated(Webhook):
    secret: str = Field(description="`whsec_...`: shown this once; verifies the signatures")


class Webhooks(BaseModel):
    model_config = ConfigDict(extra="forbid")

    webhooks: list[Webhook]


class WebhookSecret(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    secret: str = Field(description="the new `whsec_...`, shown this once")


class WebhookFailure(BaseModel):
    model_config = ConfigDict(extra="forbid")

    webhook: str
    id: str = Field(description="the delivery's webhook-id")
    url: str
    attempts: int
    error: str = Field(description="the last attempt's: 5xx, 4xx, timeout, connect_error, ...")
    first_attempt_at: str
    failed_at: str
    event: dict[str, object] | None = Field(description="the event, as it would have been posted")


class WebhookFailures(BaseModel):
    model_config = ConfigDict(extra="forbid")

    failures: list[WebhookFailure]


class FailuresQuery(BaseModel):
    """GET /v1/webhooks/failures."""

    model_config = ConfigDict(extra="forbid")

    webhook: str | None = Field(None, description="only this subscription's")
    limit: int = Field(100, ge=1, le=MAX_FAILURES, description="the most to list, newest first")


_stores: WeakKeyDictionary[Ledger, WebhookStore] = WeakKeyDictionary()


def _store(api: Api) -> WebhookStore:
    store = _stores.get(api.ledger)
    if store is None:
        store = _stores[api.ledger] = WebhookStore(api.ledger.redis, api.ledger.settings)
    return store


def _webhook_id(request: Request) -> str:
    wid = request.path_params["wid"]
    if not WEBHOOK_ID.fullmatch(wid):
        raise ApiError("webhook_not_found", f"no webhook {wid!r}")
    return str(wid)


async def create_webhook(request: Request, api: Api) -> Response:
    body = await read_body(request, WebhookCreate)
    created = await _store(api).create(body.url, body.events, body.campaign)
    shown = {**created.subscription.public(), "secret": created.secret}
    return reply(WebhookCreated, shown, 201, headers={"Location": f"/v1/webhooks/{shown['id']}"})


async def list_webhooks(request: Request, api: Api) -> Response:
    subs = await _store(api).subscriptions()
    return reply(Webhooks, {"webhooks": [s.public() for s in subs]})


async def delete_webhook(request: Request, api: Api) -> Response:
    wid = _webhook_id(request)
    if not await _store(api).delete(wid):
        raise ApiError("webhook_not_found", f"no webhook {wid!r}")
    return Response(status_code=204)


async def rotate_webhook_secret(request: Request, api: Api) -> Response:
    wid = _webhook_id(request)
    secret = await _store(api).rotate(wid)
    if secret is None:
        raise ApiError("webhook_not_found", f"no webhook {wid!r}")
    return reply(WebhookSecret, {"id": wid, "secret": secret})


async def list_webhook_failures(request: Request, api: Api) -> Response:
    query = read_query(request, FailuresQuery)
    found = await _store(api).failures(query.limit, query.webhook)
    return reply(WebhookFailures, {"failures": [f.public() for f in found]})


_INPUT = ("invalid_url", "private_url", "unknown_event_type", "invalid_campaign")
ENDPOINTS: list[Endpoint] = [
    Endpoint(
        "POST",
        "/v1/webhooks",
        create_webhook,
        "Subscribe a URL to events; the answer holds its signing secret, shown this once",
        {201: json_answer(WebhookCreated, "subscribed", Location="/v1/webhooks/{id}")},
        body=WebhookCreate,
        problems=_INPUT,
    ),
    Endpoint(
        "GET",
        "/v1/webhooks",
        list_webhooks,
        "Every webhook subscription (never a secret)",
        {200: json_answer(Webhooks, "the subscriptions, oldest first")},
    ),
    Endpoint(
        "GET",
        "/v1/webhooks/failures",
        list_webhook_failures,
        "Deliveries given up after SMSQ_WEBHOOK_RETRY_S, newest first",
        {200: json_answer(WebhookFailures, "the failures")},
        query=FailuresQuery,
    ),
    Endpoint(
        "DELETE",
        "/v1/webhooks/{wid}",
        delete_webhook,
        "Delete a subscription and the deliveries still owed to it",
        {204: Answer("deleted")},
        problems=("webhook_not_found",),
    ),
    Endpoint(
        "POST",
        "/v1/webhooks/{wid}/rotate",
        rotate_webhook_secret,
        "Give a subscription a new signing secret, shown this once (the old one signs 24 h more)",
        {200: json_answer(WebhookSecret, "the new secret")},
        problems=("webhook_not_found",),
    ),
]
