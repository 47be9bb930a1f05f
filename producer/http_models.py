"""The HTTP API's bodies as pydantic models: what each /v1 endpoint takes (validated, extra
fields refused) and answers (built through them), and what GET /v1/openapi.json describes.
docs/api.md documents the same fields.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal, NotRequired, Required

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    WithJsonSchema,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

# pydantic needs typing_extensions' TypedDict before Python 3.12.
from typing_extensions import TypedDict

from ledger.errors import InputError
from ledger.states import State
from producer.enqueue import parse_send_at
from producer.plan import MAX_NAME_CHARS, check_schedule
from producer.report import RESENDABLE
from producer.windows import parse_timezone, parse_window

# Tags of the alternatives of a union: in `loc` of an error inside one, never a field's name
# (http_common drops them when it names the field).
STRING, OBJECT, ARRAY, INTEGER, NUMBER, NULL = (
    "<string>",
    "<object>",
    "<array>",
    "<integer>",
    "<number>",
    "<null>",
)
UNION_TAGS = frozenset({STRING, OBJECT, ARRAY, INTEGER, NUMBER, NULL})


def _refused(reason: str) -> PydanticCustomError:
    # The reason goes in through the context: a message template would read its braces.
    return PydanticCustomError("invalid_value", "{reason}", {"reason": reason})


def _checked(check: Any) -> BeforeValidator:
    """A text field's value checked by one of the producer's parsers (after its type): its
    InputError becomes this field's error."""

    def validate(value: Any) -> Any:
        if isinstance(value, str):
            try:
                check(value)
            except InputError as exc:
                raise _refused(str(exc)) from None
        return value

    return BeforeValidator(validate)


def _send_time(text: str) -> None:
    check_schedule(parse_send_at(text), time.time())


def _kind(value: Any) -> str | None:
    """The JSON type of a value, as the unions below are tagged; true and false are none of
    them (Python counts a bool as an int)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        return STRING
    if isinstance(value, int):
        return INTEGER
    if isinstance(value, float):
        return NUMBER
    if isinstance(value, dict):
        return OBJECT
    if isinstance(value, list):
        return ARRAY
    if value is None:
        return NULL
    return None


def _absent(schema: dict[str, Any]) -> None:
    # An answer's optional member is left out, never null: no default to show.
    schema.pop("default", None)


def absent(description: str) -> Any:
    """A response member present only in some answers (left out of the others)."""
    return Field(None, description=description, json_schema_extra=_absent)


class _Request(BaseModel):
    # A misspelt field is refused, not ignored; "1" is no number and 1 no boolean.
    model_config = ConfigDict(extra="forbid", strict=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


SendAt = Annotated[str, _checked(_send_time)]
SEND_AT = (
    "ISO 8601 with a zone (`2026-12-24T09:00+01:00`, `…T08:00Z`), in the future, at most a "
    "year ahead"
)
FieldValue = Annotated[
    Annotated[str, Tag(STRING)]
    | Annotated[int, Tag(INTEGER)]
    | Annotated[float, Tag(NUMBER)]
    | Annotated[None, Tag(NULL)],
    Discriminator(
        _kind,
        custom_error_type="invalid_value",
        custom_error_message="must be a string, a number or null",
    ),
    # One schema: as oneOf, an integer would match both "integer" and "number".
    WithJsonSchema({"type": ["string", "number", "null"]}),
]


class Recipient(TypedDict):
    """A recipient with the values of the text's `{field}` placeholders and your own
    `reference` for its message: at most 64 characters, no control characters (else the
    recipient is rejected like a bad number); kept with the message and given back in its
    events, webhooks, report rows and lookups."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]

    destination: Required[str]
    fields: NotRequired[dict[str, FieldValue] | None]
    reference: NotRequired[str | None]


RecipientItem = Annotated[
    Annotated[str, Tag(STRING)] | Annotated[Recipient, Tag(OBJECT)],
    Discriminator(
        _kind,
        custom_error_type="invalid_value",
        custom_error_message="must be a string or an object {destination, fields, reference}",
    ),
]


# --- requests


