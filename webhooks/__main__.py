"""`python -m webhooks`: one webhook delivery process; run as many as the load needs (each
serves its metrics on SMSQ_WEBHOOKS_METRICS_PORT). SIGTERM or SIGINT: stop reading, finish
the requests in flight (at most SMSQ_WEBHOOK_TIMEOUT_S), record them, exit 0; a loop that
failed on a bug stops it the same way with exit 1, for its supervisor to restart it."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable

import httpx
import structlog
import uvloop

from ledger import connection
from ledger.errors import ConfigError
from ledger.logs import configure_logging
from ledger.settings import Settings, load_settings
from ledger.webhooks import Subscription
from web.transport import LeanTransport, proxy_for
from webhooks import metrics
from webhooks.service import Service

log = structlog.stdlib.get_logger("smsq.webhooks")


def transports(settings: Settings) -> Callable[[Subscription], httpx.AsyncBaseTransport]:
    """Each subscription's transport: LeanTransport (http:// and https://), whose pool costs
    O(1) a request where httpx's scans its connections (docs/performance.md, webhooks);
    httpx's own where the environment names a proxy for the URL, which LeanTransport does not
    speak. The attempt's timeout bounds both phases: the service cuts the whole attempt."""

    def transport_for(sub: Subscription) -> httpx.AsyncBaseTransport:
        url = httpx.URL(sub.url)
        proxy = proxy_for(url)
        if proxy:
            return httpx.AsyncHTTPTransport(
                proxy=proxy, limits=httpx.Limits(max_connections=settings.webhook_connections)
            )
        return LeanTransport(
            str(url.copy_with(path="/", query=None, fragment=None)),
            max_connections=settings.webhook_connections,
            connect_timeout_s=settings.webhook_timeout_s,
            read_timeout_s=settings.webhook_timeout_s,
        )

    return transport_for


# Each subscription's transport, given the settings; None: httpx's own pool (the Service's
# default, the benchmark's yardstick: ops/bench/httpx_webhooks.py).
Transports = Callable[[Settings], Callable[[Subscription], httpx.AsyncBaseTransport] | None]


async def _serve(settings: Settings, consumer: str | None, make: Transports) -> bool:
    """Run one delivery process until a signal; False if it stopped on a failure."""
    redis = connection.async_client(settings)
    service = Service(settings, redis, consumer, transport_for=make(settings))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.stop)
    try:
        await service.run()
    finally:
        await redis.aclose()
    return not service.failed


def main(argv: list[str] | None = None, make_transports: Transports = transports) -> None:
    parser = argparse.ArgumentParser(prog="python -m webhooks", description=__doc__)
    parser.add_argument(
        "--consumer",
        default=None,
        help="its name in the events stream's consumer group (default: host-pid)",
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"smsq: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    configure_logging(settings.log_level, settings.secrets())
    try:
        metrics.serve(settings.webhooks_metrics_port)
    except OSError as exc:
        log.error("metrics_port_unavailable", port=settings.webhooks_metrics_port, error=str(exc))
        sys.exit(1)
    if not uvloop.run(_serve(settings, args.consumer, make_transports)):
        sys.exit(1)


if __name__ == "__main__":
    main()
