"""What the dashboard (producer/dashboard.py) shows, read from the ledger: recent campaigns
with their status, one campaign with its failures by DIDWW code_id, and the trunks.
"""

from __future__ import annotations

import json
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from ledger import keys
from ledger.campaigns import Campaign, Status, TrunkStatus, decode_counts, scan_records, send_rate
from ledger.reasons import reason_for
from ledger.states import PENDING, State
from ledger.store import Ledger

# Campaigns in the list, newest first: a screen's worth, and two Redis round trips however
# many campaigns Redis holds.
MAX_CAMPAIGNS = 100
# Failures by code_id are counted by reading every record of the campaign; past this many
# messages that read is left to the report (state=failed), so a page open on a campaign of
# millions does not scan it every few seconds.
MAX_SCANNED_MESSAGES = 50_000
# Up to this many messages a campaign is scanned again whenever its failed count changes
# (a few milliseconds); a larger one at most every RESCAN_S seconds per process.
ALWAYS_RESCAN_MESSAGES = 10_000
RESCAN_S = 5.0
# Campaigns whose failure counts are kept; the dashboard shows one campaign per browser tab.
CACHED_CAMPAIGNS = 64
# The stats-hash counters that are callbacks settling a message (DIDWW's or matched late).
CALLBACK_STATS = ("callbacks_applied", "callbacks_late", "callbacks_matched")


def _progress(status: Status) -> float:
    """The share of the campaign's messages that are settled (not queued, sending or
    waiting for their callback)."""
    total = status.campaign.total
    pending = sum(status.counts.get(s, 0) for s in PENDING)
    return round((total - pending) / total, 4) if total else 1.0


def _alert(flag: str | None) -> dict[str, Any] | None:
    """The alert behind a trunk's halt or backoff flag: its detail and when it was raised."""
    if flag is None:
        return None
    try:
        doc = json.loads(flag)
        return {"detail": str(doc.get("detail")), "at": doc.get("at")}
    except (ValueError, AttributeError):
        return {"detail": flag, "at": None}


def _trunk(t: TrunkStatus) -> dict[str, Any]:
    return {
        "name": t.name,
        "halted": _alert(t.halted),
        "backing_off": _alert(t.backoff),
        "claimed_per_s": t.claimed_per_s,
        "parked_batches": t.parked_batches,
        "callbacks_waiting": t.orphans_waiting,
        "callbacks_settled": _callbacks(t.stats),
    }


def _callbacks(stats: dict[str, int]) -> int:
    return sum(stats.get(name, 0) for name in CALLBACK_STATS)


# What a row of the campaigns list shows of a campaign's status (Status.as_dict).
SUMMARY_FIELDS = (
    "campaign_id", "name", "trunk", "created_at", "send_at", "state", "total", "counts",
    "rate_per_s",
)  # fmt: skip


def summary(status: Status) -> dict[str, Any]:
    """One row of the campaigns list."""
    full = status.as_dict()
    return {**{name: full[name] for name in SUMMARY_FIELDS}, "progress": _progress(status)}


async def campaigns(ledger: Ledger, limit: int = MAX_CAMPAIGNS) -> dict[str, Any]:
    """The most recent campaigns, newest first, each with its status."""
    redis = ledger.redis
    newest = cast(list[bytes], await redis.zrevrange(keys.campaigns(), 0, limit - 1))
    cids = [c.decode() for c in newest]
    pipe = redis.pipeline(transaction=False)
    for cid in cids:
        pipe.hgetall(keys.campaign(cid))
        pipe.hgetall(keys.counts(cid))
    replies = await pipe.execute()
    found: list[tuple[Campaign, dict[str, int]]] = []
    for i, cid in enumerate(cids):
        # A campaign being written (or purged) between the two reads has no full hash yet.
        c = Campaign.stored(cid, replies[2 * i])
        if c is not None:
            found.append((c, decode_counts(replies[2 * i + 1])))
    names = sorted({c.trunk for c, _ in found})
    trunks = dict(zip(names, await ledger.trunk_statuses(names), strict=True))
    rows = []
    for c, counts in found:
        status = Status(c, counts, 0.0, trunks[c.trunk])
        if not status.done:
            # One round trip per unfinished campaign: a finished one posts nothing.
            status = Status(c, counts, await send_rate(redis, c.id), trunks[c.trunk])
        rows.append(summary(status))
    return {"campaigns": rows, "limit": limit, "at": time.time()}


