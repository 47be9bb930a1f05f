"""The two round trips of a message's hot path: claim (ledger/lua/claim.lua), at the moment
its rate slot is due, and record (ledger/lua/record.lua), after DIDWW answered. Each call
carries many messages, so a busy worker spends well under one round trip per message on each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ledger import keys
from ledger.core import LedgerCore
from ledger.errors import NotReplicated
from ledger.rate import RateParams


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


class HotPath(LedgerCore):
    """Part of ledger.store.Ledger."""

    async def claim(
        self,
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
        order) with the due units plus any free ones, and reserve `want` units for later.
        Raises NotReplicated with the parsed reply when too few replicas have the claim: its
        messages must not be written (the caller gives them back)."""
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
        try:
            reply = await self.durably(
                "claim",
                [
                    keys.rate(trunk),
                    keys.rate_window(trunk),
                    keys.halt(trunk),
                    keys.backoff(trunk),
                    keys.urgent(trunk),
                    self.stream,
                    keys.rates(trunk),
                ],
                args,
            )
        except NotReplicated as exc:
            exc.reply = parse_claim(exc.reply)
            raise
        return parse_claim(reply)

    async def record(self, results: Sequence[Result], forget: Sequence[str] = ()) -> Recorded:
        """Record many answers in one round trip, and forget finished in-flight entries.
        NotReplicated: recorded on the primary only; record them again (it is idempotent:
        a message already moved is skipped) before anything relies on them."""
        args: list[Any] = [self.maxlen, self.settings.orphan_ttl_s, len(results), len(forget)]
        args += forget
        for r in results:
            args += (r.kind, r.cid, r.batch, r.index, r.a, r.b, r.c, r.event)
        reply = await self.durably("record", [self.stream, keys.inflight(), keys.stats()], args)
        n = len(results)
        return Recorded([bool(int(x)) for x in reply[:n]], [_text(x) for x in reply[n:]])
