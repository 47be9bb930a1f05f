"""An existing campaign through the HTTP API: its status and per-message report, pause,
resume, cancel, reschedule and purge; the same steps as the `smsq` commands.
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ledger.errors import InputError
from ledger.states import CampaignState
from producer import control
from producer import report as reports
from producer.enqueue import parse_send_at
from producer.http_common import (
    Api,
    ApiError,
    campaign_id,
    check_fields,
    check_query,
    log,
    message_filter,
    read_json,
    required_string,
    stream,
)
from producer.plan import check_schedule

# The report's media types by format; NDJSON is the default.
REPORT_MEDIA_TYPES = {"jsonl": "application/x-ndjson", "csv": "text/csv"}
REPORT_PARAMETERS = ("state", "code", "format")


async def _not_found_or_cancelled(api: Api, cid: str) -> ApiError:
    if await api.ledger.campaign(cid) is None:
        return ApiError(404, f"no campaign {cid!r}")
    return ApiError(409, f"campaign {cid} is cancelled")


async def get_campaign(request: Request, api: Api) -> Response:
    cid = campaign_id(request)
    status = await api.ledger.status(cid)
    if status is None:
        raise ApiError(404, f"no campaign {cid!r}")
    return JSONResponse(status.as_dict())


async def pause_campaign(request: Request, api: Api) -> Response:
    cid = campaign_id(request)
    if not await api.ledger.set_state(cid, CampaignState.PAUSED):
        raise await _not_found_or_cancelled(api, cid)
    log.info("campaign_paused", campaign_id=cid)
    return JSONResponse({"campaign_id": cid, "state": str(CampaignState.PAUSED)})


async def resume_campaign(request: Request, api: Api) -> Response:
    cid = campaign_id(request)
    why = f"resumed through the HTTP API (campaign {cid})"
    # The same steps as `smsq resume`. Publishing the batches blocks the event loop for a
    # moment (kombu is synchronous); resuming is rare and its batches are few.
    resumed = await control.resume(api.producer.celery, api.ledger, cid, why)
    if resumed is None:
        raise await _not_found_or_cancelled(api, cid)
    log.info(
        "campaign_resumed",
        campaign_id=cid,
        batches=resumed.batches_queued,
        halt_lifted=resumed.halt_lifted,
    )
    return JSONResponse(
        {
            "campaign_id": cid,
            "state": str(CampaignState.ACTIVE),
            "batches_queued": resumed.batches_queued,
            "halt_lifted": resumed.halt_lifted,
        }
    )


async def cancel_campaign(request: Request, api: Api) -> Response:
    cid = campaign_id(request)
    moved = await control.cancel(api.ledger, cid)
    if moved is None:
        raise ApiError(404, f"no campaign {cid!r}")
    log.info("campaign_cancelled", campaign_id=cid, cancelled=moved)
    return JSONResponse(
        {"campaign_id": cid, "state": str(CampaignState.CANCELLED), "cancelled": moved}
    )


async def reschedule_campaign(request: Request, api: Api) -> Response:
    cid = campaign_id(request)
    doc = await read_json(request)
    check_fields(doc, ("send_at",), ())
    try:
        at = check_schedule(parse_send_at(required_string(doc, "send_at")), time.time())
    except InputError as exc:
        raise ApiError(422, f"send_at: {exc}") from None
    try:
        moved = await control.reschedule(api.ledger, cid, at)
    except InputError as exc:
        raise ApiError(409, str(exc)) from None
    if moved is None:
        raise ApiError(404, f"no campaign {cid!r}")
    log.info("campaign_rescheduled", campaign_id=cid, send_at=at)
    return JSONResponse({"campaign_id": cid, "state": str(CampaignState.SCHEDULED), "send_at": at})


async def purge_campaign(request: Request, api: Api) -> Response:
    cid = campaign_id(request)
    try:
        gone = await control.purge(api.ledger, cid)
    except InputError as exc:
        raise ApiError(409, str(exc)) from None
    if not gone:
        raise ApiError(404, f"no campaign {cid!r}")
    log.info("campaign_purged", campaign_id=cid)
    return JSONResponse({"campaign_id": cid, "purged": True})


async def campaign_messages(request: Request, api: Api) -> Response:
    """The per-message report, streamed: every check that can fail is made before the first
    byte, since a stream that has started cannot turn into an error answer."""
    cid = campaign_id(request)
    check_query(request, REPORT_PARAMETERS)
    query = request.query_params
    fmt = query.get("format", "jsonl")
    if fmt not in REPORT_MEDIA_TYPES:
        raise ApiError(422, f"format: {fmt!r} is not one of {', '.join(REPORT_MEDIA_TYPES)}")
    # state=failed&state=unknown means the same as state=failed,unknown.
    keep = message_filter(",".join(query.getlist("state")), ",".join(query.getlist("code")))
    c = await api.ledger.campaign(cid)
    if c is None:
        raise ApiError(404, f"no campaign {cid!r}")
    chunks = reports.render(api.ledger.redis, c, keep, fmt)
    return StreamingResponse(
        stream(chunks, "campaign_messages"), media_type=REPORT_MEDIA_TYPES[fmt]
    )
