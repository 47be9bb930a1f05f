"""What the HTTP API's handlers share (producer/http.py wires them up): the error they raise
and how every failure becomes a problem-details answer, the app's state, and readers for JSON
bodies (validated by producer/http_models.py), query and path parameters and headers.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from kombu.exceptions import OperationalError
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ledger import keys
from ledger.errors import INVALID_INPUT, ConfigError, InputError, SmsqError
from ledger.states import ALL_STATES, State
from ledger.store import Ledger
from producer import problems
from producer import report as reports
from producer.enqueue import Producer
from producer.http_models import UNION_TAGS
from producer.problems import Problem, ProblemItem
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
# Clients that see 503 may try again after this many seconds.
RETRY_AFTER_S = 5

Model = TypeVar("Model", bound=BaseModel)


class ApiError(Exception):
    """An answer other than success: a problem (producer/problems.py) of this code, with its
    detail and the offending items. A status instead of a code (the dashboard's calls) takes
    the code that status means by itself."""

    def __init__(
        self,
        code: str | int,
        detail: str,
        *,
        errors: Iterable[ProblemItem | Mapping[str, Any]] = (),
        errors_count: int | None = None,
        campaign_id: str | None = None,
    ) -> None:
        super().__init__(detail)
        if isinstance(code, int):
            code = problems.BY_STATUS[code]
        self.problem = problems.problem(code, detail, list(errors), errors_count, campaign_id)

    @property
    def status(self) -> int:
        return self.problem.status

    @property
    def code(self) -> str:
        return self.problem.code


def refused(
    name: str,
    reason: str,
    value: Any = None,
    *,
    code: str = "invalid_field",
    parameter: bool = False,
) -> ApiError:
    """One field's (or query or path parameter's) value refused, for this reason."""
    item = {"parameter" if parameter else "field": name, "value": problems.cut(value)}
    return ApiError(code, f"{name}: {reason}", errors=[{**item, "reason": reason}])


def coded(exc: InputError, default: str) -> ApiError:
    """An InputError as the problem of its own code, or of `default` where it names none."""
    code = problems.code_of(exc)
    return ApiError(default if code == INVALID_INPUT else code, str(exc))


def not_found(cid: str) -> ApiError:
    return ApiError("campaign_not_found", f"no campaign {cid!r}")


@dataclass
class Api:
    """What the handlers share: the ledger (async Redis) and the producer (sync, threads)."""

    ledger: Ledger
    producer: Producer


Handler = Callable[[Request, Api], Awaitable[Response]]


def failure(exc: Exception, path: str) -> ApiError:
    """The ApiError an exception a handler raised is, logged where it needs looking into;
    anything else (a bug) is raised again for the app's handler of 500s."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, RedisError | OperationalError):
        # Nothing was stored (a campaign stored but not all queued is a 202): a retry, with
        # the same Idempotency-Key for a create, is safe.
        log.error("api_redis_unavailable", path=path, error=str(exc))
        return ApiError("redis_unavailable", "Redis is unavailable; try again later")
    if isinstance(exc, InputError):
        return ApiError(problems.code_of(exc), str(exc))
    if isinstance(exc, ConfigError):
        log.error("api_configuration_error", path=path, error=str(exc))
        return ApiError("configuration_error", f"configuration error: {exc}")
    if isinstance(exc, SmsqError):
        log.error("api_failed", path=path, error=str(exc))
        return ApiError("internal_error", str(exc))
    raise exc


def problem_response(problem: Problem, headers: Mapping[str, str] | None = None) -> Response:
    """A problem as its application/problem+json answer (503s with Retry-After). ASCII JSON:
    a value echoed from the request may hold text UTF-8 cannot encode (a lone surrogate)."""
    extra = {"Retry-After": str(RETRY_AFTER_S)} if problem.status == 503 else {}
    return Response(
        json.dumps(problem.body(), separators=(",", ":")),
        status_code=problem.status,
        headers={**extra, **(headers or {})},
        media_type=problems.MEDIA_TYPE,
    )


async def answer_problem(handler: Handler, request: Request) -> Response:
    """Run an endpoint's handler; every failure is a problem-details answer."""
    try:
        return await handler(request, request.app.state.api)
    except Exception as exc:
        return problem_response(failure(exc, request.url.path).problem)


async def answer(handler: Handler, request: Request, error: Callable[..., Response]) -> Response:
    """Run a handler, every failure answered by error(status, detail): the dashboard's
    answers (producer/dashboard.py), which keep their own shape."""
    try:
        return await handler(request, request.app.state.api)
    except Exception as exc:
        found = failure(exc, request.url.path).problem
        return error(found.status, found.detail)


def reply(
    model: type[BaseModel], body: Mapping[str, Any], status: int = 200, **kw: Any
) -> Response:
    """A success answer built through its model (members it leaves out stay out)."""
    content = model.model_validate(body).model_dump(mode="json", exclude_unset=True)
    return JSONResponse(content, status_code=status, **kw)


