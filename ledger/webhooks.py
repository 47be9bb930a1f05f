"""Webhook subscriptions and their deliveries in Redis (docs/webhooks.md): create, list,
delete and rotate subscriptions, and the steps the delivery service (python -m webhooks)
takes: schedule events, claim due deliveries under a lease, record their outcomes.

A subscription's secret is returned once, by create() and rotate(); nothing else here
returns it but secrets(), which only the delivery service calls.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import secrets as random_secrets
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from ledger import events, keys
from ledger.core import LedgerCore
from ledger.errors import InputError
from ledger.settings import LOOPBACK_NAMES
from ledger.states import State

# Every event type a subscription may name (docs/events.md): the message events and the alerts.
EVENT_TYPES: frozenset[str] = frozenset(
    str(name)
    for name in (
        State.ACCEPTED,
        State.SENT,
        State.FAILED,
        State.REJECTED,
        State.UNKNOWN,
        State.EXPIRED,
        State.CANCELLED,
        State.SUPPRESSED,
        State.UNCONFIRMED,
        events.AUTH_FAILED,
        events.AUTH_RESTORED,
        events.API_UNAVAILABLE,
        events.API_RESTORED,
    )
)
SECRET_PREFIX = "whsec_"
# 24 random bytes (192 bits), as Standard Webhooks' reference libraries make them.
SECRET_BYTES = 24
# A rotated secret still signs beside the new one this long, so a receiver can take the new
# one without refusing deliveries meanwhile (both signatures are sent; either verifies).
ROTATION_GRACE_S = 24 * 3600
ID_PREFIX = "wh_"
DELIVERY_PREFIX = "msg_"
# The longest URL accepted: any real endpoint fits, and a listing stays readable.
MAX_URL_CHARS = 2000

Resolver = Callable[[str, int], Iterable[str]]


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(random_secrets.token_bytes(SECRET_BYTES)).decode()


def new_id() -> str:
    return ID_PREFIX + random_secrets.token_hex(8)


def _resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _refused(address: str) -> bool:
    """Whether an address is one a subscriber must not make smsq post to: loopback, private,
    link-local, multicast, reserved or unspecified (an IPv4 address inside IPv6 as itself)."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    )


def check_url(url: str, allow_private: bool, resolve: Resolver = _resolve) -> str:
    """The URL if smsq may post webhooks to it, else InputError: https (http too with
    allow_private), a host, no user name or password in it, and, unless allow_private, a host
    whose every address is public (checked again before each delivery, so a name that later
    resolves inside the network is refused then too)."""
    if len(url) > MAX_URL_CHARS:
        raise InputError(f"the URL is longer than {MAX_URL_CHARS} characters", code="invalid_url")
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise InputError(f"not a URL: {exc}", code="invalid_url") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise InputError("the URL must be https://host/...", code="invalid_url")
    if parts.scheme == "http" and not allow_private:
        raise InputError(
            "the URL must be https (http only with SMSQ_WEBHOOK_ALLOW_PRIVATE=true)",
            code="invalid_url",
        )
    if parts.username is not None or parts.password is not None:
        raise InputError("the URL must not hold a user name or password", code="invalid_url")
    if not allow_private:
        refuse_private_host(parts.hostname, port, resolve)
    return url


def refuse_private_host(host: str, port: int, resolve: Resolver = _resolve) -> None:
    """InputError unless every address of host is public (see _refused)."""
    if host.lower() in LOOPBACK_NAMES:
        addresses = ["127.0.0.1"]
    else:
        try:
            addresses = [str(ipaddress.ip_address(host.strip("[]")))]
        except ValueError:
            try:
                addresses = list(resolve(host, port))
            except OSError:
                raise InputError(f"{host} does not resolve", code="invalid_url") from None
    if not addresses or any(_refused(a) for a in addresses):
        raise InputError(
            f"{host} is a loopback, private or link-local address (allowed only with"
            " SMSQ_WEBHOOK_ALLOW_PRIVATE=true)",
            code="private_url",
        )


def check_events(names: Iterable[str]) -> frozenset[str]:
    """The event types, each known (docs/events.md); none means every type, future ones too."""
    wanted = frozenset(n.strip() for n in names if n.strip())
    unknown = sorted(wanted - EVENT_TYPES)
    if unknown:
        raise InputError(
            f"unknown event type {', '.join(unknown)} (known: {', '.join(sorted(EVENT_TYPES))})",
            code="unknown_event_type",
        )
    return wanted


