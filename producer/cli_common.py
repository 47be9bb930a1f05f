"""What every `smsq` command shares: failing with one line and an exit code, loading the
settings, and running async work against the ledger."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn, TypeVar

import click
import redis

from ledger import connection
from ledger.errors import ConfigError
from ledger.settings import Settings, load_settings
from ledger.store import Ledger

T = TypeVar("T")

EXIT_INPUT = 2
EXIT_UNAVAILABLE = 1
# Ctrl-C, as shells report it (128 + SIGINT).
EXIT_INTERRUPTED = 130


def fail(message: str, code: int = EXIT_INPUT) -> NoReturn:
    click.echo(f"smsq: {message}", err=True)
    sys.exit(code)


def settings() -> Settings:
    """The settings, or exit 2 with the one line naming a bad one."""
    try:
        return load_settings()
    except ConfigError as exc:
        fail(f"configuration error: {exc}")


def run(settings: Settings, work: Callable[[Ledger], Coroutine[Any, Any, T]]) -> T:
    """Run work(ledger) on a fresh event loop; Redis out of reach: exit 1 with one line."""

    async def main() -> T:
        client = connection.async_client(settings)
        try:
            return await work(Ledger(client, settings))
        finally:
            await client.aclose()

    try:
        return asyncio.run(main())
    except redis.RedisError as exc:
        fail(f"cannot reach Redis at SMSQ_REDIS_URL: {exc}", EXIT_UNAVAILABLE)
