"""What DIDWW's callback code_id values mean: the seed's list plus codes seen in the wild.

Unknown codes pass through as numbers with reason None, so a new code never breaks ingest.
"""

from __future__ import annotations

REASONS: dict[int, str] = {
    1: "No routes found",
    2: "No rate found",
    3: "No routes found",
    4: "Internal error",
    5: "Origination gateway is blocked",
    6: "Internal error",
    7: "Origination account is blocked",
    8: "SMS source address is not allowed",
    9: "Destination is not allowed",
    10: "Campaign not found or blocked",
    11: "Campaign not found or blocked",
    100: "No balance available during TTL",
    101: "All termination attempts failed during TTL",
    102: "No encoding available",
    103: "Max balance attempts reached",
    104: "Defragmentation failed",
    105: "Routing failed",
}

SUCCESS_REASON = "Message was sent successfully"


def reason_for(code_id: int | None) -> str | None:
    """The meaning of a code_id; None for a code DIDWW has not documented."""
    if code_id is None:
        return SUCCESS_REASON
    return REASONS.get(code_id)
