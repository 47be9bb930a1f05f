"""The HTTP API, for applications not written in Python: create a campaign, read its status,
pause, resume or cancel it. `python -m producer.http --host H --port P`; see docs/api.md.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import structlog
from kombu.exceptions import OperationalError
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ledger import control, keys
from ledger.errors import InputError, SmsqError
from ledger.settings import Settings
from ledger.states import CampaignState
from ledger.store import Ledger
from ledger.web import BodyTooLarge, read_limited, serve
from producer.enqueue import MAX_REPORTED_REJECTIONS, EnqueueResult, Producer
from producer.numbers import NumbersResult, normalize_many

log = structlog.stdlib.get_logger("smsq.api")

# Room for about a million numbers written as JSON strings; a bigger campaign is better
# split than held in memory whole by one request.
MAX_BODY_BYTES = 16 * 1024 * 1024
JSON_MEDIA_TYPE = "application/json"
# Campaign ids are 16 hex digits; anything that could not be one is answered 404 unread.
CAMPAIGN_ID = keys.CAMPAIGN_ID
# Fields of POST /v1/campaigns; any other is refused, so a misspelt one is not ignored.
REQUIRED_FIELDS = ("source", "text", "destinations")
OPTIONAL_FIELDS = ("name", "ttl_s", "priority")
# Clients that see 503 may try again after this many seconds.
RETRY_AFTER_S = 5


class ApiError(Exception):
    """An answer other than success: its status code, message and any extra JSON fields."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


