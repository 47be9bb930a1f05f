"""Lists and lookups through the HTTP API (as `smsq list` and `smsq trunks`): campaigns newest
first, filtered and paged by a cursor; one message by its id; a page of a campaign's messages;
every trunk's figures (docs/api.md "Lists and lookups"). producer/http.py adds ENDPOINTS to its
route table and PATH_PARAMETERS to its own.
"""

from __future__ import annotations

import re
from datetime import datetime
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from ledger import keys
from ledger.campaigns import Campaign
from ledger.errors import InputError
from ledger.lookups import CAMPAIGN_STATES, MAX_LIMIT, CampaignFilter
from ledger.states import State
from producer import problems
from producer import report as reports
from producer.http_common import Api, ApiError, read_query, refused, reply
from producer.http_models import MessageRow, ReportQuery, TrunkList
from producer.http_openapi import Endpoint, json_answer

# A page's size when the request names none: a few tens of KB of JSON.
DEFAULT_LIMIT = 100
# A message id as keys.message_id makes them; any other is answered 404 unread.
MESSAGE_ID = re.compile(rf"({keys.CAMPAIGN_ID.pattern})-([0-9]{{1,9}})")
PATH_PARAMETERS = {
    "message_id": {
        "description": "a message id: its campaign's id, `-` and its index "
        "(`0123456789abcdef-42`), as the report's `message_id` and the events give it",
        "schema": {"type": "string", "pattern": f"^{MESSAGE_ID.pattern}$"},
    },
}
_LIMIT = f"the most items on the page, 1 to {MAX_LIMIT}"
_CURSOR = "the previous page's cursor (from its `next`); none: the first page"
_WHEN = "ISO 8601 with a zone (`2026-12-01T00:00Z`, `…T09:00%2B01:00`)"
_NEXT = (
    "the next page's relative link, with the same filters and a cursor; null at the end. A page "
    "may hold fewer items than asked, or none, and still have a next one"
)


def parse_instant(name: str, text: str) -> float:
    """A time given as ISO 8601 with a zone, as Unix seconds; InputError naming `name`."""
    try:
        at = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InputError(
            f"{name}: {text!r} is not an ISO 8601 time (e.g. 2026-12-01T00:00Z)"
        ) from None
    # A time without a zone means a different instant on every host.
    if at.tzinfo is None:
        raise InputError(f"{name}: {text!r} has no time zone (add Z or +01:00)")
    return at.timestamp()


class CampaignsQuery(BaseModel):
    """GET /v1/campaigns."""

    model_config = ConfigDict(extra="forbid")

    limit: int = Field(
        DEFAULT_LIMIT, description=_LIMIT, json_schema_extra={"minimum": 1, "maximum": MAX_LIMIT}
    )
    cursor: str | None = Field(None, description=_CURSOR)
    state: str | None = Field(
        None,
        description=f"only campaigns in this state: {', '.join(CAMPAIGN_STATES)}",
        json_schema_extra={"enum": [*CAMPAIGN_STATES, None]},
    )
    name: str | None = Field(None, description="only campaigns whose name contains this (any case)")
    trunk: str | None = Field(None, description="only campaigns sent through this trunk")
    created_after: str | None = Field(
        None, description=f"only those created then or later: {_WHEN}"
    )
    created_before: str | None = Field(
        None, description=f"only those created then or earlier: {_WHEN}"
    )


class MessagesQuery(ReportQuery):
    """GET /v1/campaigns/{id}/messages: the report's parameters, and a page's."""

    limit: int | None = Field(
        None,
        description=f"a page of at most this many messages (1 to {MAX_LIMIT}) as one JSON "
        "object, rather than the whole report streamed",
        json_schema_extra={"minimum": 1, "maximum": MAX_LIMIT},
    )
    cursor: str | None = Field(None, description=f"{_CURSOR} (a page of {DEFAULT_LIMIT})")

    @property
    def paged(self) -> bool:
        return self.limit is not None or self.cursor is not None


class CampaignSummary(BaseModel):
    """A campaign in a list: its status without the costlier members (rate, trunk status,
    warnings, window); GET /v1/campaigns/{id} has them."""

    model_config = ConfigDict(extra="forbid")

    campaign_id: str
    name: str
    trunk: str
    state: str = Field(description=", ".join(CAMPAIGN_STATES))
    total: int
    counts: dict[str, int] = Field(description="messages per state")
    done: bool = Field(description="no message queued, sending or awaiting its callback")
    created_at: float = Field(description="Unix seconds")
    send_at: float | None
    expires_at: float
    done_at: float | None
    parent: str | None = Field(description="the campaign this one resends")
    priority: bool


class CampaignList(BaseModel):
    model_config = ConfigDict(extra="forbid")

    campaigns: list[CampaignSummary] = Field(description="newest first")
    next: str | None = Field(description=_NEXT)


class MessageFound(MessageRow):
    """GET /v1/messages/{message_id}: the message's report row and its campaign."""

    campaign_id: str