async def read_json(request: Request) -> Any:
    """The request's body as a JSON object: 415 for another media type, 413 past
    MAX_BODY_BYTES (refused as soon as it is), 400 for invalid JSON, 422 for a non-object."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != JSON_MEDIA_TYPE:
        raise ApiError("unsupported_media_type", f"the Content-Type must be {JSON_MEDIA_TYPE}")
    try:
        body = await read_limited(request, MAX_BODY_BYTES)
    except BodyTooLarge:
        raise ApiError("body_too_large", f"the body is over {MAX_BODY_BYTES} bytes") from None
    except ClientGone:
        # Nobody is there to read it: any answer does (read_limited logged it).
        raise ApiError("incomplete_body", "the body did not arrive whole") from None
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ApiError("invalid_json", f"the body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ApiError("invalid_body", "the body must be a JSON object")
    return doc


async def read_body(request: Request, model: type[Model]) -> Model:
    """The request's JSON body, validated by its model."""
    return validated(model, await read_json(request))


def read_query(request: Request, model: type[Model]) -> Model:
    """The query parameters, validated by their model; a repeated one's values are joined
    by commas (state=failed&state=unknown is state=failed,unknown)."""
    query = request.query_params
    values = {name: ",".join(query.getlist(name)) for name in query}
    return validated(model, values, query=True)


def validated(model: type[Model], doc: Any, *, query: bool = False) -> Model:
    """`doc` as a `model`; 422 naming every offending field or parameter otherwise."""
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        raise _invalid(model, exc.errors(include_url=False), query) from None


# What a validation error's type says, as its reason (pydantic's message otherwise).
_REASONS = {
    "missing": "required",
    "extra_forbidden": "unknown field",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "int_type": "must be a whole number",
    "float_type": "must be a number",
    "list_type": "must be an array",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "greater_than_equal": "must be at least {ge}",
    "string_too_long": "must be at most {max_length} characters",
    "string_unicode": "must be valid UTF-8 text",
    "literal_error": "must be {expected}",
}


def _where(loc: tuple[int | str, ...]) -> str:
    """A location as the request writes it: recipients[1].fields.name."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in UNION_TAGS:
            out += f".{part}" if out else part
    return out


def _reason(error: ErrorDetails) -> str:
    template = _REASONS.get(error["type"])
    if template is None:
        return error["msg"]
    return template.format(**error.get("ctx", {}))


def _invalid(model: type[BaseModel], errors: list[ErrorDetails], query: bool) -> ApiError:
    """The problem a model's validation errors are, every one an item; the code and detail
    from the first unknown name (its value was not checked), else the first missing one,
    else the first wrong value."""
    key, noun = ("parameter", "query parameter") if query else ("field", "field")
    items = []
    for e in errors:
        item = {key: _where(e["loc"]), "reason": _reason(e)}
        if e["type"] != "missing":  # its input is the object it is missing from
            item["value"] = problems.cut(e.get("input"))
        items.append(item)
    order = {"extra_forbidden": 0, "missing": 1}
    first = min(errors, key=lambda e: order.get(e["type"], 2))
    where = _where(first["loc"])
    if first["type"] == "extra_forbidden":
        code = f"unknown_{key}"
        detail = f"unknown {noun} {where!r}"
        if len(first["loc"]) == 1:
            detail += f" (the {key}s are {', '.join(model.model_fields)})"
    else:
        code = "missing_field" if first["type"] == "missing" else f"invalid_{key}"
        detail = f"{where}: {_reason(first)}" if where else _reason(first)
    return ApiError(code, detail, errors=items)


def campaign_id(request: Request) -> str:
    cid = str(request.path_params["cid"])
    if not CAMPAIGN_ID.fullmatch(cid):
        raise not_found(cid)
    return cid


def idempotency_key(request: Request) -> str | None:
    """The Idempotency-Key header: 1 to 200 printable ASCII characters, or none."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not IDEMPOTENCY_KEY.fullmatch(key) or not key.strip():
        raise ApiError(
            "invalid_idempotency_key",
            "the Idempotency-Key header must be 1 to 200 printable ASCII characters",
        )
    return key


def message_filter(
    states: str | None,
    codes: str | None,
    allowed: Iterable[State] = ALL_STATES,
    *,
    parameter: bool = True,
) -> reports.Filter:
    """Which messages a report (query parameters) or a resend (body fields) takes: states
    and DIDWW code_ids, each as comma-separated text (empty: any)."""
    code = "invalid_parameter" if parameter else "invalid_field"
    try:
        chosen = reports.parse_states(states, allowed)
    except InputError as exc:
        raise refused("state", str(exc), states, code=code, parameter=parameter) from None
    try:
        return reports.Filter(chosen, reports.parse_codes(codes))
    except InputError:
        reason = f"whole numbers separated by commas, not {codes!r}"
        raise refused("code", reason, codes, code=code, parameter=parameter) from None


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
