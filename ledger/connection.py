"""Every Redis client smsq makes is made here: from SMSQ_REDIS_URL, or, with
SMSQ_REDIS_SENTINELS and SMSQ_REDIS_MASTER_NAME, through Redis Sentinel, so that every part
(workers, supervisors, ingester, HTTP API, CLI, consumers, Celery's broker and Flower) finds
the primary the same way and follows a failover without a restart. docs/architecture.md D21.

Through Sentinel, SMSQ_REDIS_URL gives the password, user, database and TLS (rediss://);
its host and port are not used. A client asks the sentinels for the primary when it connects,
and a connection that finds a replica (READONLY) or loses the primary reconnects through them.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from redis.asyncio import BlockingConnectionPool
from redis.connection import parse_url

from ledger.settings import Settings

# How long a client waits for one sentinel's answer before asking the next.
SENTINEL_TIMEOUT_S = 1.0


class _SentinelBlockingPool(redis.asyncio.sentinel.SentinelConnectionPool, BlockingConnectionPool):
    """A Sentinel pool that waits for a free connection, as BlockingConnectionPool does, rather
    than raising when all are in use (the worker bounds its connections this way)."""


class _SentinelClient(redis.Redis):
    """A client of the primary that, closed, also closes its connections to the sentinels."""

    sentinel: redis.sentinel.Sentinel | None = None

    def close(self) -> None:
        super().close()
        if self.sentinel is not None:
            self.sentinel.close()


class _AsyncSentinelClient(redis.asyncio.Redis):
    """An asyncio client of the primary that, closed, also closes its sentinel connections."""

    sentinel: redis.asyncio.sentinel.Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinel is not None:
            await self.sentinel.aclose()


def _url_options(settings: Settings) -> dict[str, Any]:
    """What SMSQ_REDIS_URL says besides where: user, password, database, TLS and options."""
    options = parse_url(settings.redis_url)
    for name in ("host", "port", "path", "connection_class"):
        options.pop(name, None)
    if urlsplit(settings.redis_url).scheme == "rediss":
        options["ssl"] = True
    return options


def _sentinel_options(settings: Settings) -> dict[str, Any]:
    options: dict[str, Any] = {
        "socket_connect_timeout": SENTINEL_TIMEOUT_S,
        "socket_timeout": SENTINEL_TIMEOUT_S,
    }
    password = settings.redis_sentinel_password.get_secret_value()
    if password:
        options["password"] = password
    return options


def sync_client(settings: Settings, **options: Any) -> redis.Redis:
    """A client of the primary (options as redis.Redis takes them)."""
    if not settings.redis_sentinels:
        return redis.Redis.from_url(settings.redis_url, **options)
    sentinel = redis.sentinel.Sentinel(
        settings.sentinels(), sentinel_kwargs=_sentinel_options(settings), **_url_options(settings)
    )
    client = sentinel.master_for(settings.redis_master_name, _SentinelClient, **options)
    client.sentinel = sentinel
    return client


def async_client(settings: Settings, **options: Any) -> redis.asyncio.Redis:
    """An asyncio client of the primary (options as redis.asyncio.Redis takes them)."""
    if not settings.redis_sentinels:
        return redis.asyncio.Redis.from_url(settings.redis_url, **options)
    sentinel = redis.asyncio.sentinel.Sentinel(
        settings.sentinels(), sentinel_kwargs=_sentinel_options(settings), **_url_options(settings)
    )
    client = sentinel.master_for(settings.redis_master_name, _AsyncSentinelClient, **options)
    client.sentinel = sentinel
    return client


def async_bounded_client(
    settings: Settings, max_connections: int, timeout_s: float, **options: Any
) -> redis.asyncio.Redis:
    """An asyncio client with at most max_connections, waiting up to timeout_s for one."""
    if not settings.redis_sentinels:
        pool = BlockingConnectionPool.from_url(
            settings.redis_url, max_connections=max_connections, timeout=timeout_s, **options
        )
        return redis.asyncio.Redis(connection_pool=pool)
    sentinel = redis.asyncio.sentinel.Sentinel(
        settings.sentinels(), sentinel_kwargs=_sentinel_options(settings), **_url_options(settings)
    )
    client = sentinel.master_for(
        settings.redis_master_name,
        _AsyncSentinelClient,
        connection_pool_class=_SentinelBlockingPool,
        max_connections=max_connections,
        timeout=timeout_s,
        **options,
    )
    client.sentinel = sentinel
    return client


def broker(settings: Settings) -> tuple[str, dict[str, Any]]:
    """Celery's broker URL and the transport options it needs beyond smsq's own: kombu's
    Sentinel transport (sentinel://...;sentinel://... and master_name) with Sentinel."""
    if not settings.redis_sentinels:
        return settings.redis_url, {}
    parts = urlsplit(settings.redis_url)
    auth = ""
    if parts.password:
        user, password = unquote(parts.username or ""), unquote(parts.password)
        auth = f"{quote(user, safe='')}:{quote(password, safe='')}@"
    db = _url_options(settings).get("db", 0)
    hosts = [f"[{h}]" if ":" in h else h for h, _ in settings.sentinels()]
    url = ";".join(
        f"sentinel://{auth}{host}:{port}/{db}"
        for host, (_, port) in zip(hosts, settings.sentinels(), strict=True)
    )
    options: dict[str, Any] = {
        "master_name": settings.redis_master_name,
        "sentinel_kwargs": _sentinel_options(settings),
    }
    return url, options


def broker_ssl(settings: Settings) -> dict[str, Any] | None:
    """Celery's broker_use_ssl for a rediss:// URL through Sentinel: kombu's Sentinel
    transport opens TLS connections to the primary only when given this (a redis:// broker URL
    carries its TLS options itself). The ssl_* options of SMSQ_REDIS_URL, certificates
    required unless it says otherwise. None without TLS or without Sentinel."""
    if not settings.redis_sentinels or urlsplit(settings.redis_url).scheme != "rediss":
        return None
    found = {k: v for k, v in _url_options(settings).items() if k.startswith("ssl_")}
    return {"ssl_cert_reqs": "required", **found}


def describe(settings: Settings) -> str:
    """Where Redis is, for logs and errors, without its password."""
    if settings.redis_sentinels:
        return f"primary {settings.redis_master_name!r} of sentinels {settings.redis_sentinels}"
    parts = urlsplit(settings.redis_url)
    where = parts.path if parts.scheme == "unix" else parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{where}"


def replicas_to_wait_for(settings: Settings, listed: int | None) -> int:
    """How many replicas a durable write waits for: SMSQ_REDIS_MIN_REPLICAS, or as many as the
    primary listed at the last write if fewer (None: not known yet); it counts as replicated
    when as many acknowledged it as that, or as the primary lists just after (ROLE, in the
    same round trip), whichever is fewer. A primary left without a replica (its replica was
    promoted, the old primary is not back; a replica killed) has nobody a failover could hand
    the ledger to, so waiting would only stop sending; Redis's own min-replicas-to-write
    decides whether it should stop instead (docs/reliability.md). A replica cut off but not
    closed stays listed (for repl-timeout, 60 s) and so is waited for: nothing is acted on
    that it lacks."""
    wanted = settings.redis_min_replicas
    return wanted if listed is None else min(wanted, listed)


def replicas_listed(role: Any) -> int:
    """How many replicas a primary's ROLE reply lists."""
    return len(role[2]) if len(role) > 2 and isinstance(role[2], list) else 0
