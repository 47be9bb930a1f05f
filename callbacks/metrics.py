"""GET /metrics on the callbacks service: the figures that live in Redis (messages by state,
queue depth, the oldest queued message's age, callbacks, the events stream), read at scrape
time, plus this process's own callback counters. Worker figures (API latency, retries,
rate-limiter waits) come from each worker's own endpoint (worker/metrics.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.asyncio import Redis

from ledger import keys
from ledger.dispatch import CAMPAIGN_QUEUE, PRIORITY_QUEUE
from ledger.states import ALL_STATES, State
from ledger.store import Ledger

# Messages by state are summed over this many most recent campaigns, so a scrape stays a
# few milliseconds however many campaigns Redis holds.
RECENT_CAMPAIGNS = 1000

# This process's own counters (one per ingester process; Prometheus sums them).
REGISTRY = CollectorRegistry()
CALLBACKS = Counter(
    "smsq_callbacks",
    "Callbacks received, by DIDWW status ('invalid' when refused) and by what they did",
    ["status", "outcome"],
    registry=REGISTRY,
)


async def redis_figures(ledger: Ledger) -> dict[str, Any]:
    """Everything the scrape reports from Redis, in few round trips."""
    redis: Redis = ledger.redis
    cids = [c.decode() for c in await redis.zrevrange(keys.campaigns(), 0, RECENT_CAMPAIGNS - 1)]
    pipe = redis.pipeline(transaction=False)
    for cid in cids:
        pipe.hgetall(keys.counts(cid))
        pipe.hget(keys.campaign(cid), "created_at")
    pipe.llen(CAMPAIGN_QUEUE)
    pipe.llen(PRIORITY_QUEUE)
    pipe.xlen(ledger.stream)
    replies = await pipe.execute()
    by_state = dict.fromkeys(map(str, ALL_STATES), 0)
    oldest = None
    for i in range(len(cids)):
        counts = {k.decode(): int(v) for k, v in replies[2 * i].items()}
        for state, n in counts.items():
            by_state[state] = by_state.get(state, 0) + n
        created = replies[2 * i + 1]
        if counts.get(State.QUEUED, 0) > 0 and created is not None:
            oldest = min(oldest or float(created), float(created))
    trunks = {name: await ledger.trunk_status(name) for name in ledger.settings.trunks()}
    first = next(iter(trunks.values()))
    campaign_tasks, priority_tasks, stream_length = replies[2 * len(cids) :]
    return {
        "by_state": by_state,
        "queue_depth": {CAMPAIGN_QUEUE: campaign_tasks, PRIORITY_QUEUE: priority_tasks},
        "parked": first.parked_batches,
        "oldest_queued_age_s": time.time() - oldest if oldest is not None else 0.0,
        "orphans_waiting": first.orphans_waiting,
        "stats": first.stats,
        "stream_length": stream_length,
        "halted": {name: t.halted is not None for name, t in trunks.items()},
        "backing_off": {name: t.backoff is not None for name, t in trunks.items()},
    }


class _Figures(Collector):
    def __init__(self, figures: dict[str, Any]) -> None:
        self.f = figures

    def collect(self) -> Iterator[Metric]:
        f = self.f
        messages = GaugeMetricFamily(
            "smsq_messages", "Messages by state (recent campaigns)", labels=["state"]
        )
        for state, n in sorted(f["by_state"].items()):
            messages.add_metric([state], n)
        yield messages
        depth = GaugeMetricFamily(
            "smsq_queue_depth", "Batch tasks waiting on each Celery queue", labels=["queue"]
        )
        for queue, n in f["queue_depth"].items():
            depth.add_metric([queue], n)
        yield depth
        yield GaugeMetricFamily("smsq_parked_batches", "Batches parked", value=f["parked"])
        yield GaugeMetricFamily(
            "smsq_oldest_queued_age_seconds",
            "Age of the oldest campaign that still has queued messages",
            value=f["oldest_queued_age_s"],
        )
        yield GaugeMetricFamily(
            "smsq_orphan_callbacks_waiting",
            "Callbacks for DIDWW ids not (yet) known, kept to be joined",
            value=f["orphans_waiting"],
        )
        totals = GaugeMetricFamily(
            "smsq_callback_results",
            "Callbacks by result since Redis was created (applied, matched, duplicate, "
            "orphans kept and joined)",
            labels=["result"],
        )
        for name, n in sorted(f["stats"].items()):
            totals.add_metric([name], n)
        yield totals
        yield GaugeMetricFamily(
            "smsq_events_stream_length", "Entries on the events stream", value=f["stream_length"]
        )
        halted = GaugeMetricFamily(
            "smsq_halted",
            "1 while DIDWW refuses the trunk's credentials (or its URL is wrong)",
            labels=["trunk"],
        )
        for trunk, value in f["halted"].items():
            halted.add_metric([trunk], int(value))
        yield halted
        backing_off = GaugeMetricFamily(
            "smsq_backing_off", "1 while DIDWW is unavailable for the trunk", labels=["trunk"]
        )
        for trunk, value in f["backing_off"].items():
            backing_off.add_metric([trunk], int(value))
        yield backing_off


async def exposition(ledger: Ledger) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Figures(await redis_figures(ledger)))
    return generate_latest(registry) + generate_latest(REGISTRY)
