"""A trunk's rate limit as the claim script applies it (ledger/lua/claim.lua): paced slots
on Redis's clock and a hard cap over a window a little longer than a second
(docs/architecture.md §5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
        so callers late by a few milliseconds do not meet the cap: each time one does, the cap
        pushes that claim later and the push comes back a window later, a loss of rate
        (docs/architecture.md §5, D5)."""
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
        at the last one's slot and, bunched wider, meet the cap (docs/architecture.md D5)."""
        by_span = round(span_s * 1_000_000 / self.interval_us)
        by_margin = 1 + math.floor(self.margin_us / 2 / self.interval_us)
        return max(1, min(by_span, by_margin))

    @property
    def per_s(self) -> float:
        """The paced rate in units per second."""
        return 1_000_000 / self.interval_us