@dataclass(frozen=True, slots=True)
class CampaignRequest:
    source: str
    text: str
    destinations: list[str]
    name: str | None
    ttl_s: int | None
    priority: bool = False


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def parse_campaign(body: bytes) -> CampaignRequest:
    """Check a POST /v1/campaigns body's shape; the producer checks what the values mean."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ApiError(422, "the body must be a JSON object")
    unknown = sorted(set(doc) - {*REQUIRED_FIELDS, *OPTIONAL_FIELDS})
    if unknown:
        expected = ", ".join((*REQUIRED_FIELDS, *OPTIONAL_FIELDS))
        raise ApiError(422, f"unknown field {unknown[0]!r} (the fields are {expected})")
    for name in REQUIRED_FIELDS:
        if name not in doc:
            raise ApiError(422, f"{name}: required")
    for name in ("source", "text"):
        if not isinstance(doc[name], str):
            raise ApiError(422, f"{name}: must be a string")
    destinations = doc["destinations"]
    if not isinstance(destinations, list):
        raise ApiError(422, "destinations: must be an array of strings")
    for index, value in enumerate(destinations):
        if not isinstance(value, str):
            raise ApiError(422, f"destinations[{index}]: must be a string")
    name = doc.get("name")
    if name is not None and not isinstance(name, str):
        raise ApiError(422, "name: must be a string or null")
    ttl_s = doc.get("ttl_s")
    # bool is an int in Python, and true is no number of seconds.
    if ttl_s is not None and (isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or ttl_s < 1):
        raise ApiError(422, "ttl_s: must be a positive whole number of seconds or null")
    priority = doc.get("priority", False)
    if not isinstance(priority, bool):
        raise ApiError(422, "priority: must be true or false")
    return CampaignRequest(doc["source"], doc["text"], destinations, name, ttl_s, priority)


def _rejections(numbers: NumbersResult) -> list[dict[str, Any]]:
    # Rejection.line is the 1-based position; JSON clients index arrays from 0.
    return [
        {"index": r.line - 1, "value": r.value, "reason": r.reason}
        for r in numbers.rejections[:MAX_REPORTED_REJECTIONS]
    ]


def create_campaign(producer: Producer, req: CampaignRequest) -> dict[str, Any]:
    """Validate and enqueue through the same path as `smsq send`; blocking, run in a thread."""
    numbers = normalize_many(req.destinations)
    try:
        result: EnqueueResult = producer.enqueue(
            req.source, req.text, numbers, name=req.name, ttl_s=req.ttl_s, priority=req.priority
        )
    except InputError as exc:
        raise ApiError(
            422, str(exc), rejected=_rejections(numbers), rejected_count=len(numbers.rejections)
        ) from None
    return {
        "campaign_id": result.campaign_id,
        "queued": result.queued,
        "rejected": _rejections(numbers),
        "rejected_count": result.rejected,
        "duplicates": result.duplicates,
        "segments": result.segments,
        "encoding": result.encoding,
        # A campaign of one message takes the trunk's urgent lane whatever was asked.
        "priority": req.priority or result.queued == 1,
    }


@dataclass
class Api:
    """What the handlers share: the ledger (async Redis) and the producer (sync, threads)."""

    ledger: Ledger
    producer: Producer


Handler = Callable[[Request, Api], Awaitable[Response]]


def _campaign_id(request: Request) -> str:
    cid = str(request.path_params["cid"])
    if not CAMPAIGN_ID.fullmatch(cid):
        raise ApiError(404, f"no campaign {cid!r}")
    return cid


async def _not_found_or_cancelled(api: Api, cid: str) -> ApiError:
    if await api.ledger.campaign(cid) is None:
        return ApiError(404, f"no campaign {cid!r}")
    return ApiError(409, f"campaign {cid} is cancelled")


async def post_campaign(request: Request, api: Api) -> Response:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != JSON_MEDIA_TYPE:
        raise ApiError(415, f"the Content-Type must be {JSON_MEDIA_TYPE}")
    try:
        body = await read_limited(request, MAX_BODY_BYTES)
    except BodyTooLarge:
        raise ApiError(413, f"the body is over {MAX_BODY_BYTES} bytes") from None
    req = parse_campaign(body)
    out = await run_in_threadpool(create_campaign, api.producer, req)
    log.info(
        "campaign_created",
        campaign_id=out["campaign_id"],
        queued=out["queued"],
        rejected=out["rejected_count"],
        duplicates=out["duplicates"],
    )
    location = f"/v1/campaigns/{out['campaign_id']}"
    return JSONResponse(out, status_code=201, headers={"Location": location})


async def get_campaign(request: Request, api: Api) -> Response:
    cid = _campaign_id(request)
    status = await api.ledger.status(cid)
    if status is None:
        raise ApiError(404, f"no campaign {cid!r}")
    return JSONResponse(status.as_dict())


async def pause_campaign(request: Request, api: Api) -> Response:
    cid = _campaign_id(request)
    if not await api.ledger.set_state(cid, CampaignState.PAUSED):
        raise await _not_found_or_cancelled(api, cid)
    log.info("campaign_paused", campaign_id=cid)
    return JSONResponse({"campaign_id": cid, "state": str(CampaignState.PAUSED)})


async def resume_campaign(request: Request, api: Api) -> Response:
    cid = _campaign_id(request)
    why = f"resumed through the HTTP API (campaign {cid})"
    # The same steps as `smsq resume`. Publishing the batches blocks the event loop for a
    # moment (kombu is synchronous); resuming is rare and its batches are few.
    resumed = await control.resume(api.producer.celery, api.ledger, cid, why)
    if resumed is None:
        raise await _not_found_or_cancelled(api, cid)
    log.info(
        "campaign_resumed",
        campaign_id=cid,
        batches=resumed.batches_queued,
        halt_lifted=resumed.halt_lifted,
    )
    return JSONResponse(
        {
            "campaign_id": cid,
            "state": str(CampaignState.ACTIVE),
            "batches_queued": resumed.batches_queued,
            "halt_lifted": resumed.halt_lifted,
        }
    )


async def cancel_campaign(request: Request, api: Api) -> Response:
    cid = _campaign_id(request)
    moved = await control.cancel(api.ledger, cid)
    if moved is None:
        raise ApiError(404, f"no campaign {cid!r}")
    log.info("campaign_cancelled", campaign_id=cid, cancelled=moved)
    return JSONResponse(
        {"campaign_id": cid, "state": str(CampaignState.CANCELLED), "cancelled": moved}
    )


def _protected(handler: Handler, token: bytes) -> Callable[[Request], Awaitable[Response]]:
    """Check the bearer token, then run the handler, mapping every failure to one answer."""

    async def endpoint(request: Request) -> Response:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # compare_digest takes the same time wherever the first difference is.
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token):
            log.warning("api_unauthorized", path=request.url.path)
            response = _error(401, "missing or wrong bearer token")
            response.headers["WWW-Authenticate"] = 'Bearer realm="smsq"'
            return response
        try:
            return await handler(request, request.app.state.api)
        except ApiError as exc:
            return _error(exc.status, exc.message, **exc.extra)
        except (RedisError, OperationalError) as exc:
            log.error("api_redis_unavailable", path=request.url.path, error=str(exc))
            return _error(503, "Redis is unavailable; try again later")
        except SmsqError as exc:
            # The producer stored the campaign but could not queue all of it (its text
            # says how to finish); nothing else raises SmsqError here.
            log.error("api_enqueue_incomplete", error=str(exc))
            return _error(503, str(exc))

    return endpoint


async def _http_error(_: Request, exc: Exception) -> Response:
    """Unknown paths and wrong methods answer JSON too, like every other error."""
    assert isinstance(exc, HTTPException)
    return JSONResponse(
        {"error": exc.detail}, status_code=exc.status_code, headers=exc.headers or None
    )


async def _health(_: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


def create_app(
    settings: Settings, redis: Redis | None = None, producer: Producer | None = None
) -> Starlette:
    """The API app; ``redis`` and ``producer`` are made from the settings unless given."""
    settings.require("api_token")
    token = settings.api_token.get_secret_value().encode()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        client = redis or Redis.from_url(settings.redis_url, health_check_interval=30)
        own_producer = producer or Producer(settings)
        app.state.api = Api(Ledger(client, settings), own_producer)
        yield
        if producer is None:
            own_producer.close()
        if redis is None:
            await client.aclose()

    routes = [
        Route("/v1/campaigns", _protected(post_campaign, token), methods=["POST"]),
        Route("/v1/campaigns/{cid}", _protected(get_campaign, token), methods=["GET"]),
        Route("/v1/campaigns/{cid}/pause", _protected(pause_campaign, token), methods=["POST"]),
        Route("/v1/campaigns/{cid}/resume", _protected(resume_campaign, token), methods=["POST"]),
        Route("/v1/campaigns/{cid}/cancel", _protected(cancel_campaign, token), methods=["POST"]),
        Route("/healthz", _health, methods=["GET"]),
    ]
    return Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={HTTPException: _http_error}
    )


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
