"""Standard Webhooks signatures (https://www.standardwebhooks.com): HMAC-SHA256 over
``{webhook-id}.{webhook-timestamp}.{body}`` with the secret's bytes (base64 after ``whsec_``),
sent as ``webhook-signature: v1,<base64>``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence

SECRET_PREFIX = "whsec_"
# How far a webhook-timestamp may be from the receiver's clock: the specification's example.
TOLERANCE_S = 5 * 60


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The webhook-signature header's value for one attempt."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    mac = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def headers(
    secrets: str | Sequence[str], msg_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt (timestamp: now); with several
    secrets (a rotation's grace period), one signature each, space-separated."""
    ts = int(time.time()) if timestamp is None else timestamp
    keys = [secrets] if isinstance(secrets, str) else secrets
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": " ".join(signature(k, msg_id, ts, body) for k in keys),
    }


def verify(secret: str, received: Mapping[str, str], body: bytes, now: float | None = None) -> bool:
    """Whether a request carries a valid signature of body by secret, made within TOLERANCE_S
    of now: what a receiver does, here for smsq's own tests and docs/webhooks.md."""
    try:
        msg_id = received["webhook-id"]
        ts = int(received["webhook-timestamp"])
        offered = received["webhook-signature"].split()
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - ts) > TOLERANCE_S:
        return False
    expected = signature(secret, msg_id, ts, body)
    return any(hmac.compare_digest(expected, s) for s in offered)