class MessagePage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    messages: list[MessageRow] = Field(description="in index order")
    next: str | None = Field(description=_NEXT)


def _limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise refused(
            "limit", f"must be 1 to {MAX_LIMIT}", limit, code="invalid_limit", parameter=True
        )
    return limit


def _filter(query: CampaignsQuery) -> CampaignFilter:
    when: dict[str, float | None] = {}
    for name in ("created_after", "created_before"):
        text = getattr(query, name)
        try:
            when[name] = None if text is None else parse_instant(name, text)
        except InputError as exc:
            reason = str(exc).removeprefix(f"{name}: ")
            raise refused(name, reason, text, code="invalid_parameter", parameter=True) from None
    try:
        return CampaignFilter(query.state, query.name, query.trunk, **when)
    except InputError as exc:
        reason = str(exc)
        raise refused("state", reason, query.state, code="invalid_filter", parameter=True) from None


def _bad_cursor(exc: InputError, cursor: str | None) -> ApiError:
    """The ledger's refusal of a cursor (the only input it checks that the handler has not)."""
    if problems.code_of(exc) != "invalid_cursor":
        raise exc
    return refused("cursor", str(exc), cursor, code="invalid_cursor", parameter=True)


def _link(path: str, query: BaseModel, cursor: str | None) -> str | None:
    """The next page: this request's parameters as given, the cursor replaced."""
    if cursor is None:
        return None
    given = query.model_dump(exclude_none=True, exclude_unset=True, exclude={"cursor"})
    return f"{path}?{urlencode({**given, 'cursor': cursor})}"


async def list_campaigns(request: Request, api: Api) -> Response:
    query = read_query(request, CampaignsQuery)
    limit = _limit(query.limit)
    where = _filter(query)
    try:
        page = await api.ledger.list_campaigns(limit, query.cursor, where)
    except InputError as exc:
        raise _bad_cursor(exc, query.cursor) from None
    return reply(
        CampaignList,
        {"campaigns": page.items, "next": _link("/v1/campaigns", query, page.next_cursor)},
    )


async def get_message(request: Request, api: Api) -> Response:
    message_id = str(request.path_params["message_id"])
    found = await api.ledger.message(message_id) if MESSAGE_ID.fullmatch(message_id) else None
    if found is None:
        raise ApiError("message_not_found", f"no message {message_id!r}")
    c, record, raw_id, reference = found
    raw_ids = {record.index: raw_id} if raw_id is not None else {}
    references = {record.index: reference} if reference is not None else {}
    row = reports.row(c, record, raw_ids, references)
    return reply(MessageFound, {**row, "campaign_id": c.id})


async def get_trunks(request: Request, api: Api) -> Response:
    """GET /v1/trunks: each configured trunk's own figures."""
    trunks = await api.ledger.trunk_statuses(list(api.ledger.settings.trunks()))
    return reply(TrunkList, {"trunks": [t.as_dict() for t in trunks]})


async def message_page(
    api: Api, c: Campaign, query: MessagesQuery, states: frozenset[State] | None
) -> Response:
    """A page of the campaign's messages (GET /v1/campaigns/{id}/messages with `limit` or
    `cursor`); its `state` filter checked by the caller."""
    # A page is JSON of whole rows: a CSV page or a code filter would need a second way of
    # paging, and no client has asked for one.
    for name in ("format", "code"):
        if name in query.model_fields_set:
            reason = "not taken with limit or cursor"
            value = getattr(query, name)
            raise refused(name, reason, value, code="invalid_parameter", parameter=True)
    limit = _limit(DEFAULT_LIMIT if query.limit is None else query.limit)
    try:
        page = await api.ledger.message_page(c, limit, query.cursor, states)
    except InputError as exc:
        raise _bad_cursor(exc, query.cursor) from None
    found, raw_ids, references, cursor = page
    rows = [reports.row(c, record, raw_ids, references) for record in found]
    link = _link(f"/v1/campaigns/{c.id}/messages", query, cursor)
    return reply(MessagePage, {"messages": rows, "next": link})


_PAGE = ("invalid_limit", "invalid_cursor")
ENDPOINTS: list[Endpoint] = [
    Endpoint(
        "GET",
        "/v1/campaigns",
        list_campaigns,
        "Campaigns newest first, filtered, a page at a time",
        {200: json_answer(CampaignList, "a page of campaigns and the next page's link")},
        query=CampaignsQuery,
        problems=(*_PAGE, "invalid_filter"),
    ),
    Endpoint(
        "GET",
        "/v1/trunks",
        get_trunks,
        "Every trunk with its own figures: halts, backoff, claim rate, parked batches, "
        "kept callbacks, counters",
        {200: json_answer(TrunkList, "the trunks")},
    ),
    Endpoint(
        "GET",
        "/v1/messages/{message_id}",
        get_message,
        "One message by its id: its report row and its campaign",
        {200: json_answer(MessageFound, "the message")},
        problems=("message_not_found",),
    ),
]
