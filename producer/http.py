"""The HTTP API, for applications not written in Python: campaigns (create, status, report,
control, resend), the opt-out list and inbound replies. `python -m producer.http --host H
--port P`; see docs/api.md. This module holds the route table (what the OpenAPI document at
/v1/openapi.json and the page at /v1/docs describe, producer/http_openapi.py) and maps every
failure to a problem-details answer (producer/problems.py); the handlers live in
http_campaigns (creating), http_control (an existing campaign) and http_optouts (the opt-out
list), what they share in http_common, the bodies' models in http_models.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ledger import connection
from ledger.settings import Settings
from ledger.store import Ledger
from producer import dashboard, problems
from producer import http_campaigns as creating
from producer import http_control as existing
from producer import http_lists as lists
from producer import http_models as models
from producer import http_optouts as optouts
from producer import http_webhooks as webhooks
from producer.enqueue import Producer
from producer.http_common import (
    CAMPAIGN_ID,
    RETRY_AFTER_S,
    Api,
    Handler,
    answer_problem,
    log,
    problem_response,
)
from producer.http_openapi import DOCS_CSP, Answer, Endpoint, document, json_answer, page
from web import serve

__all__ = ["RETRY_AFTER_S", "ROUTES", "create_app", "main"]

OPENAPI_PATH = "/v1/openapi.json"
DOCS_PATH = "/v1/docs"


def _protected(handler: Handler, token: bytes) -> Callable[[Request], Awaitable[Response]]:
    """Check the bearer token, then run the handler, mapping every failure to one answer."""

    async def endpoint(request: Request) -> Response:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # compare_digest takes the same time wherever the first difference is.
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token):
            log.warning("api_unauthorized", path=request.url.path)
            return problem_response(
                problems.problem("unauthorized", "missing or wrong bearer token"),
                {"WWW-Authenticate": 'Bearer realm="smsq"'},
            )
        return await answer_problem(handler, request)

    return endpoint


async def _http_error(request: Request, exc: Exception) -> Response:
    """Unknown paths and wrong methods answer problem details too, like every other error."""
    assert isinstance(exc, HTTPException)
    code = problems.BY_STATUS.get(exc.status_code, "internal_error")
    if exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
    elif exc.status_code == 404:
        detail = f"no endpoint at {request.url.path}"
    else:
        detail = str(exc.detail)
    return problem_response(problems.problem(code, detail), exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    """A bug: a problem answer without the traceback, which goes to the log."""
    log.error("api_internal_error", path=request.url.path, error=repr(exc))
    return problem_response(problems.problem("internal_error", "internal error; see the API's log"))


# The endpoints without a token take the request only (and need no Redis).


async def healthz(_: Request) -> Response:
    return JSONResponse({"ok": True})


async def openapi_document(request: Request) -> Response:
    return Response(request.app.state.openapi, media_type="application/json")


async def docs_page(request: Request) -> Response:
    return HTMLResponse(request.app.state.docs, headers={"Content-Security-Policy": DOCS_CSP})


# Each {name} in ROUTES' paths, as the document describes it.
PATH_PARAMETERS = {
    "cid": {
        "description": "a campaign id (16 hex digits; another is answered 404 unread)",
        "schema": {"type": "string", "pattern": f"^{CAMPAIGN_ID.pattern}$"},
    },
    "number": {
        "description": "a phone number, normalised like destinations",
        "schema": {"type": "string"},
    },
    **webhooks.PATH_PARAMETERS,
    **lists.PATH_PARAMETERS,
}
_LOCATION = {"Location": "/v1/campaigns/{campaign_id}"}
_CREATED = {
    201: json_answer(models.CampaignCreated, "created", **_LOCATION),
    200: Answer(
        "a repeat with the same Idempotency-Key, or a dry run's preview",
        {"application/json": (models.CampaignCreated, models.CampaignPreview)},
    ),
    202: json_answer(
        models.CampaignCreated,
        "stored, not all queued yet: the workers queue the rest",
        **_LOCATION,
    ),
}
_NO_CAMPAIGN = ("campaign_not_found",)
_ENQUEUE = (
    "invalid_number",
    "no_valid_recipient",
    "empty_text",
    "text_too_long",
    "invalid_template",
    "unknown_trunk",
    "invalid_send_at",
    "idempotency_conflict",
    "invalid_input",
)

ROUTES: list[Endpoint] = [
    Endpoint(
        "POST",
        "/v1/campaigns",
        creating.post_campaign,
        "Create a campaign, or preview it (dry_run)",
        _CREATED,
        body=models.CampaignCreate,
        problems=_ENQUEUE,
        idempotent=True,
    ),
    Endpoint(
        "GET",
        "/v1/campaigns/{cid}",
        existing.get_campaign,
        "A campaign's status",
        {200: json_answer(models.CampaignStatus, "its status")},
        problems=_NO_CAMPAIGN,
    ),
    Endpoint(
        "DELETE",
        "/v1/campaigns/{cid}",
        existing.purge_campaign,
        "Delete a finished (or cancelled) campaign now",
        {200: json_answer(models.Purged, "purged")},
        problems=(*_NO_CAMPAIGN, "campaign_pending"),
    ),
    Endpoint(
        "GET",
        "/v1/campaigns/{cid}/messages",
        existing.campaign_messages,
        "One row per message, streamed; with `limit` or `cursor`, a page of them",
        {
            200: Answer(
                "one row per message: a JSON object a line, or CSV with a header line; with "
                "`limit` or `cursor`, a page of rows and the next page's link",
                {
                    "application/x-ndjson": models.MessageRow,
                    "text/csv": {"type": "string"},
                    "application/json": lists.MessagePage,
                },
            )
        },
        query=lists.MessagesQuery,
        problems=(*_NO_CAMPAIGN, "invalid_limit", "invalid_cursor"),
    ),
    Endpoint(
        "POST",
        "/v1/campaigns/{cid}/pause",
        existing.pause_campaign,
        "Stop posting the campaign's messages",
        {200: json_answer(models.Paused, "paused")},
        problems=(*_NO_CAMPAIGN, "campaign_finished"),
    ),
    Endpoint(
        "POST",
        "/v1/campaigns/{cid}/resume",
        existing.resume_campaign,
        "Continue a paused campaign (and lift its trunk's halt or backoff)",
        {200: json_answer(models.Resumed, "active again")},
        problems=(*_NO_CAMPAIGN, "campaign_finished"),
    ),
    Endpoint(
        "POST",
        "/v1/campaigns/{cid}/cancel",
        existing.cancel_campaign,
        "Cancel every message still queued",
        {200: json_answer(models.Cancelled, "cancelled")},
        problems=(*_NO_CAMPAIGN, "campaign_finished"),
    ),
    Endpoint(
        "POST",
        "/v1/campaigns/{cid}/reschedule",
        existing.reschedule_campaign,
        "Move a scheduled campaign that has not started",
        {200: json_answer(models.Rescheduled, "moved")},
        body=models.Reschedule,
        problems=(*_NO_CAMPAIGN, "campaign_not_scheduled", "invalid_send_at"),
    ),
    Endpoint(
        "POST",
        "/v1/campaigns/{cid}/resend",
        creating.resend_campaign,
        "A new campaign of the recipients whose messages ended in the chosen states",
        _CREATED,
        body=models.Resend,
        problems=(*_NO_CAMPAIGN, *_ENQUEUE, "nothing_to_resend"),
        idempotent=True,
    ),
    Endpoint(
        "GET",
        "/v1/optouts",
        optouts.get_optouts,
        "How many numbers are on the opt-out list, or every one (export)",
        {
            200: Answer(
                "the count; with export, every number, one a line",
                {"application/json": models.OptoutCount, "text/plain": {"type": "string"}},
            )
        },
        query=models.OptoutsQuery,
    ),
    Endpoint(
        "POST",
        "/v1/optouts",
        optouts.add_optouts,
        "Add numbers to the opt-out list",
        {200: json_answer(models.OptoutsAdded, "added")},
        body=models.Numbers,
        problems=("invalid_number",),
    ),
    Endpoint(
        "DELETE",
        "/v1/optouts",
        optouts.remove_optouts,
        "Take numbers off the opt-out list",
        {200: json_answer(models.OptoutsRemoved, "removed")},
        body=models.Numbers,
        problems=("invalid_number",),
    ),
    Endpoint(
        "GET",
        "/v1/optouts/{number}",
        optouts.get_optout,
        "Whether a number is on the opt-out list",
        {200: json_answer(models.OptoutLookup, "the answer")},
        problems=("invalid_number",),
    ),
    Endpoint(
        "POST",
        "/v1/inbound",
        optouts.inbound,
        "Act on a STOP or START reply",
        {200: json_answer(models.InboundResult, "what was done")},
        body=models.Inbound,
        problems=("invalid_number",),
    ),
    # Subscriptions to the events (docs/webhooks.md).
    *webhooks.ENDPOINTS,
    *lists.ENDPOINTS,
    # Served without a token, as most APIs serve theirs: they say what docs/api.md says, and
    # a problem's `type` links to the page.
    Endpoint(
        "GET",
        OPENAPI_PATH,
        openapi_document,
        "This document",
        {200: Answer("OpenAPI 3.1.0", {"application/json": {"type": "object"}})},
        public=True,
    ),
    Endpoint(
        "GET",
        DOCS_PATH,
        docs_page,
        "This document as a page",
        {200: Answer("HTML, loading nothing from elsewhere", {"text/html": {"type": "string"}})},
        public=True,
    ),
    Endpoint(
        "GET",
        "/healthz",
        healthz,
        "Whether the process serves requests (Redis is not checked)",
        {200: json_answer(models.Health, "serving")},
        public=True,
    ),
]
DESCRIPTION = (
    "Campaigns (create, status, report, pause, resume, cancel, reschedule, resend, purge), "
    "the opt-out list, STOP/START replies and webhooks: docs/api.md, docs/webhooks.md. "
    "Errors are RFC 9457 problem details with a stable `code`."
)


def create_app(
    settings: Settings, redis: Redis | None = None, producer: Producer | None = None
) -> Starlette:
    """The API app; ``redis`` and ``producer`` are made from the settings unless given."""
    settings.require("api_token")
    token = settings.api_token.get_secret_value().encode()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        client = redis or connection.async_client(settings, health_check_interval=30)
        own_producer = producer or Producer(settings)
        app.state.api = Api(Ledger(client, settings), own_producer)
        yield
        if producer is None:
            own_producer.close()
        if redis is None:
            await client.aclose()

    routes = [
        Route(e.path, e.handler if e.public else _protected(e.handler, token),
              methods=[e.method])
        for e in ROUTES
    ]  # fmt: skip
    # The dashboard at / (docs/dashboard.md): its own session cookie, never the bearer token.
    routes.extend(dashboard.routes(token))
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
    )
    doc = document(ROUTES, PATH_PARAMETERS, DESCRIPTION)
    app.state.openapi = json.dumps(doc).encode()
    app.state.docs = page(doc)
    return app


def main(argv: list[str] | None = None) -> None:
    serve(
        "python -m producer.http",
        "Serve smsq's HTTP API (docs/api.md).",
        create_app,
        required=("api_token",),
        default_port=8000,
        argv=argv,
    )


if __name__ == "__main__":
    main()