async def trunks(ledger: Ledger) -> dict[str, Any]:
    """Every configured trunk: halted or backing off, and the alert that did it; what it
    claimed in the last second, its parked batches and the callbacks its token brought that
    wait for their message; the callbacks it settled so far, for their rate."""
    statuses = await ledger.trunk_statuses(list(ledger.settings.trunks()))
    return {"trunks": [_trunk(t) for t in statuses], "at": time.time()}


@dataclass(slots=True)
class _Counted:
    failed: int
    groups: list[dict[str, Any]]
    at: float


class FailureCounts:
    """A campaign's failed messages by DIDWW code_id, from a scan of its records: read again
    only when its failed count has changed (past ALWAYS_RESCAN_MESSAGES messages, at most
    every RESCAN_S seconds), and never for a campaign of more than MAX_SCANNED_MESSAGES
    (None: the report has them)."""

    def __init__(
        self,
        max_messages: int = MAX_SCANNED_MESSAGES,
        always_rescan: int = ALWAYS_RESCAN_MESSAGES,
        rescan_s: float = RESCAN_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_messages = max_messages
        self.always_rescan = always_rescan
        self.rescan_s = rescan_s
        self._clock = clock
        self._cache: OrderedDict[str, _Counted] = OrderedDict()

    async def get(self, ledger: Ledger, status: Status) -> list[dict[str, Any]] | None:
        c = status.campaign
        failed = status.counts.get(State.FAILED, 0)
        if failed == 0:
            return []
        if c.total > self.max_messages:
            return None
        now = self._clock()
        known = self._cache.get(c.id)
        if known is not None and (known.failed == failed or self._may_lag(c, known, now)):
            self._cache.move_to_end(c.id)
            return known.groups
        by_code: Counter[int | None] = Counter()
        async for record in scan_records(ledger.redis, c):
            if record.state is State.FAILED:
                by_code[record.code_id] += 1
        groups = [
            {"code_id": code, "reason": reason_for(code) if code is not None else None, "count": n}
            for code, n in sorted(by_code.items(), key=lambda item: (-item[1], item[0] or 0))
        ]
        self._cache[c.id] = _Counted(failed, groups, now)
        self._cache.move_to_end(c.id)
        while len(self._cache) > CACHED_CAMPAIGNS:
            self._cache.popitem(last=False)
        return groups

    def _may_lag(self, c: Campaign, known: _Counted, now: float) -> bool:
        """A large campaign's groups may lag its failed count by up to rescan_s."""
        return c.total > self.always_rescan and now - known.at < self.rescan_s


async def campaign(ledger: Ledger, cid: str, failures: FailureCounts) -> dict[str, Any] | None:
    """One campaign: its status, progress, failures by code_id, the time left at its current
    rate, its trunk's alerts, and its settled-by-callback count (sent + failed), whose change
    between two reads is the rate of its callbacks."""
    status = await ledger.status(cid)
    if status is None:
        return None
    counts = status.counts
    to_post = counts.get(State.QUEUED, 0) + counts.get(State.SENDING, 0)
    rate = status.rate_per_s
    paused = status.state not in ("active", "scheduled")
    return {
        "status": status.as_dict(),
        "progress": _progress(status),
        "time_left_s": round(to_post / rate, 1) if rate > 0 and not paused else None,
        "failures": await failures.get(ledger, status),
        "failures_scanned_up_to": failures.max_messages,
        "callbacks_settled": counts.get(State.SENT, 0) + counts.get(State.FAILED, 0),
        "trunk": _trunk(status.trunk),
        "at": time.time(),
    }