@dataclass(frozen=True, slots=True)
class Subscription:
    """A subscription as stored, without its secret. No events means every type."""

    id: str
    url: str
    events: frozenset[str]
    campaign: str | None
    created_at_ms: int

    def matches(self, event: dict[str, Any], written_ms: int) -> bool:
        """Whether an event written at written_ms (its entry id's time) goes to it: written
        since it was created, of a type it asked for, of its campaign if it named one."""
        if written_ms < self.created_at_ms:
            return False
        if self.events and event.get("type") not in self.events:
            return False
        return self.campaign is None or event.get("campaign_id") == self.campaign

    def to_json(self) -> str:
        """The stored JSON, without created_at (webhook_put.lua sets it)."""
        return json.dumps(
            {"url": self.url, "events": ",".join(sorted(self.events)), "campaign": self.campaign}
        )

    @classmethod
    def from_json(cls, wid: str, raw: str | bytes) -> Subscription:
        data = json.loads(raw)
        names = data.get("events") or ""
        return cls(
            id=wid,
            url=data["url"],
            events=frozenset(n for n in names.split(",") if n),
            campaign=data.get("campaign"),
            created_at_ms=int(data.get("created_at", 0)),
        )

    def public(self) -> dict[str, Any]:
        """What a listing shows (never the secret)."""
        return {
            "id": self.id,
            "url": self.url,
            "events": sorted(self.events),
            "campaign": self.campaign,
            "created_at": _iso_ms(self.created_at_ms),
        }


def _iso_ms(ms: int) -> str:
    """Unix ms as docs/events.md spells times: ISO 8601 in UTC with milliseconds."""
    moment = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
    return moment.replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Created:
    """A new subscription and its secret, shown this once."""

    subscription: Subscription
    secret: str


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery leased to this process until `leased` (ms, as the script wrote it)."""

    id: str
    event: bytes
    attempts: int
    first_attempt_ms: int | None
    leased: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of a claimed delivery: 'delivered', 'retry' (at next_ms), 'release' (not
    attempted) or 'failed' (with the failure's record)."""

    id: str
    leased: str
    outcome: str
    next_ms: int = 0
    attempts: int = 0
    first_attempt_ms: int = 0
    failure: dict[str, Any] = field(default_factory=dict)

    def args(self) -> list[Any]:
        if self.outcome == "retry":
            meta = f"{self.attempts} {self.first_attempt_ms}"
            return [self.id, self.leased, "retry", self.next_ms, meta]
        if self.outcome == "failed":
            return [self.id, self.leased, "failed", "", json.dumps(self.failure)]
        return [self.id, self.leased, self.outcome, "", ""]