class CampaignCreate(_Request):
    """POST /v1/campaigns: a campaign, or its preview (`dry_run`)."""

    source: str = Field(description="your DIDWW number; normalised like the destinations")
    text: str = Field(
        description="the message; `{field}` or `{field|default}` is filled from each "
        "recipient's `fields`"
    )
    destinations: list[str] | None = Field(
        None, description="the numbers (give this or `recipients`)"
    )
    recipients: list[RecipientItem] | None = Field(
        None,
        description="instead of `destinations`: numbers, or objects with the values of the "
        "text's fields",
    )
    name: Annotated[str, Field(max_length=MAX_NAME_CHARS)] | None = Field(
        None, description="a name shown by status"
    )
    ttl_s: Annotated[int, Field(ge=1)] | None = Field(
        None,
        description="seconds a message may wait to be posted (from `send_at` when given); "
        "default SMSQ_TTL_S",
    )
    priority: bool = Field(False, description="ahead of every campaign's messages")
    trunk: str | None = Field(None, description="the trunk to send through (default the first)")
    send_at: SendAt | None = Field(None, description="send at this time: " + SEND_AT)
    window: Annotated[str, _checked(parse_window)] | None = Field(
        None,
        description="quiet hours in each recipient's local time, e.g. `09:00-20:00`",
        examples=["09:00-20:00"],
    )
    timezone: Annotated[str, _checked(parse_timezone)] | None = Field(
        None, description="IANA zone for numbers whose country code tells none"
    )
    dry_run: bool = Field(False, description="check everything, answer the preview, write nothing")


StateNames = Annotated[
    Annotated[str, Tag(STRING)] | Annotated[list[str], Tag(ARRAY)],
    Discriminator(
        _kind,
        custom_error_type="invalid_value",
        custom_error_message="must be a comma-separated string or an array of state names",
    ),
    Field(
        description="comma-separated (`failed,unknown`) or an array, of: "
        + ", ".join(sorted(RESENDABLE))
    ),
]
CodeIds = Annotated[
    Annotated[str, Tag(STRING)] | Annotated[list[int], Tag(ARRAY)] | Annotated[None, Tag(NULL)],
    Discriminator(
        _kind,
        custom_error_type="invalid_value",
        custom_error_message="must be a comma-separated string or an array of whole numbers",
    ),
    Field(description="only messages with these DIDWW code_ids (`2,8` or `[2, 8]`)"),
]


class Resend(_Request):
    """POST /v1/campaigns/{id}/resend: which messages' recipients to send to again."""

    state: StateNames
    code: CodeIds = None


class Reschedule(_Request):
    """POST /v1/campaigns/{id}/reschedule: the new time."""

    send_at: SendAt = Field(description="the new time: " + SEND_AT)


class Numbers(_Request):
    """POST and DELETE /v1/optouts: numbers to add to or take off the opt-out list."""

    numbers: list[str] = Field(description="normalised like destinations; invalid ones listed")


class Inbound(_Request):
    """POST /v1/inbound: an SMS one of your numbers received, forwarded."""

    source: str = Field(description="the sender's number")
    text: str = Field(description="the message; its first word decides")


# --- query parameters (validated the same way; each value is text)


class ReportQuery(BaseModel):
    """GET /v1/campaigns/{id}/messages."""

    model_config = ConfigDict(extra="forbid")

    state: str | SkipJsonSchema[None] = Field(
        None,
        description="only messages in these states, comma-separated, or repeated",
        json_schema_extra=_absent,
    )
    code: str | SkipJsonSchema[None] = Field(
        None,
        description="only messages with these DIDWW code_ids (`2,8`)",
        json_schema_extra=_absent,
    )
    format: Literal["jsonl", "csv"] = Field(
        "jsonl", description="`jsonl`: one JSON object a line; `csv`: a header line, then rows"
    )


