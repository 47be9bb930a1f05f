"""The webhook benchmark's yardstick: `python -m webhooks` as it runs, but posting through
httpx's own connection pool instead of web.transport.LeanTransport (the Service's default
when it is given no transports). Stops on SIGTERM like the real one.

Run: python -m ops.bench.httpx_webhooks (settings from the environment, as python -m webhooks)
"""

from __future__ import annotations

import asyncio
import signal

import uvloop

from ledger import connection
from ledger.logs import configure_logging
from ledger.settings import Settings, load_settings
from webhooks import metrics
from webhooks.service import Service


async def _serve(settings: Settings) -> None:
    redis = connection.async_client(settings)
    service = Service(settings, redis)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.stop)
    try:
        await service.run()
    finally:
        await redis.aclose()


def main() -> None:
    settings = load_settings()
    configure_logging(settings.log_level, settings.secrets())
    metrics.serve(settings.webhooks_metrics_port)
    uvloop.run(_serve(settings))


if __name__ == "__main__":
    main()
