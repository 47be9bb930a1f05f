"""Validate a DIDWW `outbound_message_callbacks` document and turn it into a ledger update.

Callbacks are untrusted input: every field is checked for type and size before use.
"""

from __future__ import annotations

import json
from typing import Any

from ledger.events import message_event
from ledger.reasons import reason_for
from ledger.states import State
from ledger.store import CallbackUpdate

# DIDWW's statuses and the state each settles a message in.
FINAL_STATES = {"Success": State.SENT, "Routing Error": State.FAILED, "Failed": State.FAILED}
# Longer strings than these are not DIDWW's and are refused rather than stored.
MAX_ID_CHARS = 100
MAX_FIELD_CHARS = 64


class InvalidCallback(ValueError):
    """The body is not a valid outbound_message_callbacks document; says why."""


def _is_text(value: Any, max_chars: int) -> bool:
    """A non-empty string that fits and can be stored: JSON's \\ud800 escapes decode to lone
    surrogates, which UTF-8 cannot encode, so Redis could not take them."""
    if not isinstance(value, str) or not value or len(value) > max_chars:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _string(attrs: dict[str, Any], name: str, required: bool = True) -> str | None:
    value = attrs.get(name)
    if value is None and not required:
        return None
    if not _is_text(value, MAX_FIELD_CHARS):
        raise InvalidCallback(f"attributes.{name} must be a non-empty string")
    return value


def _integer(attrs: dict[str, Any], name: str) -> int | None:
    value = attrs.get(name)
    if value is None:
        return None
    # bool is an int in Python, but never a valid code or count here.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
        raise InvalidCallback(f"attributes.{name} must be a non-negative integer or null")
    return value


def parse(body: bytes) -> CallbackUpdate:
    """Parse and validate a callback body; raises InvalidCallback."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidCallback("body is not valid JSON") from None
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, dict):
        raise InvalidCallback("document has no data object")
    if data.get("type") != "outbound_message_callbacks":
        raise InvalidCallback("data.type must be outbound_message_callbacks")
    didww_id = data.get("id")
    if not _is_text(didww_id, MAX_ID_CHARS):
        raise InvalidCallback("data.id must be a non-empty string")
    attrs = data.get("attributes")
    if not isinstance(attrs, dict):
        raise InvalidCallback("data.attributes must be an object")
    status = attrs.get("status")
    # A list or object here is unhashable: check the type before the lookup.
    if not isinstance(status, str) or status not in FINAL_STATES:
        raise InvalidCallback(f"attributes.status must be one of {', '.join(FINAL_STATES)}")
    code_id = _integer(attrs, "code_id")
    # The seed spells the end time both ways; take whichever is present. Both are checked, so
    # a wrong type under one spelling is refused even when the other is fine.
    time_end = _string(attrs, "time_end", required=False)
    end_time = _string(attrs, "end_time", required=False)
    event = message_event(
        None,
        None,
        destination=_string(attrs, "destination") or "",
        source=_string(attrs, "source") or "",
        didww_id=didww_id,
        status=status,
        code_id=code_id,
        reason=reason_for(code_id),
        fragments_sent=_integer(attrs, "fragments_sent"),
        time_start=_string(attrs, "time_start", required=False),
        time_end=time_end or end_time,
    )
    return CallbackUpdate(didww_id=didww_id, final_state=FINAL_STATES[status], event=event)
