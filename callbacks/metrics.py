"""GET /metrics on the callbacks service: the figures that live in Redis (messages by state,
queues, overdue campaigns, trunks, Redis memory and replication), read at most once per
SMSQ_METRICS_CACHE_S, and this process's own callback counters and lag. Worker figures come
from worker/metrics.py.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from dispatch import CAMPAIGN_QUEUE, PRIORITY_QUEUE
from ledger import keys
from ledger.callback_store import utc_seconds
from ledger.campaigns import CampaignHead, queue_read_head
from ledger.rate import RateParams
from ledger.settings import Settings
from ledger.states import ALL_STATES, CampaignState, State
from ledger.store import Ledger

T = TypeVar("T")

# Messages by state are summed over this many most recent campaigns, so a scrape stays a
# few milliseconds however many campaigns Redis holds.
RECENT_CAMPAIGNS = 1000
# The most overdue campaigns shown by id: enough to act on, and a backlog of late campaigns
# cannot flood Prometheus with series.
OVERDUE_SHOWN = 10
# A callback's time_end this far ahead of our clock is a bad time, not clock drift: not observed.
MAX_CLOCK_SKEW_S = 60.0
# Nor one this far behind: DIDWW retries a callback for about a day, and the ledger forgets a
# DIDWW id after a week (SMSQ_DIDWW_ID_TTL_S's default).
MAX_LAG_S = 7 * 24 * 3600.0
# Messages that went (or are going) out to DIDWW, so spent the trunk's rate.
POSTED = tuple(
    s
    for s in ALL_STATES
    if s not in (State.QUEUED, State.CANCELLED, State.EXPIRED, State.SUPPRESSED)
)

# This process's own figures (one set per ingester process; Prometheus sums them).
REGISTRY = CollectorRegistry()
CALLBACKS = Counter(
    "smsq_callbacks",
    "Callbacks received, by DIDWW status ('invalid' when refused) and by what they did",
    ["status", "outcome"],
    registry=REGISTRY,
)
CALLBACK_LAG_SECONDS = Histogram(
    "smsq_callback_lag_seconds",
    "From DIDWW's time_end of a message to its stored callback, by trunk",
    ["trunk"],
    buckets=(1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 86400),
    registry=REGISTRY,
)


def observe_callback_lag(trunk: str, time_end: Any, now: float | None = None) -> None:
    """Observe how long after DIDWW's time_end a stored callback came; a missing or unreadable
    time, or one too far from our clock, is not observed."""
    ended = utc_seconds(time_end)
    if ended is None:
        return
    lag_s = (time.time() if now is None else now) - ended
    if not -MAX_CLOCK_SKEW_S <= lag_s <= MAX_LAG_S:
        return
    CALLBACK_LAG_SECONDS.labels(trunk).observe(max(0.0, lag_s))


class Cached(Generic[T]):
    """An async read's result, kept for max_age_s from when the read began. Concurrent callers
    share one read; a failed read is not kept, so the next caller reads again."""

    def __init__(
        self,
        read: Callable[[], Awaitable[T]],
        max_age_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._max_age_s = max_age_s
        self._clock = clock
        self._value: T | None = None
        self._read_at = float("-inf")
        self._reading: asyncio.Task[T] | None = None

    async def get(self) -> T:
        if self._value is not None and self._clock() - self._read_at < self._max_age_s:
            return self._value
        if self._reading is None:
            self._reading = asyncio.create_task(self._refresh())
            # Retrieved here too, so a failure nobody awaited any more is not logged as lost.
            self._reading.add_done_callback(lambda t: t.cancelled() or t.exception())
        # Shielded: a scrape that goes away does not cancel the read the others wait for.
        return await asyncio.shield(self._reading)

    async def _refresh(self) -> T:
        started = self._clock()
        try:
            value = await self._read()
        finally:
            self._reading = None
        self._value, self._read_at = value, started
        return value


@dataclass(frozen=True, slots=True)
class _Campaign:
    """What the scrape needs of one campaign."""

    head: CampaignHead
    counts: dict[str, int]

    @property
    def cid(self) -> str:
        return self.head.id

    @property
    def start(self) -> float:
        """When it was due to begin: its send_at, or its creation."""
        return self.head.start

    def sending(self, now: float) -> bool:
        """Posting its queued messages now (not paused, cancelled, not yet due, nor held to
        quiet hours, whose pace its expected finish cannot know)."""
        state, window = self.head.state, self.head.window
        if state == CampaignState.SCHEDULED:
            return self.start <= now and not window
        return state == CampaignState.ACTIVE and not window


def _overdue(
    campaigns: list[_Campaign], paced_per_s: dict[str, float], by_segment: bool, now: float
) -> list[tuple[str, str, float]]:
    """(trunk, campaign, seconds past its expected finish) for each campaign still sending with
    messages queued after the time its trunk, at its paced rate, would have posted them.

    A trunk's campaigns share its rate and their batches are handed out in order, so each
    campaign's expected finish follows the ones begun before it on the same trunk:
    finish = max(start, previous finish) + its messages / paced rate, counting only the
    messages that spend the rate (posted or still to post). Priority campaigns go ahead of
    the others and form their own line.
    """
    finish: dict[tuple[str, bool], float] = {}
    overdue = []
    for c in sorted(campaigns, key=lambda c: (c.start, c.head.created_at)):
        trunk = c.head.trunk
        per_s = paced_per_s.get(trunk)
        if per_s is None or not 0 < c.start <= now:
            continue  # a trunk no longer configured, an unreadable hash, or not begun
        sending = c.sending(now)
        queued = c.counts.get(State.QUEUED, 0)
        messages = sum(c.counts.get(s, 0) for s in POSTED) + (queued if sending else 0)
        units = messages * (max(1, c.head.segments) if by_segment else 1)
        line = (trunk, c.head.priority)
        finish[line] = max(c.start, finish.get(line, 0.0)) + units / per_s
        if sending and queued > 0 and now > finish[line]:
            overdue.append((trunk, c.cid, now - finish[line]))
    return overdue


async def _redis_memory(redis: Redis) -> tuple[int, int] | None:
    """(used_memory, maxmemory) in bytes; None where INFO is refused (an ACL, a proxy)."""
    try:
        info = await redis.info("memory")
    except ResponseError:
        return None
    return int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))


async def _redis_hygiene(redis: Redis) -> dict[str, int] | None:
    """What says Redis keeps the ledger safe: AOF on and writing, keys never evicted; None
    where INFO is refused."""
    try:
        persistence = await redis.info("persistence")
        stats = await redis.info("stats")
    except ResponseError:
        return None
    return {
        "aof_enabled": int(persistence.get("aof_enabled", 0)),
        "aof_last_write_ok": int(str(persistence.get("aof_last_write_status", "ok")) == "ok"),
        "aof_rewrite_ok": int(str(persistence.get("aof_last_bgrewrite_status", "ok")) == "ok"),
        "evicted_keys": int(stats.get("evicted_keys", 0)),
    }


# A replica's line in INFO replication: slave0, slave1, ...
REPLICA_FIELD = re.compile(r"slave\d+")


def replicas_expected(settings: Settings) -> int:
    """How many replicas the deployment means the primary to have: SMSQ_REDIS_MIN_REPLICAS,
    and at least one behind Sentinel (a failover needs a replica to promote)."""
    return max(settings.redis_min_replicas, 1 if settings.redis_sentinels else 0)


def _replica_fields(value: Any) -> dict[str, Any]:
    """A slaveN value of INFO replication as a dict: redis-py parses
    ip=...,port=...,state=...,offset=...,lag=... into one; a plain string is split here."""
    if isinstance(value, dict):
        return value
    pairs = (item.partition("=") for item in str(value).split(","))
    return {name: found for name, _, found in pairs}


def replication_figures(info: dict[str, Any]) -> dict[str, Any]:
    """From INFO replication: the replicas connected (connected_slaves) and, for each replica
    by ip:port as the primary lists it, (seconds since it last acknowledged, bytes of the
    primary's replication stream it has not acknowledged). A replica acknowledges every
    second, so its lag is 0 or 1 while well; one still in its first full sync has acknowledged
    nothing, so all the stream counts as behind."""
    offset = int(info.get("master_repl_offset", 0))
    replicas = {}
    for name, value in info.items():
        if not REPLICA_FIELD.fullmatch(str(name)):
            continue
        fields = _replica_fields(value)
        ip = str(fields.get("ip", ""))
        where = f"[{ip}]:{fields.get('port')}" if ":" in ip else f"{ip}:{fields.get('port')}"
        behind = max(0, offset - int(fields.get("offset", 0)))
        replicas[where] = (float(fields.get("lag", 0)), behind)
    return {"connected": int(info.get("connected_slaves", 0)), "replicas": replicas}


async def _redis_replication(redis: Redis) -> dict[str, Any] | None:
    """replication_figures() of the primary smsq writes to; None where INFO is refused."""
    try:
        info = await redis.info("replication")
    except ResponseError:
        return None
    return replication_figures(info)


async def redis_figures(ledger: Ledger) -> dict[str, Any]:
    """Everything the scrape reports from Redis, in few round trips."""
    redis: Redis = ledger.redis
    settings = ledger.settings
    cids = [c.decode() for c in await redis.zrevrange(keys.campaigns(), 0, RECENT_CAMPAIGNS - 1)]
    pipe = redis.pipeline(transaction=False)
    for cid in cids:
        pipe.hgetall(keys.counts(cid))
        queue_read_head(pipe, cid)
    pipe.llen(CAMPAIGN_QUEUE)
    pipe.llen(PRIORITY_QUEUE)
    pipe.xlen(ledger.stream)
    replies = await pipe.execute()
    now = time.time()
    campaigns = []
    by_state = dict.fromkeys(map(str, ALL_STATES), 0)
    oldest = None
    for i, cid in enumerate(cids):
        counts = {k.decode(): int(v) for k, v in replies[2 * i].items()}
        campaign = _Campaign(CampaignHead.from_values(cid, replies[2 * i + 1]), counts)
        campaigns.append(campaign)
        for state, n in counts.items():
            by_state[state] = by_state.get(state, 0) + n
        # A campaign waiting for its send_at is not late: its queue age counts from then.
        if counts.get(State.QUEUED, 0) > 0 and 0 < campaign.start <= now:
            oldest = min(oldest or campaign.start, campaign.start)
    paced = {
        name: RateParams.of(trunk.rate_limit, settings.rate_headroom).per_s
        for name, trunk in settings.trunks().items()
    }
    overdue = _overdue(campaigns, paced, settings.rate_unit == "segment", now)
    names = list(settings.trunks())
    trunks = dict(zip(names, await ledger.trunk_statuses(names), strict=True))
    campaign_tasks, priority_tasks, stream_length = replies[2 * len(cids) :]
    return {
        "by_state": by_state,
        "queue_depth": {CAMPAIGN_QUEUE: campaign_tasks, PRIORITY_QUEUE: priority_tasks},
        "parked": {name: t.parked_batches for name, t in trunks.items()},
        "oldest_queued_age_s": now - oldest if oldest is not None else 0.0,
        "overdue": overdue,
        "trunks": list(trunks),
        "orphans_waiting": {name: t.orphans_waiting for name, t in trunks.items()},
        "stats": {name: t.stats for name, t in trunks.items()},
        "claimed_per_s": {name: t.claimed_per_s for name, t in trunks.items()},
        "stream_length": stream_length,
        "halted": {name: t.halted is not None for name, t in trunks.items()},
        "backing_off": {name: t.backoff is not None for name, t in trunks.items()},
        "redis_memory": await _redis_memory(redis),
        "redis_hygiene": await _redis_hygiene(redis),
        "redis_replication": await _redis_replication(redis),
        "replicas_expected": replicas_expected(settings),
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
        parked = GaugeMetricFamily(
            "smsq_parked_batches", "Batches parked, by their campaign's trunk", labels=["trunk"]
        )
        for trunk, n in f["parked"].items():
            parked.add_metric([trunk], n)
        yield parked
        yield GaugeMetricFamily(
            "smsq_oldest_queued_age_seconds",
            "Age of the oldest campaign that still has queued messages, from its send_at if set",
            value=f["oldest_queued_age_s"],
        )
        yield from self._overdue()
        waiting = GaugeMetricFamily(
            "smsq_orphan_callbacks_waiting",
            "Callbacks for DIDWW ids not (yet) known, kept to be joined, by the trunk whose "
            "token brought them",
            labels=["trunk"],
        )
        for trunk, n in f["orphans_waiting"].items():
            waiting.add_metric([trunk], n)
        yield waiting
        totals = GaugeMetricFamily(
            "smsq_callback_results",
            "Callbacks by trunk and result since Redis was created (applied, matched, "
            "duplicate, orphans kept and joined; claims released)",
            labels=["trunk", "result"],
        )
        for trunk, stats in f["stats"].items():
            for name, n in sorted(stats.items()):
                totals.add_metric([trunk, name], n)
        yield totals
        claimed = GaugeMetricFamily(
            "smsq_trunk_claimed_per_second",
            "Units (messages or segments) the trunk claimed in the last second",
            labels=["trunk"],
        )
        for trunk, rate in f["claimed_per_s"].items():
            claimed.add_metric([trunk], rate)
        yield claimed
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
        if f["redis_memory"] is not None:
            used, limit = f["redis_memory"]
            yield GaugeMetricFamily(
                "smsq_redis_used_memory_bytes", "Memory Redis uses (INFO used_memory)", value=used
            )
            yield GaugeMetricFamily(
                "smsq_redis_maxmemory_bytes",
                "Redis's maxmemory (0: no limit); past it, with noeviction, writes fail",
                value=limit,
            )
        hygiene = f.get("redis_hygiene")
        if hygiene is not None:
            yield GaugeMetricFamily(
                "smsq_redis_aof_enabled",
                "1 while Redis writes its append-only file (appendonly yes); 0: a restart "
                "loses the ledger",
                value=hygiene["aof_enabled"],
            )
            yield GaugeMetricFamily(
                "smsq_redis_aof_write_ok",
                "1 while Redis's last append-only file write and rewrite succeeded",
                value=int(hygiene["aof_last_write_ok"] and hygiene["aof_rewrite_ok"]),
            )
            yield CounterMetricFamily(
                "smsq_redis_evicted_keys",
                "Keys Redis has evicted since it started (INFO evicted_keys): ledger data lost",
                value=hygiene["evicted_keys"],
            )
        yield from self._replication()

    def _replication(self) -> Iterator[Metric]:
        replication = self.f.get("redis_replication")
        if replication is None:
            return  # INFO refused: what is expected is left out with what is there
        yield GaugeMetricFamily(
            "smsq_redis_replicas_expected",
            "Replicas the settings expect the primary to have: SMSQ_REDIS_MIN_REPLICAS, at "
            "least 1 with SMSQ_REDIS_SENTINELS",
            value=self.f["replicas_expected"],
        )
        yield GaugeMetricFamily(
            "smsq_redis_connected_replicas",
            "Replicas connected to the primary (INFO replication connected_slaves)",
            value=replication["connected"],
        )
        lag = GaugeMetricFamily(
            "smsq_redis_replica_lag_seconds",
            "Seconds since the replica last acknowledged the primary's stream (0 or 1 while well)",
            labels=["replica"],
        )
        behind = GaugeMetricFamily(
            "smsq_redis_replica_behind_bytes",
            "Bytes of the primary's replication stream the replica has not acknowledged "
            "(master_repl_offset minus its offset)",
            labels=["replica"],
        )
        for replica, (lag_s, behind_bytes) in sorted(replication["replicas"].items()):
            lag.add_metric([replica], lag_s)
            behind.add_metric([replica], behind_bytes)
        yield lag
        yield behind

    def _overdue(self) -> Iterator[Metric]:
        overdue = self.f["overdue"]
        count = GaugeMetricFamily(
            "smsq_campaigns_overdue",
            "Campaigns still sending with messages queued past their expected finish, by trunk",
            labels=["trunk"],
        )
        for trunk in self.f["trunks"]:
            count.add_metric([trunk], sum(1 for t, _, _ in overdue if t == trunk))
        yield count
        seconds = GaugeMetricFamily(
            "smsq_campaign_overdue_seconds",
            f"How far past its expected finish a campaign with queued messages is (the "
            f"{OVERDUE_SHOWN} most overdue)",
            labels=["trunk", "campaign"],
        )
        for trunk, cid, overdue_s in sorted(overdue, key=lambda o: -o[2])[:OVERDUE_SHOWN]:
            seconds.add_metric([trunk, cid], overdue_s)
        yield seconds


def exposition(figures: dict[str, Any]) -> bytes:
    """The page: the Redis figures as read, and this process's counters as they are now."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Figures(figures))
    return generate_latest(registry) + generate_latest(REGISTRY)
