"""What a worker process's sending engine holds: its batches (HeldBatch) and, per trunk, its
lane (Lane); and Hub, what the engine's parts (claims, posting) may ask of the engine.
docs/architecture.md §6.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ledger.campaigns import Campaign
from ledger.hotpath import Claimed
from ledger.rate import RateParams
from ledger.settings import Settings, TrunkConfig
from ledger.store import Ledger
from worker.didww import DidwwClient
from worker.errors import DidwwError
from worker.inflight import InFlight
from worker.recorder import Recorder
from worker.retry import RetryPolicy

# A process takes another batch of a trunk while it holds less than this many seconds of that
# trunk's work (at the pace it has been claiming), so work spreads over processes and hosts;
# DIDWW's latency is covered by what is in flight, not by what is held.
HOLD_S = 1.0
# Claims answered later than this are always written (see Lane.stale_claim_s).
STALE_CLAIM_MIN_S = 0.01


@dataclass(eq=False)
class HeldBatch:
    """A batch this process holds: the indexes still to offer, retries waiting their turn,
    and what is needed to post its messages."""

    campaign: Campaign
    batch: int
    field: str
    ready: deque[int] = field(default_factory=deque)
    retries: list[tuple[float, int]] = field(default_factory=list)
    values: dict[int, str] = field(default_factory=dict)
    intervals: list[tuple[int, int]] | None = None
    # Requests of it in flight; counted by worker.inflight.InFlight alone.
    in_flight: int = 0
    # Messages given back for a retry whose `retry` result is not recorded yet: offered
    # before it is, the claim would find them still sending and drop them.
    unrecorded: int = 0
    # False once the engine stopped offering its messages (paused, parked, done, lost).
    open: bool = True
    # What this process's posts of the batch came to, for the batch_done log line.
    outcomes: dict[str, int] = field(default_factory=dict)
    # Its park when it was let go: its in-flight entry is forgotten only once that is done.
    parking: asyncio.Future[None] | None = None

    @property
    def pending(self) -> int:
        return len(self.ready) + len(self.retries) + self.unrecorded

    @property
    def finished(self) -> bool:
        return self.in_flight == 0 and (not self.open or self.pending == 0)

    def close(self) -> None:
        """Offer none of its messages any more."""
        self.open = False
        self.ready.clear()
        self.retries.clear()


@dataclass
class Lane:
    """One trunk as this process sends to it."""

    config: TrunkConfig
    client: DidwwClient
    rate: RateParams
    batches: list[HeldBatch] = field(default_factory=list)
    # Units due now (kept after a full cap) and units reserved for reserved_at (loop time).
    ready_units: int = 0
    reserved: int = 0
    reserved_at: float = 0.0
    cap_until: float = 0.0
    # Requests in flight on this trunk; counted by worker.inflight.InFlight alone.
    in_flight: int = 0
    # (loop time, messages) of this process's claims here over the last HOLD_S: its pace.
    recent_claims: deque[tuple[float, int]] = field(default_factory=deque)
    work: asyncio.Event = field(default_factory=asyncio.Event)
    room: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.config.name

    def backlog(self) -> int:
        return sum(b.pending for b in self.batches if b.open)

    @property
    def stale_claim_s(self) -> float:
        """A claim answered later than this after it was asked is given back, unwritten: 3/4
        of the lateness the trunk's window allows (RateParams.allowance_us)."""
        return max(STALE_CLAIM_MIN_S, 0.75 * self.rate.allowance_us / 1_000_000)

    def claimed_recently(self, now: float) -> int:
        """Messages this process claimed here in the last HOLD_S seconds."""
        while self.recent_claims and self.recent_claims[0][0] < now - HOLD_S:
            self.recent_claims.popleft()
        return sum(n for _, n in self.recent_claims)

    def has_room(self) -> bool:
        """Whether to take another batch: this process holds less than it claimed over the
        last HOLD_S (what it will likely claim over the next), or nothing at all."""
        backlog = self.backlog()
        return backlog == 0 or backlog < self.claimed_recently(asyncio.get_running_loop().time())

    def find(self, cid: str, batch: int) -> HeldBatch | None:
        for held in self.batches:
            if held.campaign.id == cid and held.batch == batch:
                return held
        return None

    def next_retry(self, now: float) -> float | None:
        """Seconds until the earliest retry of an open batch is due; None if there is none."""
        times = [h.retries[0][0] for h in self.batches if h.open and h.retries]
        return max(0.0, min(times) - now) if times else None

    def stop_claiming(self) -> None:
        """Forget the units kept or reserved: nothing is claimed until the next reply."""
        self.ready_units = self.reserved = 0


class Hub(Protocol):
    """The engine as its parts (worker/claims.py, worker/posting.py) see it."""

    settings: Settings
    ledger: Ledger
    owner: int
    policy: RetryPolicy
    inflight: InFlight
    recorder: Recorder[Any]
    stopping: bool

    def let_go(self, lane: Lane, held: HeldBatch, park_at: float | None) -> None: ...

    def maybe_finish(self, lane: Lane, held: HeldBatch) -> None: ...

    def urgent_holder(self, lane: Lane, claimed: Claimed) -> HeldBatch: ...

    async def stop_trunk(self, lane: Lane, exc: DidwwError) -> None: ...

    async def back_off(self, lane: Lane, detail: str, seconds: float) -> bool: ...

    def spawn(self, work: Awaitable[Any]) -> None: ...
