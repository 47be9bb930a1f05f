"""The HTTP API, for applications not written in Python: campaigns (create, status, report,
control, resend), the opt-out list and inbound replies. `python -m producer.http --host H
--port P`; see docs/api.md. This module wires the routes and maps every failure to one JSON
answer; the handlers live in http_campaigns (creating), http_control (an existing
campaign) and http_optouts (the opt-out list), what they share in http_common.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ledger import connection
from ledger.settings import Settings
from ledger.store import Ledger
from producer import dashboard
from producer import http_campaigns as creating
from producer import http_control as existing
from producer import http_optouts as optouts
from producer.enqueue import Producer
from producer.http_common import Api, Handler, answer, log
from web import serve

# Clients that see 503 may try again after this many seconds.
RETRY_AFTER_S = 5


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


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
        return await answer(handler, request, _error)

    return endpoint


async def _http_error(_: Request, exc: Exception) -> Response:
    """Unknown paths and wrong methods answer JSON too, like every other error."""
    assert isinstance(exc, HTTPException)
    return JSONResponse(
        {"error": exc.detail}, status_code=exc.status_code, headers=exc.headers or None
    )


async def _server_error(request: Request, exc: Exception) -> Response:
    """A bug: a JSON answer without the traceback, which goes to the log."""
    log.error("api_internal_error", path=request.url.path, error=repr(exc))
    return JSONResponse({"error": "internal error; see the API's log"}, status_code=500)


async def _health(_: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


ROUTES: list[tuple[str, str, Handler]] = [
    ("/v1/campaigns", "POST", creating.post_campaign),
    ("/v1/campaigns/{cid}", "GET", existing.get_campaign),
    ("/v1/campaigns/{cid}", "DELETE", existing.purge_campaign),
    ("/v1/campaigns/{cid}/messages", "GET", existing.campaign_messages),
    ("/v1/campaigns/{cid}/pause", "POST", existing.pause_campaign),
    ("/v1/campaigns/{cid}/resume", "POST", existing.resume_campaign),
    ("/v1/campaigns/{cid}/cancel", "POST", existing.cancel_campaign),
    ("/v1/campaigns/{cid}/reschedule", "POST", existing.reschedule_campaign),
    ("/v1/campaigns/{cid}/resend", "POST", creating.resend_campaign),
    ("/v1/optouts", "GET", optouts.get_optouts),
    ("/v1/optouts", "POST", optouts.add_optouts),
    ("/v1/optouts", "DELETE", optouts.remove_optouts),
    ("/v1/optouts/{number}", "GET", optouts.get_optout),
    ("/v1/inbound", "POST", optouts.inbound),
]


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
        Route(path, _protected(handler, token), methods=[method])
        for path, method, handler in ROUTES
    ]
    routes.append(Route("/healthz", _health, methods=["GET"]))
    # The dashboard at / (docs/dashboard.md): its own session cookie, never the bearer token.
    routes.extend(dashboard.routes(token))
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
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
