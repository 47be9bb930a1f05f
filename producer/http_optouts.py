"""The opt-out list through the HTTP API (as `smsq optout`), and POST /v1/inbound, which
turns a recipient's STOP or START reply, forwarded by the user's inbound-SMS handler, into
a change of the list.
"""

from __future__ import annotations

import unicodedata
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from producer.http_common import (
    Api,
    ApiError,
    log,
    read_body,
    read_query,
    refused,
    reply,
    stream,
)
from producer.http_models import (
    Inbound,
    InboundResult,
    Numbers,
    OptoutCount,
    OptoutLookup,
    OptoutsAdded,
    OptoutsQuery,
    OptoutsRemoved,
)
from producer.numbers import InvalidNumber, NumbersResult, normalize, normalize_many
from producer.plan import rejection_items

# Replies that take a number off (or back onto) the sending list: the keywords carriers and
# the CTIA guidelines recognise, compared with the first word casefolded, punctuation dropped.
STOP_WORDS = frozenset({"stop", "stopall", "unsubscribe", "cancel", "end", "quit", "optout"})
START_WORDS = frozenset({"start", "unstop", "yes", "optin"})
# Numbers per chunk of GET /v1/optouts?export=1.
EXPORT_CHUNK_NUMBERS = 10_000
# ?export= values that ask for the export (its model takes these and 0, false, nothing).
EXPORT_VALUES = frozenset({"1", "true"})


def keyword_action(text: str) -> str:
    """What a reply asks: "opted_out" (a stop word), "opted_in" (a start word) or "none",
    by its first word, case-insensitive, punctuation dropped ("Stop." and "opt-out" count)."""
    for word in text.split():
        bare = "".join(ch for ch in word if not unicodedata.category(ch).startswith("P"))
        if not bare:
            continue  # a word of punctuation only ("--"): look at the next one
        bare = bare.casefold()
        if bare in STOP_WORDS:
            return "opted_out"
        if bare in START_WORDS:
            return "opted_in"
        return "none"
    return "none"


def _number(raw: str, what: str, *, parameter: bool = False) -> str:
    try:
        return normalize(raw)
    except InvalidNumber as exc:
        reason = f"invalid number {raw!r}: {exc.reason}"
        raise refused(what, reason, raw, code="invalid_number", parameter=parameter) from None


async def get_optouts(request: Request, api: Api) -> Response:
    if read_query(request, OptoutsQuery).export not in EXPORT_VALUES:
        return reply(OptoutCount, {"count": await api.ledger.optout_count()})
    return StreamingResponse(
        stream(_lines(api.ledger.optout_numbers()), "optouts_export"), media_type="text/plain"
    )


async def _lines(numbers: AsyncIterator[str]) -> AsyncIterator[str]:
    chunk: list[str] = []
    async for number in numbers:
        chunk.append(number)
        if len(chunk) >= EXPORT_CHUNK_NUMBERS:
            yield "\n".join(chunk) + "\n"
            chunk = []
    if chunk:
        yield "\n".join(chunk) + "\n"


async def _numbers(request: Request) -> NumbersResult:
    """The body's `numbers`, normalised and de-duplicated; 422 when none is valid."""
    found = normalize_many((await read_body(request, Numbers)).numbers)
    if not found.numbers:
        raise ApiError(
            "invalid_number",
            f"no valid number ({len(found.rejections)} rejected)",
            errors=rejection_items(found.rejections),
            errors_count=len(found.rejections),
        )
    return found


def _rejected(found: NumbersResult) -> dict[str, Any]:
    return {"rejected": len(found.rejections), "rejections": rejection_items(found.rejections)}


# Per action, the answer's model and its names for what was done and for the others.
_CHANGES = {
    "add": (OptoutsAdded, "added", "already_listed"),
    "remove": (OptoutsRemoved, "removed", "not_listed"),
}


async def _change(request: Request, api: Api, action: str) -> Response:
    found = await _numbers(request)
    changed = await api.ledger.optout_change(action, found.numbers)
    model, done, others = _CHANGES[action]
    log.info(f"optouts_{done}", **{done: changed}, rejected=len(found.rejections))
    return reply(model, {done: changed, others: len(found.numbers) - changed, **_rejected(found)})


async def add_optouts(request: Request, api: Api) -> Response:
    return await _change(request, api, "add")


async def remove_optouts(request: Request, api: Api) -> Response:
    return await _change(request, api, "remove")


async def get_optout(request: Request, api: Api) -> Response:
    number = _number(str(request.path_params["number"]), "number", parameter=True)
    [listed] = await api.ledger.optout_contains([number])
    return reply(OptoutLookup, {"number": number, "opted_out": listed})


async def inbound(request: Request, api: Api) -> Response:
    req = await read_body(request, Inbound)
    number = _number(req.source, "source")
    action = keyword_action(req.text)
    changed = False
    if action == "opted_out":
        changed = await api.ledger.optout_change("add", [number]) > 0
    elif action == "opted_in":
        changed = await api.ledger.optout_change("remove", [number]) > 0
    # No number in the log: a reply's sender is personal data.
    log.info("inbound_reply", action=action, changed=changed)
    return reply(InboundResult, {"action": action, "number": number, "changed": changed})
