"""DIDWW status callbacks as the ledger applies them: once, in one round trip, by DIDWW id;
a callback that comes before its id is recorded is kept until it can be joined or matched.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ledger import events, keys, records
from ledger.core import LedgerCore
from ledger.states import State


def utc_seconds(value: Any) -> float | None:
    """A DIDWW time (ISO 8601) in Unix seconds; None when missing or unreadable."""
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    # DIDWW's times are UTC; one without a zone is read as UTC, not local time.
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


@dataclass(frozen=True, slots=True)
class CallbackUpdate:
    """A validated DIDWW callback, ready for the ledger."""

    didww_id: str
    final_state: State
    event: dict[str, Any]

    @property
    def started_at(self) -> float:
        """DIDWW's time_start in Unix seconds; now when it is missing or unreadable (the
        callback then still matches an unknown message posted within the match window)."""
        started = utc_seconds(self.event.get("time_start"))
        return time.time() if started is None else started

    @property
    def duration_s(self) -> int:
        """Seconds from time_start to time_end, 0 when either is missing."""
        start, end = (
            utc_seconds(self.event.get("time_start")),
            utc_seconds(self.event.get("time_end")),
        )
        return max(0, round(end - start)) if start is not None and end is not None else 0

    @property
    def duration_ms(self) -> int:
        """Milliseconds from time_start to time_end, 0 when either is missing."""
        start, end = (
            utc_seconds(self.event.get("time_start")),
            utc_seconds(self.event.get("time_end")),
        )
        return round((end - start) * 1000) if start is not None and end is not None else 0


# A kept callback's flags (ledger/lua/_common.lua: kept_pack): which of DIDWW's times it had,
# and the digits of each one's fraction of a second, so that the event it gives its message
# later writes them again, as DIDWW spelled them, from the numbers kept.
KEPT_START, KEPT_END, KEPT_START_DIGITS, KEPT_END_DIGITS = 1, 2, 4, 16
_PLAIN_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.(\d{1,3}))?Z")


def kept_time(value: Any, start_given: bool = True) -> tuple[bool, int, str]:
    """How a kept callback keeps one of DIDWW's times: (written again from its number, the
    digits of its fraction, the text to keep instead). A time in DIDWW's own shape (UTC, Z, up
    to milliseconds) is written again; any other text is kept as it is (an end time also
    when the start is not readable: the end is kept as ms after the start)."""
    if not isinstance(value, str):
        return False, 0, ""
    match = _PLAIN_TIME.fullmatch(value)
    if match and start_given and utc_seconds(value) is not None:
        return True, len(match.group(1) or ""), ""
    return False, 0, value


class CallbackStore(LedgerCore):
    """Part of ledger.store.Ledger."""

    async def apply_callback(self, update: CallbackUpdate, trunk: str = "") -> str:
        """Apply a callback that came with `trunk`'s token ('' for any trunk); returns
        applied, late (it settled an unconfirmed or unknown message), orphan (kept: for its
        201, or to be matched by settle_orphans, both only to a message of that trunk),
        duplicate, forbidden (the message is another trunk's) or missing."""
        # Durably: DIDWW does not send a callback again once it got its 200 (NotReplicated
        # is a RedisError: the ingester answers 503 and DIDWW retries).
        reply = await self.durably("callback", *self.callback_call(update, trunk))
        first = reply[0]
        return first.decode() if isinstance(first, bytes) else str(first)

    def callback_call(self, update: CallbackUpdate, trunk: str = "") -> tuple[list[str], list[Any]]:
        """The keys and arguments of callback.lua for this callback (apply_callback runs it)."""
        event = update.event
        key, raw = records.id_key(update.didww_id)
        code_id = event.get("code_id")
        fragments = event.get("fragments_sent")
        started = update.started_at
        # A time a 4-byte record cannot hold is not DIDWW's: stored as unknown (0).
        stored_start = started if 0 <= started < 2**32 else 0
        start_given, start_digits, start_text = kept_time(event.get("time_start"))
        end_given, end_digits, end_text = kept_time(event.get("time_end"), start_given)
        flags = (
            (KEPT_START if start_given else 0)
            | (KEPT_END if end_given else 0)
            | start_digits * KEPT_START_DIGITS
            | end_digits * KEPT_END_DIGITS
        )
        return (
            [self.stream, keys.stats()],
            [
                update.final_state,
                events.encode(event),
                self.maxlen,
                self.settings.orphan_ttl_s,
                self.settings.orphans_max,
                event.get("source") or "",
                event.get("destination") or "",
                f"{stored_start:.3f}",
                update.didww_id,
                key,
                0 if code_id is None else min(int(code_id) + 1, 65535),
                # '' keeps the record's estimate when DIDWW does not say.
                "" if fragments is None else min(int(fragments), records.BYTE_MAX),
                update.duration_s if stored_start else 0,
                event.get("status") or "",
                trunk,
                update.didww_id if raw else "",
                f"{started:.3f}",
                flags,
                update.duration_ms,
                start_text,
                end_text,
            ],
        )
