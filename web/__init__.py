"""What smsq's two HTTP services share (the callback ingester, `python -m callbacks`, and the
HTTP API, `python -m producer.http`): a body reader with a size limit, the start-up, and the
server options that cut slow clients off (web/protocol.py). web/transport.py is the HTTP
client transport of the workers and the webhook delivery service."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request

from ledger import connection
from ledger.errors import ConfigError
from ledger.logs import configure_logging
from ledger.redis_health import unsafe
from ledger.settings import Settings, load_settings
from web.protocol import with_read_timeout

log = structlog.stdlib.get_logger("smsq.web")


def warn_if_redis_unsafe(settings: Settings) -> None:
    """Log, once, what makes this Redis unsafe for the ledger (smsq status shows it too)."""
    import redis

    client = connection.sync_client(settings, socket_connect_timeout=2)
    try:
        for warning in unsafe(
            client.info("persistence"), client.info("memory"), client.info("stats")
        ):
            log.warning("redis_unsafe", detail=warning)
    except redis.RedisError:
        pass  # unreachable now: the service's own errors will say so
    finally:
        client.close()


class BodyTooLarge(Exception):
    """The request body is over the limit; it was not read whole."""


class ClientGone(Exception):
    """The client went away (or was cut off as too slow) before its body was whole: there is
    nobody to answer."""


async def read_limited(request: Request, limit: int) -> bytes:
    """Read the body, refusing it as soon as it passes ``limit`` bytes: at once when its
    Content-Length says so, else while streaming (chunked bodies have none). A client gone
    mid-body raises ClientGone, logged as one INFO line."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            chunks.append(chunk)
    except ClientDisconnect:
        log.info("client_gone", path=request.url.path, bytes_read=size)
        raise ClientGone from None
    return b"".join(chunks)


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options for every smsq HTTP server: requests that must arrive within
    SMSQ_HTTP_READ_TIMEOUT_S, at most SMSQ_HTTP_MAX_CONNECTIONS at once (then 503), and no
    access log (it would print each query string, the callback token in it, unstructured;
    each service logs what matters, without secrets)."""
    return {
        "http": with_read_timeout(settings.http_read_timeout_s),
        "limit_concurrency": settings.http_max_connections,
        "access_log": False,
        "log_config": None,
        "server_header": False,
    }


def serve(
    prog: str,
    description: str,
    make_app: Callable[[Settings], Starlette],
    *,
    required: tuple[str, ...],
    default_port: int,
    argv: list[str] | None = None,
    check: Callable[[Settings], None] | None = None,
) -> None:
    """Parse --host/--port, load the settings (a bad or missing one, or a token shorter than 16
    characters: one line, exit 2; check may look further) and serve make_app(settings) with
    uvicorn (server_options). Warns once, at start, when Redis would lose the ledger (AOF off,
    eviction)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=default_port, help="port to listen on")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        settings.require(*required)
        settings.trunks()
        settings.check_tokens()
        if check is not None:
            check(settings)
    except ConfigError as exc:
        print(f"smsq: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    configure_logging(settings.log_level, settings.secrets())
    warn_if_redis_unsafe(settings)
    uvicorn.run(make_app(settings), host=args.host, port=args.port, **server_options(settings))
