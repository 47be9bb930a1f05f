"""Everything about a campaign decided before anything is written: its text rendered per
recipient, segments, quiet-hours groups, opt-outs, schedule and trunk. A dry run is a plan.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from operator import attrgetter
from typing import Any

import redis

from ledger import optouts
from ledger.campaigns import FIELD_SEPARATOR
from ledger.errors import InputError
from ledger.quiet_hours import window_state
from ledger.rate import RateParams
from ledger.settings import Settings
from ledger.templates import MissingField, Template
from producer.numbers import InvalidNumber, NumbersResult, Rejection, normalize, shorten
from producer.segments import SegmentInfo, segment_info
from producer.windows import (
    DAY_S,
    NO_SHARED_HOUR_REASON,
    UnplaceableNumber,
    open_intervals,
    parse_timezone,
    parse_window,
    zones_for_number,
)

# --json lists this many rejections; the rest are counted.
MAX_REPORTED_REJECTIONS = 100
# A campaign may be scheduled at most this far ahead.
MAX_SCHEDULE_S = 366 * 24 * 3600
# A campaign's name is a label for people: longer ones are refused, not cut.
MAX_NAME_CHARS = 200
# The most characters one SMS segment carries (GSM-7, a single part): a text longer than this
# many per allowed segment cannot fit, whatever its encoding.
SEGMENT_MAX_CHARS = 160


@dataclass(frozen=True, slots=True)
class Options:
    """What the caller asked for besides source, text and recipients."""

    name: str | None = None
    ttl_s: int | None = None
    trunk: str | None = None
    priority: bool = False
    send_at: datetime | None = None
    window: str | None = None
    timezone: str | None = None
    parent: str | None = None


@dataclass
class Group:
    """Recipients who share their time zones, so their quiet-hours intervals are the same."""

    zones: tuple[str, ...]
    intervals: list[tuple[int, int]]
    members: list[int] = field(default_factory=list)
    # The zones share no hour of the window at all.
    never: bool = False


@dataclass
class Plan:
    """A validated campaign, ready to write: messages in their final order."""

    source: str
    template: Template
    name: str
    trunk: str
    priority: bool
    created_at: float
    expires_at: float
    send_at: float
    window: str
    timezone: str
    parent: str
    # Kept recipients (into NumbersResult), in send order: grouped by quiet-hours group.
    order: list[int]
    groups: list[Group]
    suppressed: list[int]
    numbers: NumbersResult
    # Per kept recipient (NumbersResult index): segments, and template values joined.
    segments: dict[int, int]
    values: dict[int, str]
    rejections: list[Rejection]
    encodings: collections.Counter[str]
    distribution: collections.Counter[int]
    longest: str
    rate: RateParams

    @property
    def messages(self) -> int:
        return len(self.order)

    @property
    def total_segments(self) -> int:
        return sum(n * count for n, count in self.distribution.items())

    @property
    def encoding(self) -> str:
        """GSM-7 or UCS-2 when every message has it, else mixed."""
        return next(iter(self.encodings)) if len(self.encodings) == 1 else "mixed"

    def duration_s(self) -> float:
        """How long sending takes at the trunk's paced rate (quiet hours aside)."""
        units = self.total_segments if self.rate.by_segment else self.messages
        return units / self.rate.per_s

    def summary(self) -> dict[str, Any]:
        """The campaign's figures, named as every interface names them (docs/api.md "The
        enqueue result"): a dry run shows this, and an enqueue's result is this with its
        campaign id (producer/enqueue.py EnqueueResult.as_dict). Counts are counts and lists
        lists: `rejected` counts what `rejections` lists (its first 100)."""
        now = time.time()
        out: dict[str, Any] = {
            "campaign_id": None,
            "dry_run": True,
            "repeated": False,
            "queued": self.messages,
            "rejected": len(self.rejections),
            "duplicates": self.numbers.duplicates,
            "suppressed": len(self.suppressed),
            "rejections": rejection_items(self.rejections),
            "max_segments": max(self.distribution, default=0),
            "total_segments": self.total_segments,
            "segments_per_message": {str(k): v for k, v in sorted(self.distribution.items())},
            "encoding": self.encoding,
            "encodings": dict(self.encodings),
            "longest_message": self.longest,
            "longest_segments": segment_info(self.longest).segments if self.longest else 0,
            "trunk": self.trunk,
            "priority": self.priority,
            "send_at": self.send_at or None,
            "duration_s": round(self.duration_s(), 1),
        }
        if self.window:
            state = window_state(
                ((g.intervals, len(g.members)) for g in self.groups), max(now, self.send_at)
            )
            out["window"] = {
                "window": self.window,
                "inside_now": state.inside,
                "waiting": state.waiting,
                "next_open": state.next_open_ts,
            }
        return out


