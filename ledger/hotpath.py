"""The two round trips of a message's hot path: claim (ledger/lua/claim.lua), at the moment
its rate slot is due, and record (ledger/lua/record.lua), after DIDWW answered. Each call
carries many messages, so a busy worker spends well under one round trip per message on each.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ledger import keys

if TYPE_CHECKING:
    from ledger.store import Ledger

# How far in the past unreserved slots may still be taken, at most: a caller that wakes late
# loses nothing, and what it takes at once stays a small burst.
CATCHUP_S = 0.02
# The share of the headroom (1 - SMSQ_RATE_HEADROOM of a second) kept between the pace and the
# hard cap; the rest is the lateness a request may have on its way (RateParams.of).
CAP_MARGIN = 0.25


@dataclass(frozen=True, slots=True)
class RateParams:
    """A trunk's limit as the claim script applies it: `limit` units in any `window_us` on
    Redis's clock (the hard cap), paced `interval_us` apart."""

    interval_us: float
    limit: int
    window_us: int
    catchup_us: int
    by_segment: bool
    # How much later than its claim a request may arrive without pushing any one second
    # over the limit: the window's length beyond the time `limit` units take at the rate.
    allowance_us: int = 0

    @classmethod
    def of(cls, rate_per_s: float, headroom: float, unit: str = "message") -> RateParams:
        """rate_per_s units per second: paced at headroom x the rate, and at most floor(rate)
        (at least 1) in any window a little longer than a second's worth, so the arrivals
        DIDWW sees, jittered by up to that much (`allowance_us`), never exceed the rate in any
        second. The window is shorter than `limit` paced slots by CAP_MARGIN of the headroom,
        so callers late by a few milliseconds do not meet the cap: each time they did, the
        cap pushed that claim later and the push came back a window later, costing about 2.5%
        of the rate with 4 processes at 100/s (ops/bench rate scenario, before the margin)."""
        limit = max(1, math.floor(rate_per_s))
        nominal_us = limit / rate_per_s * 1_000_000
        paced_us = nominal_us / headroom
        allowance_us = round((paced_us - nominal_us) * (1 - CAP_MARGIN))
        window_us = round(nominal_us) + allowance_us
        interval_us = paced_us / limit
        catchup_us = round(min(CATCHUP_S * 1_000_000, window_us / 4))
        return cls(interval_us, limit, window_us, catchup_us, unit == "segment", allowance_us)

    @property
    def margin_us(self) -> float:
        """How much longer `limit` paced slots take than the cap's window: the lateness (or
        bunching) of claims that never meets the cap."""
        return self.limit * self.interval_us - self.window_us

    def span_units(self, span_s: float) -> int:
        """Units one claim call should reserve for the caller's next call: about span_s of
        slots, but no more than spread over half the margin, since they are claimed together
        at the last one's slot (3 units at 300/s bunched 6.8 ms and met the cap, costing 1%
        of the rate with 8 processes; ops/bench rate scenario)."""
        by_span = round(span_s * 1_000_000 / self.interval_us)
        by_margin = 1 + math.floor(self.margin_us / 2 / self.interval_us)
        return max(1, min(by_span, by_margin))

    @property
    def per_s(self) -> float:
        """The paced rate in units per second."""
        return 1_000_000 / self.interval_us


@dataclass(frozen=True, slots=True)
class Claimed:
    """A message claimed for posting now. source, text and fields are set for urgent
    messages taken from the trunk's lane (the caller may not hold their campaign)."""

    cid: str
    batch: int
    index: int
    destination: str
    units: int
    attempts: int
    source: str = ""
    text: str = ""
    fields: str = ""


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """What a claim call found about one of the caller's batches: how many of the indexes
    offered were settled (claimed, or found not queued, opted out, cancelled, expired), and
    why the rest could not be claimed: ok (no slot or room left yet), paused, cancelled,
    expired, scheduled (until `value`), missing."""

    cid: str
    batch: int
    examined: int
    outcome: str
    value: str


@dataclass(frozen=True, slots=True)
class ClaimReply:
    status: str
    wake_us: int = -1
    leftover: int = 0
    cap_wait_us: int = -1
    claimed: list[Claimed] = field(default_factory=list)
    outcomes: list[BatchOutcome] = field(default_factory=list)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_claim(reply: list[Any]) -> ClaimReply:
    status = _text(reply[0])
    if status != "ok":
        return ClaimReply(status)
    wake, leftover, cap_wait, n = (int(v) for v in reply[1:5])
    claimed = []
    pos = 5
    for _ in range(n):
        cid, b, index, dest, units, attempts, src, text, fields = reply[pos : pos + 9]
        claimed.append(
            Claimed(
                _text(cid),
                int(b),
                int(index),
                _text(dest),
                int(units),
                int(attempts),
                _text(src),
                _text(text),
                _text(fields),
            )
        )
        pos += 9
    outcomes = []
    for _ in range(int(reply[pos])):
        cid, b, examined, outcome, value = reply[pos + 1 : pos + 6]
        outcomes.append(
            BatchOutcome(_text(cid), int(b), int(examined), _text(outcome), _text(value))
        )
        pos += 5
    return ClaimReply(status, wake, leftover, cap_wait, claimed, outcomes)


@dataclass(slots=True)
class Result:
    """DIDWW's answer for one posted message, for record.lua: kind is accepted (a: id key,
    b: DIDWW id, c: '1' if not a UUID), rejected, unknown (a: when posted, s) or retry."""

    kind: str
    cid: str
    batch: int
    index: int
    event: str = ""
    a: bytes | str = ""
    b: str = ""
    c: str = ""


@dataclass(frozen=True, slots=True)
class Recorded:
    moved: list[bool]
    # Per result, the state an accepted message was settled in at once by a callback that
    # had come first ('' when none).
    settled: list[str]


class HotPath:
    """Mixed into ledger.store.Ledger."""

    async def claim(
        self: Ledger,
        trunk: str,
        owner: int,
        rate: RateParams,
        *,
        due: int,
        want: int,
        max_messages: int,
        batches: Sequence[tuple[str, int, Sequence[int]]],
        event_base: str,
    ) -> ClaimReply:
        """Claim up to max_messages (urgent ones first, then the given batches' indexes in
        order) with the due units plus any free ones, and reserve `want` units for later."""
        args: list[Any] = [
            owner,
            f"{rate.interval_us:.3f}",
            rate.limit,
            rate.window_us,
            rate.catchup_us,
            due,
            want,
            "s" if rate.by_segment else "m",
            max_messages,
            self.maxlen,
            event_base,
            len(batches),
        ]
        for cid, batch_no, indexes in batches:
            args += (cid, batch_no, len(indexes), *indexes)
        reply = await self.scripts["claim"](
            keys=[
                keys.rate(trunk),
                keys.rate_window(trunk),
                keys.halt(trunk),
                keys.backoff(trunk),
                keys.urgent(trunk),
                self.stream,
            ],
            args=args,
        )
        return parse_claim(reply)

    async def record(
        self: Ledger, results: Sequence[Result], forget: Sequence[str] = ()
    ) -> Recorded:
        """Record many answers in one round trip, and forget finished in-flight entries."""
        args: list[Any] = [self.maxlen, self.settings.orphan_ttl_s, len(results), len(forget)]
        args += forget
        for r in results:
            args += (r.kind, r.cid, r.batch, r.index, r.a, r.b, r.c, r.event)
        reply = await self.scripts["record"](
            keys=[self.stream, keys.inflight(), keys.stats()], args=args
        )
        n = len(results)
        return Recorded([bool(int(x)) for x in reply[:n]], [_text(x) for x in reply[n:]])
