"""An existing campaign through the HTTP API: its status and per-message report, pause,
resume, cancel, reschedule and purge; the same steps as the `smsq` commands.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ledger.errors import InputError
from ledger.states import CampaignState
from producer import control
from producer import report as reports
from producer.enqueue import parse_send_at
from producer.http_common import (
    Api,
    campaign_id,
    coded,
    log,
    message_filter,
    not_found,
    read_body,
    read_query,
    reply,
    stream,
)
from producer.http_lists import MessagesQuery, message_page
from producer.http_models import (
    CampaignStatus,
    Cancelled,
    Paused,
    Purged,
    Reschedule,
    Rescheduled,
    Resumed,
)
from producer.plan import check_schedule

# The report's media types by format; NDJSON is the default.
REPORT_MEDIA_TYPES = {"jsonl": "application/x-ndjson", "csv": "text/csv"}


async def get_campaign(request: Request, api: Api) -> Response:
    cid = campaign_id(request)
    status = await api.ledger.status(cid)
    if status is None:
        raise not_found(cid)
    return reply(CampaignStatus, status.as_dict())


async def pause_campaign(request: Request, api: Api) -> Response:
    cid = campaign_id(request)
    # An ended campaign raises CampaignFinished: a 409 campaign_finished.
    if not await api.ledger.set_state(cid, CampaignState.PAUSED):
        raise not_found(cid)
    log.info("campaign_paused", campaign_id=cid)
    return reply(Paused, {"campaign_id": cid, "state": str(CampaignState.PAUSED)})


async def resume_campaign(request: Request, api: Api) -> Response:
    cid = campaign_id(request)
    why = f"resumed through the HTTP API (campaign {cid})"
    # The same steps as `smsq resume`. Publishing the batches blocks the event loop for a
    # moment (kombu is synchronous); resuming is rare and its batches are few.
    resumed = await control.resume(api.producer.celery, api.ledger, cid, why)
    if resumed is None:
        raise not_found(cid)
    log.info(
        "campaign_resumed",
        campaign_id=cid,
        batches=resumed.batches_queued,
        halt_lifted=resumed.halt_lifted,
    )
    return reply(
        Resumed,
        {
            "campaign_id": cid,
            "state": str(CampaignState.ACTIVE),
            "batches_queued": resumed.batches_queued,
            "halt_lifted": resumed.halt_lifted,
        },
    )


async def cancel_campaign(request: Request, api: Api) -> Response:
    cid = campaign_id(request)
    moved = await control.cancel(api.ledger, cid)
    if moved is None:
        raise not_found(cid)
    log.info("campaign_cancelled", campaign_id=cid, cancelled=moved)
    return reply(
        Cancelled, {"campaign_id": cid, "state": str(CampaignState.CANCELLED), "cancelled": moved}
    )


async def reschedule_campaign(request: Request, api: Api) -> Response:
    cid = campaign_id(request)
    # Its model checked the time (a zone, in the future, within a year).
    at = check_schedule(parse_send_at((await read_body(request, Reschedule)).send_at), time.time())
    try:
        moved = await control.reschedule(api.ledger, cid, at)
    except InputError as exc:
        raise coded(exc, "campaign_not_scheduled") from None
    if moved is None:
        raise not_found(cid)
    log.info("campaign_rescheduled", campaign_id=cid, send_at=at)
    return reply(
        Rescheduled, {"campaign_id": cid, "state": str(CampaignState.SCHEDULED), "send_at": at}
    )


async def purge_campaign(request: Request, api: Api) -> Response:
    cid = campaign_id(request)
    try:
        gone = await control.purge(api.ledger, cid)
    except InputError as exc:
        raise coded(exc, "campaign_pending") from None
    if not gone:
        raise not_found(cid)
    log.info("campaign_purged", campaign_id=cid)
    return reply(Purged, {"campaign_id": cid, "purged": True})


async def campaign_messages(request: Request, api: Api) -> Response:
    """The per-message report, streamed: every check that can fail is made before the first
    byte, since a stream that has started cannot turn into an error answer."""
    cid = campaign_id(request)
    query = read_query(request, MessagesQuery)
    keep = message_filter(query.state, query.code)
    c = await api.ledger.campaign(cid)
    if c is None:
        raise not_found(cid)
    if query.paged:
        return await message_page(api, c, query, keep.states if query.state else None)
    chunks = reports.render(api.ledger.redis, c, keep, query.format)
    return StreamingResponse(
        stream(chunks, "campaign_messages"), media_type=REPORT_MEDIA_TYPES[query.format]
    )