def rejection_items(rejections: Sequence[Rejection]) -> list[dict[str, Any]]:
    """The first MAX_REPORTED_REJECTIONS rejected recipients as every interface lists them:
    `line` 1-based and `index` 0-based (line - 1: for recipients given as a list, its
    position in it), the value as given (cut) and why it was refused."""
    return [
        {"line": r.line, "index": r.line - 1, "value": r.value, "reason": r.reason}
        for r in rejections[:MAX_REPORTED_REJECTIONS]
    ]


def check_schedule(send_at: datetime | None, now: float) -> float:
    """A schedule's Unix time; refused when it has no zone, is past or over a year ahead."""
    if send_at is None:
        return 0.0
    if send_at.tzinfo is None:
        raise InputError(
            "the send time needs a time zone, e.g. 2026-12-24T09:00+01:00 or ...T08:00Z",
            code="invalid_send_at",
        )
    at = send_at.timestamp()
    if at <= now:
        raise InputError(
            f"the send time {send_at.isoformat()} is in the past", code="invalid_send_at"
        )
    if at > now + MAX_SCHEDULE_S:
        raise InputError(
            f"the send time {send_at.isoformat()} is more than a year ahead", code="invalid_send_at"
        )
    return at


def _require_utf8(label: str, value: str) -> None:
    """Text a terminal in another encoding passes as lone surrogates, which Redis cannot store."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(
            f"the {label} is not valid UTF-8 text (check the terminal's encoding)"
        ) from None


@dataclass(slots=True)
class Texts:
    """What Planner._render found: the recipients kept and their texts' measures."""

    kept: list[int]
    segments: dict[int, int]
    values: dict[int, str]
    encodings: collections.Counter[str]
    distribution: collections.Counter[int]
    longest: str


