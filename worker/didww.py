"""The DIDWW Outbound SMS API client: one POST, and one place that maps its outcomes to errors.

One client (one connection pool) lives per worker process and is reused across tasks.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

from ledger.settings import Settings
from worker.errors import (
    Ambiguous,
    AuthFailed,
    DidwwError,
    NotSent,
    RateLimited,
    Rejected,
    ServerError,
)

# The seed demands exactly this media type, without parameters.
CONTENT_TYPE = "application/vnd.api+json"
# Idle pooled connections are dropped before a typical server's 5 s keep-alive closes them,
# so a request is not written into a connection the server is closing (which would look
# like an ambiguous drop).
KEEPALIVE_EXPIRY_S = 2.0


def _detail(response: httpx.Response) -> str:
    """DIDWW's errors[].detail, joined; the status line when the body has none."""
    try:
        errors = response.json().get("errors") or []
        details = [str(e.get("detail") or e.get("title")) for e in errors if isinstance(e, dict)]
    except (ValueError, AttributeError, TypeError):
        # TypeError: an "errors" member that is not a list, e.g. a number.
        details = []
    return "; ".join(d for d in details if d) or f"HTTP {response.status_code}"


def _retry_after_s(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def raise_for_response(response: httpx.Response) -> str:
    """Return the message id from a 201, or raise the error the status means."""
    status = response.status_code
    if status == 201:
        try:
            message_id = response.json()["data"]["id"]
        except (ValueError, KeyError, TypeError) as exc:
            # DIDWW took the message but we cannot tell which id: treat like a lost answer.
            raise Ambiguous("201 without a readable message id", status) from exc
        # A null or empty id would index every such message under the same key.
        if isinstance(message_id, bool) or not (message_id and isinstance(message_id, str | int)):
            raise Ambiguous("201 without a readable message id", status)
        return str(message_id)
    detail = _detail(response)
    if status == 401:
        raise AuthFailed(detail, status)
    if status in (400, 415, 422):
        raise Rejected(detail, status)
    if status == 429:
        raise RateLimited(detail, _retry_after_s(response))
    if status >= 500:
        raise ServerError(detail, status)
    raise Rejected(f"unexpected HTTP {status}: {detail}", status)


def map_transport_error(exc: httpx.TransportError) -> DidwwError:
    """Whether a failed request may have reached DIDWW decides retry or unknown."""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return NotSent(f"{type(exc).__name__}: request not sent")
    if isinstance(exc, httpx.WriteError | httpx.WriteTimeout):
        # The request body was not fully written, so DIDWW cannot have acted on it.
        return NotSent(f"{type(exc).__name__}: request not fully sent")
    return Ambiguous(f"{type(exc).__name__}: no answer after the request was sent")


def document(source: str, destination: str, content: str) -> bytes:
    body = {
        "data": {
            "type": "outbound_messages",
            "attributes": {"destination": destination, "source": source, "content": content},
        }
    }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


class DidwwClient:
    """Posts outbound messages; safe to share between the coroutines of one event loop."""

    def __init__(self, settings: Settings, transport: httpx.AsyncBaseTransport | None = None):
        timeout = httpx.Timeout(
            settings.read_timeout_s,
            connect=settings.connect_timeout_s,
            pool=settings.connect_timeout_s,
        )
        limits = httpx.Limits(
            max_connections=settings.concurrency,
            max_keepalive_connections=settings.concurrency,
            keepalive_expiry=KEEPALIVE_EXPIRY_S,
        )
        self._http = httpx.AsyncClient(
            base_url=settings.didww_url,
            auth=httpx.BasicAuth(
                settings.didww_username, settings.didww_password.get_secret_value()
            ),
            headers={"Content-Type": CONTENT_TYPE, "Accept": CONTENT_TYPE},
            timeout=timeout,
            limits=limits,
            transport=transport,
        )

    async def send(self, source: str, destination: str, content: str) -> str:
        """POST one message; returns DIDWW's id or raises a worker.errors.DidwwError."""
        return await self._post(document(source, destination, content))

    async def probe(self) -> bool:
        """Check the credentials without sending an SMS: an empty document is a 400 if the
        credentials are good and a 401 if not. Raises Retryable when DIDWW cannot answer."""
        try:
            await self._post(b'{"data":{"type":"outbound_messages","attributes":{}}}')
        except AuthFailed:
            return False
        except Rejected:
            return True
        return True

    async def _post(self, body: bytes) -> str:
        try:
            response = await self._http.post("/outbound_messages", content=body)
        except httpx.TransportError as exc:
            raise map_transport_error(exc) from None
        except httpx.HTTPError as exc:
            # Not a transport failure (e.g. an undecodable answer): the request was sent.
            raise Ambiguous(f"{type(exc).__name__}: the answer could not be read") from None
        return raise_for_response(response)

    async def aclose(self) -> None:
        await self._http.aclose()