def _flag(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


class OptoutsQuery(BaseModel):
    """GET /v1/optouts."""

    model_config = ConfigDict(extra="forbid")

    export: Annotated[Literal["1", "true", "0", "false", ""], BeforeValidator(_flag)] = Field(
        "", description="`1` or `true`: every number, one a line, as text/plain"
    )


# --- answers


class Rejection(_Response):
    """A refused recipient or number: both its 1-based line and its 0-based index."""

    line: int = Field(description="1-based: a recipients file's line, or index + 1")
    index: int = Field(description="0-based position in the request's array (line - 1)")
    value: str = Field(description="the value, cut to 40 characters")
    reason: str


class CreatedWindow(_Response):
    window: str
    inside_now: int = Field(description="recipients inside their window now (or at send_at)")
    waiting: int = Field(description="recipients waiting for their window")
    next_open: int | None = Field(description="Unix time the next window opens")


class CampaignCreated(_Response):
    """The enqueue result: 201 (created), 200 (a repeat with the same Idempotency-Key) or 202
    (stored, not all queued yet: `note`). The same names and meanings in a dry run, the Python
    API's EnqueueResult.as_dict() and `smsq send --json` (docs/api.md "The enqueue
    result")."""

    campaign_id: str | None = Field(description="the campaign; null in a dry run")
    dry_run: bool = Field(description="true: nothing was written (a preview)")
    repeated: bool = Field(description="the Idempotency-Key found this campaign already made")
    queued: int = Field(description="messages enqueued (in a dry run: that would be)")
    rejected: int = Field(description="how many recipients were refused")
    rejections: list[Rejection] = Field(description="the refused recipients (the first 100)")
    duplicates: int = Field(description="valid numbers dropped as repeats")
    suppressed: int = Field(description="numbers on the opt-out list: stored, never sent")
    max_segments: int = Field(description="the most segments any message needs")
    total_segments: int = Field(description="the campaign's segments, all messages together")
    segments_per_message: dict[str, int] = Field(description="how many messages need each count")
    encoding: str = Field(description="GSM-7, UCS-2 or mixed")
    encodings: dict[str, int] = Field(description="how many messages need each encoding")
    longest_message: str = Field(description="the text of the message needing most segments")
    longest_segments: int
    trunk: str
    priority: bool = Field(description="the campaign takes the urgent lane")
    send_at: float | None = Field(description="Unix time, or null for now")
    duration_s: float = Field(description="time sending takes at the trunk's rate")
    window: CreatedWindow | SkipJsonSchema[None] = absent("only with quiet hours")
    note: str | SkipJsonSchema[None] = absent("only in a 202: the rest is queued by the workers")
    parent: str | SkipJsonSchema[None] = absent("only for a resend: the campaign it resends")


class CampaignPreview(CampaignCreated):
    """200 for a dry run: the enqueue result of a campaign that was not written."""

    campaign_id: None = Field(description="null: nothing was written")
    dry_run: Literal[True]


class TrunkStatus(_Response):
    name: str
    halted: bool = Field(description="DIDWW refused the credentials")
    halted_why: str | None
    backing_off: bool = Field(description="DIDWW unavailable")
    backoff_why: str | None
    parked_batches: int = Field(description="this trunk's campaigns' batches parked")
    orphan_callbacks_waiting: int = Field(
        description="callbacks this trunk's token brought for DIDWW ids not (yet) known"
    )
    claimed_per_s: float = Field(
        description="units (messages or segments) claimed in the last second"
    )
    stats: dict[str, int] = Field(description="this trunk's callback and claim counters")


class TrunkList(_Response):
    """GET /v1/trunks: every configured trunk, in the order SMSQ_TRUNKS names them."""

    trunks: list[TrunkStatus]


class StatusWindow(_Response):
    window: str
    waiting: int = Field(description="recipients whose window is closed now")
    next_open: int | None


class CampaignStatus(_Response):
    """GET /v1/campaigns/{id}: the same object as `smsq status --json`."""

    campaign_id: str
    name: str
    trunk: str
    state: Literal["scheduled", "active", "paused", "cancelled", "done"]
    total: int
    counts: dict[str, int] = Field(
        description="messages per state: " + ", ".join(str(s) for s in State)
    )
    rate_per_s: float = Field(description="posts per second over the last 10 seconds")
    done: bool = Field(description="no message queued, sending or awaiting its callback")
    created_at: float
    send_at: float | None
    expires_at: float
    done_at: float | None
    parent: str | None = Field(description="the campaign this one resends")
    priority: bool
    trunk_status: TrunkStatus
    warnings: list[str] = Field(description="what makes this Redis unsafe for the ledger")
    window: StatusWindow | SkipJsonSchema[None] = absent("only with quiet hours")


class Paused(_Response):
    campaign_id: str
    state: Literal["paused"]


class Resumed(_Response):
    campaign_id: str
    state: Literal["active"]
    batches_queued: int
    halt_lifted: bool = Field(description="a halt or backoff of the trunk was lifted")


class Cancelled(_Response):
    campaign_id: str
    state: Literal["cancelled"]
    cancelled: int = Field(description="messages cancelled now")


class Rescheduled(_Response):
    campaign_id: str
    state: Literal["scheduled"]
    send_at: float = Field(description="Unix time")


class Purged(_Response):
    campaign_id: str
    purged: Literal[True]


class MessageRow(_Response):
    """One line of GET /v1/campaigns/{id}/messages (a JSON line, or a CSV row where an empty
    cell is null)."""

    index: int
    message_id: str
    destination: str
    state: str
    didww_id: str | None
    status: str | None
    code_id: int | None
    reason: str | None = Field(description="DIDWW's code explained, for sent and failed")
    fragments: int | None
    time_start: str | None
    time_end: str | None
    attempts: int
    reference: str | None = Field(description="the recipient's reference, if it had one")


class OptoutCount(_Response):
    count: int


class OptoutsAdded(_Response):
    added: int
    already_listed: int
    rejected: int = Field(description="how many numbers were refused")
    rejections: list[Rejection] = Field(description="the refused numbers (the first 100)")


class OptoutsRemoved(_Response):
    removed: int
    not_listed: int
    rejected: int = Field(description="how many numbers were refused")
    rejections: list[Rejection] = Field(description="the refused numbers (the first 100)")


class OptoutLookup(_Response):
    number: str
    opted_out: bool


class InboundResult(_Response):
    action: Literal["opted_out", "opted_in", "none"]
    number: str
    changed: bool = Field(description="false when the number was already on (or off) the list")


class Health(_Response):
    ok: Literal[True]