class Planner:
    """Validates a campaign against the settings (and the opt-out list, in Redis)."""

    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        self.settings = settings
        self.redis = client

    def trunk(self, name: str | None, source: str = "") -> str:
        """The trunk named, else the one its source number is routed to, else `default` (or
        the first configured)."""
        configured = self.settings.trunks()
        chosen = (
            name
            or self.settings.trunk_for_source(source)
            or ("default" if "default" in configured else next(iter(configured)))
        )
        if chosen not in configured:
            raise InputError(
                f"no trunk {chosen!r} (configured: {', '.join(configured)})", code="unknown_trunk"
            )
        return chosen

    def plan(self, source: str, text: str, numbers: NumbersResult, options: Options) -> Plan:
        settings = self.settings
        if not text or not text.strip():
            raise InputError("the message text is empty", code="empty_text")
        _require_utf8("message text", text)
        _require_utf8("source", source)
        if options.name is not None:
            _require_utf8("campaign name", options.name)
            if len(options.name) > MAX_NAME_CHARS:
                raise InputError(
                    f"the campaign name is {len(options.name):,} characters long; at most "
                    f"{MAX_NAME_CHARS}"
                )
        most = settings.max_segments * SEGMENT_MAX_CHARS
        if len(text) > most and Template.parse(text).literal_chars > most:
            raise InputError(
                f"the message text is {len(text):,} characters long; {settings.max_segments} "
                f"SMS segments (SMSQ_MAX_SEGMENTS) hold at most {most:,}",
                code="text_too_long",
            )
        try:
            source = normalize(source)
        except InvalidNumber as exc:
            raise InputError(
                f"invalid source number {source!r}: {exc.reason}", code="invalid_number"
            ) from None
        template = Template.parse(text)
        ttl_s = options.ttl_s or settings.ttl_s
        if ttl_s <= 0:
            raise InputError("the time to live must be a positive number of seconds")
        trunk = self.trunk(options.trunk, source)
        now = time.time()
        send_at = check_schedule(options.send_at, now)
        start = send_at or now
        expires_at = start + ttl_s
        window = parse_window(options.window) if options.window else None
        fallback = parse_timezone(options.timezone) if options.timezone else None
        trunk_config = settings.trunks()[trunk]
        rate = RateParams.of(trunk_config.rate_limit, settings.rate_headroom, settings.rate_unit)

        rejections = list(numbers.rejections)
        # The opt-out check needs only the numbers: Redis runs it while this thread renders the
        # texts (1.4 s of a million ten-field recipients' enqueue that no longer adds to it,
        # docs/performance.md "Ten fields per recipient").
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="smsq-optouts") as pool:
            listed = pool.submit(self._on_list, numbers)
            texts = self._render(template, numbers, rejections)
            kept, segments, values = texts.kept, texts.segments, texts.values
            encodings, distribution = texts.encodings, texts.distribution
            groups = self._groups(numbers, kept, window, fallback, start, expires_at, rejections)
            on_list = listed.result()
        rejections.sort(key=lambda r: r.line)
        live = [i for g in groups for i in g.members]
        suppressed = [i for i in live if i in on_list] if on_list else []
        if suppressed:
            gone = set(suppressed)
            for g in groups:
                g.members = [i for i in g.members if i not in gone]
            for i in suppressed:
                distribution[segments[i]] -= 1
            distribution += collections.Counter()  # drop zero counts
        order = [i for g in groups for i in g.members]
        if not order and not suppressed:
            raise InputError(
                f"no valid destination number ({len(rejections)} rejected)",
                code="no_valid_recipient",
            )
        return Plan(
            source=source,
            template=template,
            name=options.name or "",
            trunk=trunk,
            # Urgent means now: a schedule or quiet hours make the urgent lane pointless.
            priority=(options.priority or len(order) == 1) and not send_at and window is None,
            created_at=now,
            expires_at=expires_at,
            send_at=send_at,
            window=str(window) if window else "",
            timezone=fallback or "",
            parent=options.parent or "",
            order=order,
            groups=groups,
            suppressed=suppressed,
            numbers=numbers,
            segments=segments,
            values=values,
            rejections=rejections,
            encodings=encodings,
            distribution=distribution,
            longest=texts.longest,
            rate=rate,
        )

    def _groups(
        self,
        numbers: NumbersResult,
        kept: Sequence[int],
        window: Any,
        fallback: str | None,
        start: float,
        end: float,
        rejections: list[Rejection],
    ) -> list[Group]:
        """Recipients by the time zones they share (one group when there are no quiet hours);
        those whose window never opens before the campaign expires are rejected."""
        if window is None:
            return [Group((), [], list(kept))]
        by_zones: dict[tuple[str, ...], Group] = {}
        for i in kept:
            number = numbers.numbers[i]
            line = numbers.line_of[i] if numbers.line_of else i + 1
            try:
                zones = zones_for_number(number, fallback)
            except UnplaceableNumber as exc:
                rejections.append(Rejection(line, number, str(exc)))
                continue
            group = by_zones.get(zones)
            if group is None:
                intervals = open_intervals(window, zones, start, end)
                group = by_zones[zones] = Group(zones, intervals)
                # No open hour before the campaign expires: its messages will expire (they
                # are not refused); zones that never share an hour of the window are.
                group.never = not intervals and not open_intervals(
                    window, zones, start, start + 2 * DAY_S
                )
            if group.never:
                rejections.append(Rejection(line, number, NO_SHARED_HOUR_REASON))
                continue
            group.members.append(i)
        return [g for g in by_zones.values() if g.members]

    def _render(
        self, template: Template, numbers: NumbersResult, rejections: list[Rejection]
    ) -> Texts:
        """Each recipient's text, measured: those whose text cannot be made (a field missing)
        or needs more than SMSQ_MAX_SEGMENTS segments are added to `rejections`."""
        kept: list[int] = []
        segments: dict[int, int] = {}
        values: dict[int, str] = {}
        encodings: collections.Counter[str] = collections.Counter()
        distribution: collections.Counter[int] = collections.Counter()
        longest = ""
        limit = self.settings.max_segments
        if template.is_plain:
            info = segment_info(template.render_values(()))
            if info.segments > limit:
                raise InputError(
                    f"the text needs {info.segments} SMS segments ({info.encoding}); "
                    f"the limit is {limit} (SMSQ_MAX_SEGMENTS)",
                    code="text_too_long",
                )
            kept = list(range(len(numbers.numbers)))
            segments = dict.fromkeys(kept, info.segments)
            encodings[info.encoding] = len(kept)
            distribution[info.segments] = len(kept)
            longest = template.render_values(())
        else:
            if not numbers.columns:
                raise InputError(
                    f"the text uses {{{template.fields[0]}}}, but the recipients have no fields:"
                    " give a CSV with that column (or write {{ and }} for literal braces)",
                    code="invalid_template",
                )
            columns = template.column_indexes(numbers.columns)
            render = template.row_renderer(columns)
            # The fields' values as stored (joined in `fields` order): a row that is exactly
            # the template's fields in order is kept as it came, not split and joined again.
            whole = columns == tuple(range(len(numbers.columns)))
            width = len(numbers.columns)
            rows, line_of, every = numbers.values, numbers.line_of, numbers.numbers
            infos: list[SegmentInfo] = []
            for i in range(len(every)):
                raw = rows[i]
                row = raw.split(FIELD_SEPARATOR)
                try:
                    rendered = render(row)
                except MissingField as exc:
                    line = line_of[i] if line_of else i + 1
                    rejections.append(
                        Rejection(line, shorten(every[i]), f"no value for {{{exc.field}}}")
                    )
                    continue
                info = segment_info(rendered)
                if info.segments > limit:
                    line = line_of[i] if line_of else i + 1
                    rejections.append(
                        Rejection(
                            line,
                            shorten(every[i]),
                            f"the text for it needs {info.segments} SMS segments; the limit is "
                            f"{limit} (SMSQ_MAX_SEGMENTS)",
                        )
                    )
                    continue
                kept.append(i)
                infos.append(info)
                if whole and len(row) == width:
                    values[i] = raw
                else:
                    values[i] = FIELD_SEPARATOR.join(
                        [row[c] if c < len(row) else "" for c in columns]
                    )
            # Counted once at the end, in C, rather than per message, like row_renderer and
            # the rows kept whole (docs/architecture.md D17).
            segments = dict(zip(kept, map(attrgetter("segments"), infos), strict=True))
            encodings.update(map(attrgetter("encoding"), infos))
            distribution.update(segments.values())
            if infos:
                units = list(map(attrgetter("units"), infos))
                first_longest = kept[units.index(max(units))]
                longest = render(rows[first_longest].split(FIELD_SEPARATOR))
        return Texts(kept, segments, values, encodings, distribution, longest)

    def _on_list(self, numbers: NumbersResult) -> set[int]:
        """The recipients (their indexes) on the opt-out list (ledger.optouts.on_list: a script
        call per CHECK_CHUNK numbers; none when the list is empty, as its count says)."""
        if not numbers.numbers or not optouts.listed(self.redis):
            return set()
        return set(optouts.on_list(self.redis, numbers.numbers))
