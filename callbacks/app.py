"""The callback ingester: an ASGI app that turns DIDWW status callbacks into ledger updates
and events. POST /callbacks?token=<the trunk's callback token> (SMSQ_CALLBACK_TOKEN for the
trunk `default`, SMSQ_TRUNK_<NAME>_CALLBACK_TOKEN for the others).
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from prometheus_client import CONTENT_TYPE_LATEST
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from callbacks.document import InvalidCallback, parse
from callbacks.metrics import CALLBACKS, exposition
from ledger.settings import Settings
from ledger.store import Ledger
from ledger.web import BodyTooLarge, read_limited

log = structlog.stdlib.get_logger("smsq.callbacks")

# A DIDWW callback is well under 1 KiB; anything near this is not one.
MAX_BODY_BYTES = 64 * 1024
MEDIA_TYPES = ("application/vnd.api+json", "application/json")


def _error(status: int, title: str, detail: str) -> JSONResponse:
    body = {"errors": [{"title": title, "detail": detail, "status": str(status)}]}
    return JSONResponse(body, status_code=status, media_type="application/vnd.api+json")


def create_app(settings: Settings, redis: Redis | None = None) -> Starlette:
    # Each trunk's token; a callback says which trunk it is for by the one it carries.
    tokens = [
        (trunk.callback_token.get_secret_value().encode(), name)
        for name, trunk in settings.trunks().items()
        if trunk.callback_token.get_secret_value()
    ]

    def trunk_of(given: bytes) -> str | None:
        found = None
        # Every token is compared (in constant time each), so the answer's timing does not
        # tell how many were tried.
        for token, name in tokens:
            if hmac.compare_digest(given, token):
                found = name
        return found

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        client = redis or Redis.from_url(settings.redis_url, health_check_interval=30)
        app.state.ledger = Ledger(client, settings)
        yield
        if redis is None:
            await client.aclose()

    async def receive(request: Request) -> JSONResponse:
        given = request.query_params.get("token", "").encode()
        trunk = trunk_of(given)
        if trunk is None:
            log.warning("callback_unauthorized")
            CALLBACKS.labels("invalid", "unauthorized").inc()
            return _error(401, "Unauthorized", "missing or wrong token")
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type not in MEDIA_TYPES:
            CALLBACKS.labels("invalid", "unsupported_media_type").inc()
            return _error(415, "Unsupported Media Type", f"use {' or '.join(MEDIA_TYPES)}")
        try:
            update = parse(await read_limited(request, MAX_BODY_BYTES))
        except BodyTooLarge:
            log.warning("callback_too_large")
            CALLBACKS.labels("invalid", "too_large").inc()
            return _error(413, "Payload Too Large", f"body over {MAX_BODY_BYTES} bytes")
        except InvalidCallback as exc:
            log.warning("callback_invalid", detail=str(exc))
            CALLBACKS.labels("invalid", "invalid").inc()
            return _error(400, "Bad Request", str(exc))
        status = update.event["status"]
        try:
            outcome = await request.app.state.ledger.apply_callback(update)
        except RedisError as exc:
            # DIDWW retries a failed callback; 503 says try again, nothing is lost.
            log.error("callback_store_failed", error=str(exc), didww_id=update.didww_id)
            CALLBACKS.labels(status, "unavailable").inc()
            return _error(503, "Service Unavailable", "could not store the callback")
        CALLBACKS.labels(status, outcome).inc()
        log.info(
            "callback_handled",
            didww_id=update.didww_id,
            status=status,
            outcome=outcome,
            trunk=trunk,
        )
        return JSONResponse({"result": outcome})

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    async def metrics(request: Request) -> Response:
        try:
            body = await exposition(request.app.state.ledger)
        except RedisError as exc:
            log.error("metrics_unavailable", error=str(exc))
            return Response("redis unavailable\n", status_code=503, media_type="text/plain")
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/callbacks", receive, methods=["POST"]),
            Route("/healthz", health, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