@dataclass(frozen=True, slots=True)
class Failure:
    """A delivery given up after SMSQ_WEBHOOK_RETRY_S, as `smsq webhook failures` lists it."""

    webhook: str
    id: str
    url: str
    attempts: int
    error: str
    first_attempt_at: str
    failed_at: str
    event: dict[str, Any] | None

    def public(self) -> dict[str, Any]:
        return {
            "webhook": self.webhook,
            "id": self.id,
            "url": self.url,
            "attempts": self.attempts,
            "error": self.error,
            "first_attempt_at": self.first_attempt_at,
            "failed_at": self.failed_at,
            "event": self.event,
        }


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class WebhookStore(LedgerCore):
    """Subscriptions and deliveries; built like the Ledger, on a redis.asyncio client."""

    async def create(
        self, url: str, event_types: Iterable[str] = (), campaign: str | None = None
    ) -> Created:
        """A new subscription (InputError for a URL, event type or campaign id refused)."""
        url = check_url(url.strip(), self.settings.webhook_allow_private)
        wanted = check_events(event_types)
        if campaign is not None and not keys.CAMPAIGN_ID.fullmatch(campaign):
            raise InputError(f"not a campaign id: {campaign!r}", code="invalid_campaign")
        draft = Subscription(new_id(), url, wanted, campaign, 0)
        secret = new_secret()
        created_ms = await self.durably(
            "webhook_put",
            [keys.webhooks(), keys.webhook_secrets()],
            [draft.id, draft.to_json(), secret],
        )
        if not created_ms:
            raise InputError("a subscription id came out twice; try again")
        return Created(
            Subscription(draft.id, url, wanted, campaign, int(created_ms)),
            secret,
        )

    async def subscriptions(self) -> list[Subscription]:
        """Every subscription, oldest first; never a secret."""
        raw = await self.redis.hgetall(keys.webhooks())
        found = [Subscription.from_json(_text(k), v) for k, v in raw.items()]
        return sorted(found, key=lambda s: (s.created_at_ms, s.id))

    async def subscription(self, wid: str) -> Subscription | None:
        raw = await self.redis.hget(keys.webhooks(), wid)
        return None if raw is None else Subscription.from_json(wid, raw)

    async def delete(self, wid: str) -> bool:
        """Delete a subscription and what is still owed to it; False if there was none."""
        return bool(
            await self.durably(
                "webhook_delete",
                [
                    keys.webhooks(),
                    keys.webhook_secrets(),
                    keys.webhook_due(wid),
                    keys.webhook_deliveries(wid),
                    keys.webhook_attempts(wid),
                    keys.webhook_owed(wid),
                ],
                [wid],
            )
        )

    async def rotate(self, wid: str) -> str | None:
        """Give a subscription a new secret and return it (shown this once); deliveries sign
        with it from the delivery service's next read of the secrets (within a second), and
        with the previous one too for ROTATION_GRACE_S. None if there is no such
        subscription."""
        secret = new_secret()
        done = await self.durably(
            "webhook_put",
            [keys.webhooks(), keys.webhook_secrets()],
            [wid, "", secret, ROTATION_GRACE_S * 1000],
        )
        return secret if done else None

    async def secrets(self, now_ms: int) -> dict[str, list[str]]:
        """Subscription id -> the secrets deliveries are signed with at now_ms (the newest
        first): for the delivery service only, never to be shown."""
        raw = await self.redis.hgetall(keys.webhook_secrets())
        found = {}
        for wid, value in raw.items():
            current, *previous = _text(value).split(" ")
            valid = [current]
            if len(previous) == 2 and now_ms < int(previous[1]):
                valid.append(previous[0])
            found[_text(wid)] = valid
        return found

    async def schedule(
        self,
        group: str,
        entries: Sequence[tuple[str, bytes | str, Sequence[str]]],
        wids: Sequence[str],
    ) -> int:
        """Schedule each entry (entry id, event JSON, ids of the subscriptions it goes to) and
        acknowledge it on the events stream in one step; returns deliveries scheduled. A
        subscription owing SMSQ_WEBHOOK_MAX_PENDING gets it as a failure (backlog_full)."""
        number = {wid: n for n, wid in enumerate(wids, 1)}
        script_keys: list[str] = [self.stream, keys.webhooks()]
        for wid in wids:
            script_keys += [
                keys.webhook_due(wid),
                keys.webhook_deliveries(wid),
                keys.webhook_owed(wid),
            ]
        script_keys.append(keys.webhook_failures())
        args: list[Any] = [
            group,
            len(wids),
            self.settings.webhook_max_pending,
            self.settings.webhook_failures_max,
            *wids,
        ]
        for entry_id, data, targets in entries:
            args += [entry_id, data, len(targets), *(number[w] for w in targets)]
        return int(await self.durably("webhook_schedule", script_keys, args))

    async def claim(self, wid: str, most: int, lease_ms: int) -> list[Claimed]:
        """Lease up to `most` due deliveries of a subscription for lease_ms."""
        reply = await self.scripts["webhook_claim"](
            keys=[keys.webhook_due(wid), keys.webhook_deliveries(wid), keys.webhook_attempts(wid)],
            args=[most, lease_ms],
        )
        leased = _text(reply[0])
        found = []
        for i in range(1, len(reply), 3):
            meta = _text(reply[i + 2])
            attempts, _, first = meta.partition(" ")
            found.append(
                Claimed(
                    id=_text(reply[i]),
                    event=reply[i + 1],
                    attempts=int(attempts) if attempts else 0,
                    first_attempt_ms=int(first) if first else None,
                    leased=leased,
                )
            )
        return found

    def settle_call(self, wid: str, outcomes: Sequence[Outcome], client: Any = None) -> Any:
        """The webhook_settle.lua call recording outcomes (awaitable, or queued on a pipeline
        given as client)."""
        args: list[Any] = [self.settings.webhook_failures_max]
        for o in outcomes:
            args += o.args()
        return self.scripts["webhook_settle"](
            keys=[
                keys.webhook_due(wid),
                keys.webhook_deliveries(wid),
                keys.webhook_attempts(wid),
                keys.webhook_failures(),
                keys.webhook_owed(wid),
            ],
            args=args,
            client=client,
        )

    async def settle(self, wid: str, outcomes: Sequence[Outcome]) -> int:
        """Record outcomes of deliveries this process leased; returns how many applied (one
        whose lease had ended is another process's to record)."""
        return int(await self.settle_call(wid, outcomes))

    async def pending(self, wid: str) -> int:
        """Deliveries owed to a subscription (due, waiting to retry, or being sent)."""
        return int(await self.redis.zcard(keys.webhook_due(wid)))

    async def oldest_owed_ms(self, wid: str) -> int | None:
        """When the oldest event still owed to the subscription (due, waiting to retry or
        being sent) was written (ms), or None when nothing is owed."""
        first = await self.redis.zrange(keys.webhook_owed(wid), 0, 0, withscores=True)
        return int(first[0][1]) if first else None

    async def failures(self, limit: int = 100, webhook: str | None = None) -> list[Failure]:
        """Deliveries given up, newest first (at most `limit`, of one subscription if named)."""
        found: list[Failure] = []
        last = "+"
        while len(found) < limit:
            page = await self.redis.xrevrange(keys.webhook_failures(), last, "-", count=500)
            for entry_id, fields in page:
                info = json.loads(fields.get(b"failure", b"{}"))
                if webhook is not None and info.get("webhook") != webhook:
                    continue
                raw_event = fields.get(b"event") or b""
                found.append(
                    Failure(
                        webhook=info.get("webhook", ""),
                        id=info.get("id", ""),
                        url=info.get("url", ""),
                        attempts=int(info.get("attempts", 0)),
                        error=info.get("error", ""),
                        first_attempt_at=_iso_ms(int(info.get("first_attempt_ms", 0))),
                        failed_at=_iso_ms(int(_text(entry_id).partition("-")[0])),
                        event=json.loads(raw_event) if raw_event else None,
                    )
                )
                if len(found) >= limit:
                    break
            if len(page) < 500:
                break
            last = "(" + _text(page[-1][0])
        return found
