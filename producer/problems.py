"""Errors a program can read: RFC 9457 problem details, each with a stable `code` from the one
table of codes below (the HTTP API's error answers and `smsq ... --json`'s errors alike).

A code's `type` is the relative URI `/v1/docs#<code>`: RFC 9457 §3.1.1 admits a relative
reference that includes the full path, and this one resolves, on whichever host serves the API,
to the row of the API's own documentation page that explains the code. An absolute URI would
have to name a host smsq does not run, which would resolve to nothing. Programs match on `code`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ledger.errors import INVALID_INPUT, InputError
from ledger.templates import TemplateError

MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "/v1/docs#"
# The offending items listed in one answer; errors_count counts them all.
MAX_ITEMS = 100
# Longer values are cut in an item, so one runaway value cannot flood the answer.
MAX_VALUE_CHARS = 40


@dataclass(frozen=True, slots=True)
class Code:
    """A problem code's HTTP status, its title (the same for every occurrence) and when it is
    given (the documentation's words)."""

    status: int
    title: str
    when: str


# Every code smsq answers, the only place one is defined; docs/api.md's table is checked
# against it (tests/unit/test_http_problems.py).
CODES: dict[str, Code] = {
    "invalid_json": Code(400, "The body is not valid JSON", "the body is not JSON or not UTF-8"),
    "invalid_idempotency_key": Code(
        400,
        "The Idempotency-Key header is malformed",
        "the `Idempotency-Key` header is not 1 to 200 printable ASCII characters",
    ),
    "incomplete_body": Code(
        400, "The body did not arrive whole", "the client closed the connection mid-body"
    ),
    "unauthorized": Code(
        401, "Missing or wrong bearer token", "no `Authorization: Bearer <token>`, or a wrong one"
    ),
    "not_found": Code(404, "No such path", "no endpoint has this path"),
    "campaign_not_found": Code(
        404,
        "No such campaign",
        "no campaign has this id (or it was purged); an id that cannot be one is not looked up",
    ),
    "webhook_not_found": Code(404, "No such webhook", "no webhook subscription has this id"),
    "message_not_found": Code(
        404,
        "No such message",
        "no message has this id (or its campaign was purged); an id that cannot be one is not "
        "looked up",
    ),
    "method_not_allowed": Code(
        405, "Method not allowed", "the path exists, but not with this method"
    ),
    "campaign_finished": Code(
        409,
        "The campaign has ended",
        "pause, resume or cancel of a campaign that is cancelled (cancelling is final) or done",
    ),
    "campaign_not_scheduled": Code(
        409,
        "The campaign is not waiting for a scheduled time",
        "reschedule of a campaign that was not created with `send_at` or has started",
    ),
    "campaign_pending": Code(
        409,
        "The campaign still has messages pending",
        "purge of a campaign with messages queued, sending or awaiting their callback (cancel "
        "it first, or wait until it is done), or with requests on the wire (try again shortly)",
    ),
    "body_too_large": Code(
        413, "The body is too large", "the body is over 16 MiB (refused as soon as it is)"
    ),
    "unsupported_media_type": Code(
        415,
        "The body must be JSON",
        "a body without `Content-Type: application/json`, where an endpoint takes one",
    ),
    "invalid_body": Code(422, "The body is not a JSON object", "the JSON is an array, text, …"),
    "unknown_field": Code(
        422,
        "Unknown field",
        "a field the endpoint does not take (a misspelt one is refused, not ignored)",
    ),
    "missing_field": Code(422, "Missing field", "a required field is not given"),
    "invalid_field": Code(
        422,
        "Invalid field",
        "a field has the wrong type or a value out of its bounds (`errors` names each one)",
    ),
    "unknown_parameter": Code(
        422, "Unknown query parameter", "a query parameter the endpoint does not take"
    ),
    "invalid_parameter": Code(
        422, "Invalid query parameter", "a query parameter's value is not one it takes"
    ),
    "invalid_number": Code(
        422,
        "Invalid phone number",
        "the source, a `{number}` or every number given is not a valid phone number "
        "(`errors` lists the rejected ones)",
    ),
    "no_valid_recipient": Code(
        422,
        "No recipient can be sent to",
        "every recipient was rejected: an invalid number, a `{field}` without a value, a text "
        "over the segment limit once filled in, no hour of the window before it expires "
        "(`errors` lists them)",
    ),
    "empty_text": Code(422, "The message text is empty", "the text is empty or only spaces"),
    "text_too_long": Code(
        422, "The message text is too long", "the text needs more than `SMSQ_MAX_SEGMENTS` segments"
    ),
    "invalid_template": Code(
        422,
        "The message template cannot be used",
        "a malformed `{field}` placeholder, or placeholders the recipients have no fields for",
    ),
    "unknown_trunk": Code(422, "Unknown trunk", "the trunk named is not configured"),
    "invalid_send_at": Code(
        422,
        "Invalid send time",
        "the send time is not ISO 8601 with a zone, is past or is over a year ahead",
    ),
    "idempotency_conflict": Code(
        422,
        "The Idempotency-Key belongs to another request",
        "the key was used within 24 hours for a different request, or its campaign was purged: "
        "use a new key (422, as the IETF Idempotency-Key draft answers a key reused for "
        "another payload)",
    ),
    "nothing_to_resend": Code(
        422, "Nothing to resend", "the campaign has no message in the chosen states"
    ),
    "invalid_filter": Code(
        422, "Invalid filter", "a list's filter is not one it takes (an unknown campaign state)"
    ),
    "invalid_limit": Code(422, "Invalid limit", "`limit` is outside what a page may hold"),
    "invalid_cursor": Code(422, "Invalid cursor", "the cursor is not one this API gave"),
    "invalid_url": Code(
        422,
        "Invalid webhook URL",
        "the webhook URL is not https://host/... (too long, with a user name or password, or "
        "a host that does not resolve)",
    ),
    "private_url": Code(
        422,
        "Private webhook URL",
        "the webhook URL's host is a loopback, private or link-local address (allowed only "
        "with `SMSQ_WEBHOOK_ALLOW_PRIVATE=true`)",
    ),
    "unknown_event_type": Code(
        422, "Unknown event type", "an event type docs/events.md does not list"
    ),
    "invalid_campaign": Code(
        422, "Invalid campaign id", "a campaign id that cannot be one (16 hex digits)"
    ),
    "invalid_input": Code(
        422, "Invalid input", "other input the producer refuses; `detail` says what and where"
    ),
    "internal_error": Code(
        500, "Internal error", "a bug or an unexpected failure; the API's log has the details"
    ),
    "configuration_error": Code(
        500, "Configuration error", "a malformed setting; `detail` names the variable"
    ),
    "redis_unavailable": Code(
        503,
        "Redis is unavailable",
        "Redis is unreachable or refused a write (full): nothing was stored, retrying is safe "
        "(with the same `Idempotency-Key` for a create); `Retry-After` says when",
    ),
}
# The code an HTTP status means when nothing more is known (Starlette's own 404 and 405).
BY_STATUS: dict[int, str] = {
    400: "invalid_json",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    422: INVALID_INPUT,
    500: "internal_error",
    503: "redis_unavailable",
}
# Codes of InputError subclasses whose raise sites name none.
_BY_CLASS: dict[type[InputError], str] = {TemplateError: "invalid_template"}


class ProblemItem(BaseModel):
    """One offending item: where it is (`field`, `parameter`, `index` in the request's array
    or `line` in a file), its value (cut to 40 characters) and why it is refused."""

    model_config = ConfigDict(extra="forbid")

    field: str | None = Field(None, description="the body's field, e.g. recipients[1].fields.name")
    parameter: str | None = Field(None, description="the query or path parameter")
    index: int | None = Field(None, description="0-based position in the request's array")
    line: int | None = Field(None, description="1-based line of a recipients file")
    value: str | int | float | bool | None = Field(None, description="the value refused")
    reason: str

    @field_validator("value", mode="before")
    @classmethod
    def _cut(cls, value: Any) -> Any:
        return cut(value)


class Problem(BaseModel):
    """RFC 9457 problem details, with smsq's `code` and the offending items."""

    model_config = ConfigDict(extra="forbid")

    type: str = Field(
        description="`/v1/docs#<code>`: where the code is documented",
        json_schema_extra={"format": "uri-reference"},
    )
    title: str = Field(description="the code's title, the same every time")
    status: int = Field(description="the HTTP status")
    detail: str = Field(description="this occurrence, in a sentence naming what is at fault")
    code: str = Field(description="stable: what a program matches on")
    errors: list[ProblemItem] = Field(
        default_factory=list, description=f"the offending items (the first {MAX_ITEMS})"
    )
    errors_count: int = Field(0, description="how many offending items there are in all")
    campaign_id: str | None = Field(
        None,
        description="a 503's campaign that Redis could not say was stored or not: check it "
        "before retrying without the Idempotency-Key",
    )

    def body(self) -> dict[str, Any]:
        """The JSON object: item members that do not apply, and campaign_id unless set, left
        out."""
        return self.model_dump(mode="json", exclude_none=True)


def cut(value: Any) -> str | int | float | bool | None:
    """An item's value: a scalar as given (a string cut to MAX_VALUE_CHARS), anything else
    left out (None)."""
    if isinstance(value, str):
        return value if len(value) <= MAX_VALUE_CHARS else value[:MAX_VALUE_CHARS] + "..."
    if isinstance(value, bool | int | float):
        return value
    return None


def problem(
    code: str,
    detail: str,
    errors: Iterable[ProblemItem | Mapping[str, Any]] = (),
    errors_count: int | None = None,
    campaign_id: str | None = None,
) -> Problem:
    """The problem of this code (KeyError for one not in CODES: a code must be defined there);
    the first MAX_ITEMS errors kept, errors_count (default: how many were given) counting all."""
    spec = CODES[code]
    items = [e if isinstance(e, ProblemItem) else ProblemItem(**e) for e in errors]
    return Problem(
        type=TYPE_PREFIX + code,
        title=spec.title,
        status=spec.status,
        detail=detail,
        code=code,
        errors=items[:MAX_ITEMS],
        errors_count=len(items) if errors_count is None else errors_count,
        campaign_id=campaign_id,
    )


def code_of(exc: InputError) -> str:
    """An InputError's code: its own, else its class's, else invalid_input (for a code the
    table lacks too, a bug tests/unit/test_http_problems.py finds, so answers stay in the
    closed set)."""
    if exc.code == INVALID_INPUT or exc.code not in CODES:
        for cls, code in _BY_CLASS.items():
            if isinstance(exc, cls):
                return code
        return INVALID_INPUT
    return exc.code


def from_input_error(
    exc: InputError, errors: Iterable[ProblemItem | Mapping[str, Any]] = ()
) -> Problem:
    """The problem an InputError is: its code and message, with these offending items."""
    return problem(code_of(exc), str(exc), errors)
