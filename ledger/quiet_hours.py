"""Quiet hours as the ledger keeps them: a campaign's windows hash (its one home) and the
arithmetic on the UTC intervals stored in it. Working out a number's time zones and its
intervals is the producer's (producer/windows.py); nothing here needs a phone-number library.

The hash ``smsq:campaign:{cid}:windows`` (docs/architecture.md §3), per group of recipients
that share their time zones: ``g:{n}`` the UTC intervals they may be sent in, ``z:{n}`` the
zones (to compute the intervals again for a new send time), ``n:{n}`` how many they are; per
batch ``b:{b}`` the group its recipients belong to (a batch never mixes groups).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ledger import keys

if TYPE_CHECKING:
    from redis.asyncio import Redis

Interval = tuple[int, int]

# Interval lists are quoted in error messages up to this many characters.
_QUOTE_CHARS = 40


def encode_intervals(intervals: Iterable[Interval]) -> str:
    """``"s-e,s-e"``: decimal Unix seconds; "" for none."""
    return ",".join(f"{s}-{e}" for s, e in intervals)


def decode_intervals(text: str) -> list[Interval]:
    """The intervals encode_intervals wrote; ValueError on anything else."""
    if not text:
        return []
    intervals = []
    for item in text.split(","):
        s, sep, e = item.partition("-")
        if not (sep and s.isdigit() and e.isdigit() and s.isascii() and e.isascii()):
            quoted = text if len(text) <= _QUOTE_CHARS else text[:_QUOTE_CHARS] + "..."
            raise ValueError(f"not an interval list: {quoted!r}")
        intervals.append((int(s), int(e)))
    return intervals


def next_open(intervals: Sequence[Interval], now_ts: float) -> tuple[bool, int | None]:
    """(inside an interval now, the earliest second from now that is inside one, or None).

    now_ts counts as its whole second, as Redis TIME does; inside, the second value is now.
    """
    now = math.floor(now_ts)
    at = bisect.bisect_right(intervals, now, key=lambda interval: interval[0]) - 1
    if at >= 0 and now < intervals[at][1]:
        return True, now
    if at + 1 < len(intervals):
        return False, intervals[at + 1][0]
    return False, None


@dataclass(frozen=True)
class WindowState:
    """Recipients of a campaign with quiet hours, as of one instant."""

    inside: int  # may be sent to now
    waiting: int  # their window opens later
    closed: int  # their window does not open again before the campaign expires
    next_open_ts: int | None  # when the first waiting recipient's window opens


def window_state(groups: Iterable[tuple[Sequence[Interval], int]], now_ts: float) -> WindowState:
    """Sums (intervals, recipients) groups: who is inside now and when the next window opens."""
    inside = waiting = closed = 0
    soonest: int | None = None
    for intervals, recipients in groups:
        is_inside, opens = next_open(intervals, now_ts)
        if is_inside:
            inside += recipients
        elif opens is None:
            closed += recipients
        else:
            waiting += recipients
            soonest = opens if soonest is None else min(soonest, opens)
    return WindowState(inside, waiting, closed, soonest)


@dataclass(frozen=True, slots=True)
class Group:
    """Recipients who share their time zones, hence their intervals."""

    intervals: tuple[Interval, ...]
    zones: tuple[str, ...]
    size: int


def _group_field(group: int) -> str:
    return f"g:{group}"


def _batch_field(batch_no: int) -> str:
    return f"b:{batch_no}"


@dataclass(frozen=True, slots=True)
class QuietHours:
    """A campaign's windows hash, decoded: its groups in order, and each batch's group."""

    groups: tuple[Group, ...]
    batch_groups: Mapping[int, int]

    def to_hash(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for n, group in enumerate(self.groups):
            out[_group_field(n)] = encode_intervals(group.intervals)
            out[f"z:{n}"] = ",".join(group.zones)
            out[f"n:{n}"] = str(group.size)
        out.update({_batch_field(b): str(g) for b, g in self.batch_groups.items()})
        return out

    @classmethod
    def from_hash(cls, raw: Mapping[bytes, bytes] | Mapping[str, str]) -> QuietHours:
        text = {_text(k): _text(v) for k, v in raw.items()}
        groups = []
        for n in range(sum(1 for name in text if name.startswith("g:"))):
            zones = tuple(z for z in text.get(f"z:{n}", "").split(",") if z)
            intervals = tuple(decode_intervals(text.get(_group_field(n), "")))
            groups.append(Group(intervals, zones, int(text.get(f"n:{n}", "0"))))
        batch_groups = {int(k[2:]): int(v) for k, v in text.items() if k.startswith("b:")}
        return cls(tuple(groups), batch_groups)

    def with_intervals(self, intervals: Sequence[Sequence[Interval]]) -> QuietHours:
        """The same groups with new intervals (one list per group, in order)."""
        if len(intervals) != len(self.groups):
            raise ValueError("one interval list per group")
        return QuietHours(
            tuple(
                Group(tuple(new), g.zones, g.size)
                for g, new in zip(self.groups, intervals, strict=True)
            ),
            self.batch_groups,
        )

    def state(self, now_ts: float) -> WindowState:
        return window_state(((g.intervals, g.size) for g in self.groups), now_ts)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def read(redis: Redis, cid: str) -> QuietHours:
    """A campaign's quiet hours (no groups when it has none)."""
    return QuietHours.from_hash(await redis.hgetall(keys.windows(cid)))


async def read_batch_intervals(redis: Redis, cid: str, batch_no: int) -> list[Interval]:
    """The intervals a batch's recipients may be sent in, in two small reads (not the whole
    hash, which holds every batch's group); none when the hash has no group for it."""
    group = await redis.hget(keys.windows(cid), _batch_field(batch_no))
    raw = await redis.hget(keys.windows(cid), _group_field(int(group or 0)))
    return decode_intervals(_text(raw)) if raw else []
