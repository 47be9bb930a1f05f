"""What the HTTP API's handlers share (producer/http.py wires them up): the error they raise,
the app's state, and readers for JSON bodies, fields, path parameters and headers.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from kombu.exceptions import OperationalError
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response

from ledger import keys
from ledger.errors import ConfigError, InputError, SmsqError
from ledger.states import ALL_STATES, State
from ledger.store import Ledger
from producer import report as reports
from producer.enqueue import Producer
from producer.numbers import Rejection
from producer.plan import MAX_REPORTED_REJECTIONS
from web import BodyTooLarge, ClientGone, read_limited

log = structlog.stdlib.get_logger("smsq.api")

# Room for about a million numbers written as JSON strings; a bigger campaign is better
# split than held in memory whole by one request.
MAX_BODY_BYTES = 16 * 1024 * 1024
JSON_MEDIA_TYPE = "application/json"
# Campaign ids are 16 hex digits; anything that could not be one is answered 404 unread.
CAMPAIGN_ID = keys.CAMPAIGN_ID
# Printable ASCII, as HTTP header values safely carry; 200 is room for a UUID plus a prefix.
IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,200}")


class ApiError(Exception):
    """An answer other than success: its status code, message and any extra JSON fields."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


@dataclass
class Api:
    """What the handlers share: the ledger (async Redis) and the producer (sync, threads)."""

    ledger: Ledger
    producer: Producer


Handler = Callable[[Request, Api], Awaitable[Response]]


async def answer(handler: Handler, request: Request, error: Callable[..., Response]) -> Response:
    """Run an endpoint's handler, mapping every failure to one answer made by
    error(status, message, **extra_fields): the API's and the dashboard's, alike."""
    try:
        return await handler(request, request.app.state.api)
    except ApiError as exc:
        return error(exc.status, exc.message, **exc.extra)
    except (RedisError, OperationalError) as exc:
        # Nothing was stored (a campaign stored but not all queued is a 202): a retry, with
        # the same Idempotency-Key for a create, is safe.
        log.error("api_redis_unavailable", path=request.url.path, error=str(exc))
        return error(503, "Redis is unavailable; try again later")
    except InputError as exc:
        return error(422, str(exc))
    except ConfigError as exc:
        log.error("api_configuration_error", path=request.url.path, error=str(exc))
        return error(500, f"configuration error: {exc}")
    except SmsqError as exc:
        log.error("api_failed", path=request.url.path, error=str(exc))
        return error(500, str(exc))


async def read_json(request: Request) -> dict[str, Any]:
    """The request's body as a JSON object: 415 for another media type, 413 past
    MAX_BODY_BYTES (refused as soon as it is), 400 for invalid JSON, 422 for a non-object."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != JSON_MEDIA_TYPE:
        raise ApiError(415, f"the Content-Type must be {JSON_MEDIA_TYPE}")
    try:
        body = await read_limited(request, MAX_BODY_BYTES)
    except BodyTooLarge:
        raise ApiError(413, f"the body is over {MAX_BODY_BYTES} bytes") from None
    except ClientGone:
        # Nobody is there to read it: any answer does (read_limited logged it).
        raise ApiError(400, "the body did not arrive whole") from None
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ApiError(422, "the body must be a JSON object")
    return doc


def check_fields(doc: Mapping[str, Any], required: Iterable[str], optional: Iterable[str]) -> None:
    """Refuse a field that is not one of these (so a misspelt one is not ignored), or a
    missing required one."""
    required, optional = tuple(required), tuple(optional)
    unknown = sorted(set(doc) - {*required, *optional})
    if unknown:
        raise ApiError(
            422,
            f"unknown field {unknown[0]!r} (the fields are {', '.join((*required, *optional))})",
        )
    for name in required:
        if name not in doc:
            raise ApiError(422, f"{name}: required")


def string(doc: Mapping[str, Any], name: str) -> str | None:
    """Optional field `name` as text; null or absent is None."""
    value = doc.get(name)
    if value is not None and not isinstance(value, str):
        raise ApiError(422, f"{name}: must be a string or null")
    return value


def required_string(doc: Mapping[str, Any], name: str) -> str:
    """Field `name` as text (check_fields has made sure it is there)."""
    value = doc.get(name)
    if not isinstance(value, str):
        raise ApiError(422, f"{name}: must be a string")
    return value


def boolean(doc: Mapping[str, Any], name: str) -> bool:
    """Field `name` as true or false (absent: false); 1, "true" and null are refused."""
    value = doc.get(name, False)
    if not isinstance(value, bool):
        raise ApiError(422, f"{name}: must be true or false")
    return value


def string_list(doc: Mapping[str, Any], name: str) -> list[str]:
    """Field `name` as an array of strings; the first item that is not one is named."""
    value = doc.get(name)
    if not isinstance(value, list):
        raise ApiError(422, f"{name}: must be an array of strings")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise ApiError(422, f"{name}[{index}]: must be a string")
    return value


def check_query(request: Request, allowed: Iterable[str]) -> None:
    """Refuse a query parameter that is not one of `allowed` (a misspelt filter would
    otherwise silently select everything)."""
    allowed = tuple(allowed)
    unknown = sorted(set(request.query_params) - set(allowed))
    if unknown:
        raise ApiError(
            422, f"unknown query parameter {unknown[0]!r} (the parameters are {', '.join(allowed)})"
        )


def campaign_id(request: Request) -> str:
    cid = str(request.path_params["cid"])
    if not CAMPAIGN_ID.fullmatch(cid):
        raise ApiError(404, f"no campaign {cid!r}")
    return cid


def idempotency_key(request: Request) -> str | None:
    """The Idempotency-Key header: 1 to 200 printable ASCII characters, or none."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not IDEMPOTENCY_KEY.fullmatch(key) or not key.strip():
        raise ApiError(
            400, "the Idempotency-Key header must be 1 to 200 printable ASCII characters"
        )
    return key


def indexed(rejections: Iterable[Rejection]) -> list[dict[str, Any]]:
    """The first MAX_REPORTED_REJECTIONS rejections by 0-based `index` in the request's array
    (Rejection.line is 1-based, as files count lines)."""
    out: list[dict[str, Any]] = []
    for r in rejections:
        if len(out) == MAX_REPORTED_REJECTIONS:
            break
        out.append({"index": r.line - 1, "value": r.value, "reason": r.reason})
    return out


def message_filter(
    states: str | None, codes: str | None, allowed: Iterable[State] = ALL_STATES
) -> reports.Filter:
    """Which messages a report or a resend takes: states and DIDWW code_ids, each as
    comma-separated text (empty: any)."""
    try:
        chosen = reports.parse_states(states, allowed)
    except InputError as exc:
        raise ApiError(422, f"state: {exc}") from None
    try:
        return reports.Filter(chosen, reports.parse_codes(codes))
    except InputError:
        raise ApiError(422, f"code: whole numbers separated by commas, not {codes!r}") from None


async def stream(chunks: AsyncIterator[str], what: str) -> AsyncIterator[str]:
    """Pass the chunks on; when Redis fails mid-way, log it and cut the connection (the
    answer's status is sent already, and ending normally would pass a partial body off as
    whole)."""
    try:
        async for chunk in chunks:
            yield chunk
    except RedisError as exc:
        log.error("api_stream_cut", what=what, error=str(exc))
        raise
