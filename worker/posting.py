"""Posting one claimed message: its request written at once, its answer awaited, and what
that answer means for it (worker/outcome.py) turned into the result the recorder stores.
docs/architecture.md §6 and §7.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import structlog

from ledger import campaigns, events, keys, records
from ledger.hotpath import Claimed, Result
from ledger.templates import Template
from web.transport import Exchange
from worker.batches import HeldBatch, Hub, Lane
from worker.errors import Ambiguous, DidwwError, Rejected
from worker.metrics import API_SECONDS, MESSAGES, RETRIES
from worker.outcome import Kind, decide

log = structlog.stdlib.get_logger("smsq.worker")

# A message given back to its held batch: offered again at the loop time given, once its
# `retry` result is recorded (worker/recorder.py).
Retry = tuple[Lane, HeldBatch, float, int]


class Poster:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._templates: dict[str, Template] = {}

    def text(self, held: HeldBatch, claimed: Claimed) -> tuple[str, str]:
        """(source, text) of a claimed message, rendered for its recipient if templated."""
        c = held.campaign
        source = claimed.source or c.source
        text = claimed.text or c.text
        values = claimed.fields or held.values.get(claimed.index)
        if values is None:
            return source, text
        template = self._templates.get(text)
        if template is None:
            template = self._templates[text] = Template.parse(text)
        return source, template.render_values(campaigns.split_values(values))

    def write(self, lane: Lane, held: HeldBatch, claimed: Claimed) -> None:
        """Write the claimed message's request now (if a connection is idle) and await its
        answer in a task of its own."""
        request: httpx.Request | None
        try:
            source, text = self.text(held, claimed)
            request = lane.client.request(source, claimed.destination, text)
            started: Exchange | DidwwError | None = lane.client.start(request)
        except DidwwError as exc:
            started = exc
        except Exception as exc:
            log.exception("request_not_built", campaign_id=claimed.cid, index=claimed.index)
            started = Ambiguous(f"internal error: {type(exc).__name__}")
            source, request = held.campaign.source, None
        self.hub.spawn(self.post(lane, held, claimed, source, request, started, time.time()))

    async def post(
        self,
        lane: Lane,
        held: HeldBatch,
        claimed: Claimed,
        source: str,
        request: httpx.Request | None,
        started: Exchange | DidwwError | None,
        posted_at: float,
    ) -> None:
        """Await the answer to a written request (or post it, if none was idle when it was
        claimed) and hand its result to the recorder."""
        hub = self.hub
        mid = keys.message_id(claimed.cid, claimed.index)
        result: Result | None = None
        retry: Retry | None = None
        clock = time.perf_counter()
        label = "accepted"
        try:
            try:
                if isinstance(started, DidwwError):
                    raise started
                assert request is not None
                answer: str | DidwwError = await lane.client.send(request, started)
            except DidwwError as exc:
                label = type(exc).__name__
                answer = exc
            result, retry = await self.result(lane, held, claimed, answer, source, posted_at)
        except Exception:
            # A bug here must not leave the message claimed and unrecorded without a word.
            log.exception("post_failed", campaign_id=claimed.cid, message_id=mid)
            result = Result(
                "unknown",
                claimed.cid,
                claimed.batch,
                claimed.index,
                self.event("unknown", lane, claimed, held.campaign.source, None, "internal error"),
                f"{time.time():.0f}",
            )
        finally:
            API_SECONDS.labels(lane.name, label).observe(time.perf_counter() - clock)
            hub.inflight.done(lane, held)
            if retry is not None and result is not None:
                hub.recorder.retry(result, retry)
            elif result is not None:
                hub.recorder.add(result)
                held.outcomes[result.kind] = held.outcomes.get(result.kind, 0) + 1
            hub.maybe_finish(lane, held)

    async def result(
        self,
        lane: Lane,
        held: HeldBatch,
        claimed: Claimed,
        answer: str | DidwwError,
        source: str,
        posted_at: float,
    ) -> tuple[Result, Retry | None]:
        """The result to record for DIDWW's answer (an id) or the request's error, after
        acting on what it means for the trunk (a halt, a backoff); and the message's retry
        in its held batch, if it is given back to it."""
        hub = self.hub
        c = held.campaign
        mid = keys.message_id(claimed.cid, claimed.index)
        where = (claimed.cid, claimed.batch, claimed.index)
        now = time.time()
        outcome = decide(answer, claimed.attempts, hub.policy, now=now, expires_at=c.expires_at)
        if isinstance(answer, str):
            key, raw = records.id_key(answer)
            MESSAGES.labels(lane.name, "accepted").inc()
            log.info("message_accepted", campaign_id=c.id, message_id=mid, didww_id=answer)
            event = self.event("accepted", lane, claimed, source, answer)
            return Result("accepted", *where, event, key, answer, "1" if raw else ""), None
        exc = answer
        if outcome.kind is Kind.REJECTED:
            assert isinstance(exc, Rejected)
            MESSAGES.labels(lane.name, "rejected").inc()
            log.warning(
                "message_rejected", campaign_id=c.id, message_id=mid, status=exc.status,
                detail=exc.detail,
            )  # fmt: skip
            event = self.event("rejected", lane, claimed, source, None, exc.detail)
            return Result("rejected", *where, event), None
        if outcome.kind is Kind.HALT:
            await hub.stop_trunk(lane, exc)
            return Result("retry", *where, "", f"{time.time():.3f}"), None
        if outcome.kind is Kind.UNKNOWN:
            MESSAGES.labels(lane.name, "unknown").inc()
            log.warning("message_unknown", campaign_id=c.id, message_id=mid, detail=exc.detail)
            event = self.event("unknown", lane, claimed, source, None, exc.detail)
            return Result("unknown", *where, event, f"{posted_at:.0f}"), None
        RETRIES.labels(lane.name, str(exc.status or type(exc).__name__)).inc()
        if outcome.kind is Kind.BACK_OFF:
            MESSAGES.labels(lane.name, "retries_exhausted").inc()
            log.warning(
                "retries_exhausted", campaign_id=c.id, message_id=mid, detail=exc.detail,
                status=exc.status,
            )  # fmt: skip
            if await hub.back_off(lane, exc.detail, outcome.backoff_s):
                log.error(
                    "api_unavailable", trunk=lane.name, detail=exc.detail,
                    backoff_s=round(outcome.backoff_s, 1),
                )  # fmt: skip
            return Result("retry", *where, "", f"{time.time():.3f}"), None
        assert outcome.retry_in_s is not None
        log.info(
            "message_expires" if outcome.kind is Kind.EXPIRED else "retrying",
            campaign_id=c.id,
            message_id=mid,
            attempt=claimed.attempts,
            error=type(exc).__name__,
            status=exc.status,
            wait_s=round(outcome.retry_in_s, 2),
        )
        if held.open:
            # Back into its held batch's retries once the result is recorded.
            held.unrecorded += 1
            due = asyncio.get_running_loop().time() + outcome.retry_in_s
            return Result("retry", *where, "", ""), (lane, held, due, claimed.index)
        # An urgent message, or a batch no longer open: record.lua parks its batch until then.
        return Result("retry", *where, "", f"{now + outcome.retry_in_s:.3f}"), None

    def event(
        self,
        kind: str,
        lane: Lane,
        claimed: Claimed,
        source: str,
        didww_id: str | None,
        detail: str | None = None,
    ) -> str:
        extra: dict[str, Any] = {"trunk": lane.name}
        if detail is not None:
            extra["detail"] = detail
        event = events.message_event(
            claimed.cid,
            keys.message_id(claimed.cid, claimed.index),
            claimed.destination,
            source,
            didww_id,
            **extra,
        )
        event["type"] = kind
        return events.encode(event)


__all__ = ["Poster", "Retry"]
