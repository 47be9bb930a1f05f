"""The callback ingester: an ASGI app that turns DIDWW status callbacks into ledger updates
and events. POST /callbacks?token=<the trunk's callback token> (SMSQ_CALLBACK_TOKEN for the
trunk `default`, SMSQ_TRUNK_<NAME>_CALLBACK_TOKEN for the others). GET /metrics: on this
port, or with SMSQ_CALLBACKS_METRICS_PORT on that one only; SMSQ_METRICS_TOKEN protects it.
"""

from __future__ import annotations

import asyncio
import hmac
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from functools import partial

import structlog
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from callbacks.document import InvalidCallback, parse
from callbacks.metrics import CALLBACKS, Cached, exposition, observe_callback_lag, redis_figures
from ledger import connection
from ledger.settings import Settings
from ledger.store import Ledger
from web import BodyTooLarge, ClientGone, read_limited, server_options

log = structlog.stdlib.get_logger("smsq.callbacks")

# A DIDWW callback is well under 1 KiB; anything near this is not one.
MAX_BODY_BYTES = 64 * 1024
MEDIA_TYPES = ("application/vnd.api+json", "application/json")


def _error(status: int, title: str, detail: str) -> JSONResponse:
    body = {"errors": [{"title": title, "detail": detail, "status": str(status)}]}
    return JSONResponse(body, status_code=status, media_type="application/vnd.api+json")


class _MetricsServer(uvicorn.Server):
    """A second uvicorn server in the ingester's process, for /metrics alone: the main server
    owns the signals and stops this one from its lifespan."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@asynccontextmanager
async def _serving(
    app: Starlette, listener: socket.socket, settings: Settings
) -> AsyncIterator[None]:
    """Serve app on the listening socket until the block ends."""
    config = uvicorn.Config(app, lifespan="off", **server_options(settings))
    server = _MetricsServer(config)
    task = asyncio.create_task(server.serve(sockets=[listener]))
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if task.done():
        task.result()  # it stopped before serving: its error stops the ingester's start too
    host, port = listener.getsockname()[:2]
    log.info("metrics_served", host=host, port=port)
    try:
        yield
    finally:
        server.should_exit = True
        await task


def create_app(
    settings: Settings, redis: Redis | None = None, metrics_listener: socket.socket | None = None
) -> Starlette:
    """The ingester. With SMSQ_CALLBACKS_METRICS_PORT set, its port answers 404 for /metrics,
    which a second server in this process serves on metrics_listener (python -m callbacks
    binds it) while the app runs."""
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
        client = redis or connection.async_client(settings, health_check_interval=30)
        app.state.ledger = Ledger(client, settings)
        app.state.figures = Cached(
            partial(redis_figures, app.state.ledger), settings.metrics_cache_s
        )
        async with AsyncExitStack() as stack:
            if metrics_listener is not None:
                await stack.enter_async_context(_serving(metrics_app, metrics_listener, settings))
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
        except ClientGone:
            # Nobody is there to read an answer (read_limited logged it); DIDWW retries.
            return _error(400, "Bad Request", "the body did not arrive whole")
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
            outcome = await request.app.state.ledger.apply_callback(update, trunk)
        except RedisError as exc:
            # DIDWW retries a failed callback; 503 says try again, nothing is lost.
            log.error("callback_store_failed", error=str(exc), didww_id=update.didww_id)
            CALLBACKS.labels(status, "unavailable").inc()
            return _error(503, "Service Unavailable", "could not store the callback")
        CALLBACKS.labels(status, outcome).inc()
        if outcome == "forbidden":
            # A token settles only its own trunk's messages: this id is another trunk's.
            log.warning("callback_forbidden", didww_id=update.didww_id, trunk=trunk)
            return _error(403, "Forbidden", "this message was not sent through this token's trunk")
        observe_callback_lag(trunk, update.event.get("time_end"))
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

    metrics_token = settings.metrics_token.get_secret_value().encode()

    async def metrics(request: Request) -> Response:
        if metrics_token:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode(), metrics_token
            ):
                log.warning("metrics_unauthorized")
                return Response(
                    "unauthorized\n",
                    status_code=401,
                    media_type="text/plain",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        try:
            figures = await app.state.figures.get()
        except RedisError as exc:
            log.error("metrics_unavailable", error=str(exc))
            return Response("redis unavailable\n", status_code=503, media_type="text/plain")
        return Response(exposition(figures), media_type=CONTENT_TYPE_LATEST)

    metrics_route = Route("/metrics", metrics, methods=["GET"])
    separate = settings.callbacks_metrics_port != 0
    metrics_app = Starlette(routes=[metrics_route])
    app = Starlette(
        routes=[
            Route("/callbacks", receive, methods=["POST"]),
            Route("/healthz", health, methods=["GET"]),
            *([] if separate else [metrics_route]),
        ],
        lifespan=lifespan,
    )
    return app
