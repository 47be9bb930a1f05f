"""The Prometheus series smsq's alerts and dashboard may read, found in the code that makes
them (worker/metrics.py, webhooks/metrics.py, the callbacks service's page, Flower), and the
ones a PromQL expression reads; for tests/unit/test_alerts.py and test_grafana_dashboard.py."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import fakeredis.aioredis
from prometheus_client.parser import text_string_to_metric_families
from smsq_testing import make_settings

from callbacks.metrics import exposition, redis_figures
from ledger.store import Ledger

ROOT = Path(__file__).resolve().parents[2]
# A metric made in Python source: Counter("name", ...), Histogram('name', ...), and Flower's
# PrometheusCounter('name', ...).
MADE = re.compile(r"(Counter|Gauge|Histogram)\(\s*['\"](\w+)['\"]")
# What a PromQL expression reads: smsq's and Flower's series, and Prometheus's own `up`.
READ = re.compile(r"\b((?:smsq|flower)_[a-z0-9_]+|up(?=\s*\{))")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def _series(kind: str, name: str) -> set[str]:
    base = name.removesuffix("_total") if kind == "counter" else name
    return {base + suffix for suffix in SUFFIXES[kind]}


def _made_in(path: Path) -> set[str]:
    return {n for kind, name in MADE.findall(path.read_text()) for n in _series(kind.lower(), name)}


def _callbacks_page() -> set[str]:
    """Every family the callbacks service's page has, with every optional figure present."""

    async def figures() -> bytes:
        redis = fakeredis.aioredis.FakeRedis()
        try:
            found = await redis_figures(Ledger(redis, make_settings()))
        finally:
            await redis.aclose()
        found["redis_memory"] = (1, 2)
        found["redis_hygiene"] = {
            "aof_enabled": 1,
            "aof_last_write_ok": 1,
            "aof_rewrite_ok": 1,
            "evicted_keys": 0,
        }
        found["redis_replication"] = {"connected": 1, "replicas": {"10.0.0.2:6379": (0.0, 0)}}
        found["overdue"] = [("default", "0123456789abcdef", 1.0)]
        return exposition(found)

    text = asyncio.run(figures()).decode()
    return {
        n
        for family in text_string_to_metric_families(text)
        for n in _series(family.type, family.name)
    }


def known() -> set[str]:
    import flower.events

    flower_source = Path(flower.events.__file__)
    return (
        _made_in(ROOT / "worker" / "metrics.py")
        | _made_in(ROOT / "webhooks" / "metrics.py")
        | _callbacks_page()
        | _made_in(flower_source)
        | {"up"}
    )


def read_by(expression: str) -> set[str]:
    """The series a PromQL expression reads (quoted label values left out)."""
    return set(READ.findall(re.sub(r'"[^"]*"', '""', expression)))
