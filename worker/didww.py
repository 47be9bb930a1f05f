"""The DIDWW Outbound SMS API client: one POST, and one place that maps its outcomes to errors.

One client per trunk lives in each worker process and is reused across tasks. Requests are
httpx objects sent through web.transport.LeanTransport (httpx's own pool costs several
times the CPU per request at the rates smsq runs at: see that module), or through httpx's
standard transport when a proxy is configured for the DIDWW host (HTTPS_PROXY and friends).
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from ledger.settings import TrunkConfig
from web.transport import Exchange, LeanTransport, proxy_for
from worker.errors import (
    Ambiguous,
    AuthFailed,
    DidwwError,
    Misdirected,
    NotSent,
    RateLimited,
    Rejected,
    ServerError,
)

# The seed demands exactly this media type, without parameters.
CONTENT_TYPE = "application/vnd.api+json"
PATH = "/outbound_messages"
# Idle pooled connections are dropped before a typical server's 5 s keep-alive closes them,
# so a request is not written into a connection the server is closing (which would look
# like an ambiguous drop).
KEEPALIVE_EXPIRY_S = 2.0
# Answers that mean the request never took effect: try again.
RETRY_STATUSES = frozenset({408, 500, 503})
# Answers that say nothing about the message and everything about where it was sent (a wrong
# URL, a redirect, a proxy asking for credentials): stop the trunk, as for a 401.
MISDIRECTED_STATUSES = frozenset({403, 404, 405, 407})
# The message itself was refused.
REJECTED_STATUSES = frozenset({400, 415, 422})


def _detail(response: httpx.Response) -> str:
    """DIDWW's errors[].detail, joined; the status line when the body has none."""
    try:
        errors = response.json().get("errors") or []
        details = [
            str(e.get("detail") or e.get("title") or "") for e in errors if isinstance(e, dict)
        ]
    except (ValueError, AttributeError, TypeError):
        # TypeError: an "errors" member that is not a list, e.g. a number.
        details = []
    return "; ".join(d for d in details if d)[:300] or f"HTTP {response.status_code}"


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
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # HTTP dates are GMT, even spelt -0000 or zoneless
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _location(response: httpx.Response) -> str:
    """Where a redirect points, without credentials, query or fragment."""
    value = response.headers.get("Location", "")
    if not value:
        return ""
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL:
        return " (Location: unreadable)"
    clean = url.copy_with(userinfo=b"", query=None, fragment=None)
    return f" (Location: {clean})"


def raise_for_response(response: httpx.Response, path: str = PATH) -> str:
    """Return the message id from a 201, or raise the error the status means; path is the
    URL path posted to, named when the answer says the URL is wrong."""
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
    if 200 <= status < 300 or status < 200:
        raise Ambiguous(f"unexpected HTTP {status} instead of 201", status)
    if 300 <= status < 400 or status in MISDIRECTED_STATUSES:
        where = _location(response)
        raise Misdirected(f"HTTP {status} from POST {path}{where}: check SMSQ_DIDWW_URL", status)
    detail = _detail(response)
    if status == 401:
        raise AuthFailed(detail, status)
    if status == 429:
        raise RateLimited(detail, _retry_after_s(response))
    if status in RETRY_STATUSES:
        raise ServerError(detail, status)
    if status >= 500:
        # 502, 504 and the rest: a gateway may have passed the request on before failing.
        raise Ambiguous(f"HTTP {status}: {detail}", status)
    if status in REJECTED_STATUSES:
        raise Rejected(detail, status)
    raise Rejected(f"unexpected HTTP {status}: {detail}", status)


def map_transport_error(exc: httpx.TransportError) -> DidwwError:
    """Whether a failed request may have reached DIDWW decides retry or unknown. The text
    is the error's class only: its message may quote a header (the credentials)."""
    not_sent = (
        httpx.ConnectError,
        httpx.ConnectTimeout,
        httpx.PoolTimeout,
        httpx.ProxyError,
        httpx.UnsupportedProtocol,
        httpx.LocalProtocolError,
    )
    if isinstance(exc, not_sent):
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
    """Posts outbound messages for one trunk; safe to share between the coroutines of one
    event loop."""

    def __init__(
        self,
        trunk: TrunkConfig,
        *,
        max_connections: int,
        connect_timeout_s: float,
        read_timeout_s: float,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.trunk = trunk.name
        self.url = httpx.URL(trunk.url + PATH)
        credentials = f"{trunk.username}:{trunk.password.get_secret_value()}".encode()
        self._headers = [
            (b"Content-Type", CONTENT_TYPE.encode()),
            (b"Accept", CONTENT_TYPE.encode()),
            (b"Authorization", b"Basic " + base64.b64encode(credentials)),
        ]
        if transport is None:
            proxy = proxy_for(self.url)
            if proxy:
                transport = httpx.AsyncHTTPTransport(
                    proxy=proxy,
                    limits=httpx.Limits(max_connections=max_connections),
                )
                self._timeout: dict[str, Any] = httpx.Timeout(
                    read_timeout_s, connect=connect_timeout_s, pool=connect_timeout_s
                ).as_dict()
            else:
                transport = LeanTransport(
                    str(self.url.copy_with(path="/", query=None)),
                    max_connections=max_connections,
                    connect_timeout_s=connect_timeout_s,
                    read_timeout_s=read_timeout_s,
                    keepalive_expiry_s=KEEPALIVE_EXPIRY_S,
                )
                self._timeout = {}
        else:
            self._timeout = httpx.Timeout(
                read_timeout_s, connect=connect_timeout_s, pool=connect_timeout_s
            ).as_dict()
        self._transport = transport

    def request(self, source: str, destination: str, content: str) -> httpx.Request:
        extensions = {"timeout": self._timeout} if self._timeout else None
        return httpx.Request(
            "POST",
            self.url,
            headers=self._headers,
            content=document(source, destination, content),
            extensions=extensions,
        )

    def start(self, request: httpx.Request) -> Exchange | None:
        """Write the request now if the transport can without waiting (an idle connection);
        None otherwise. Raises NotSent if the connection turned out closed."""
        if not isinstance(self._transport, LeanTransport):
            return None
        try:
            return self._transport.start(request)
        except httpx.TransportError as exc:
            raise map_transport_error(exc) from None

    async def send(self, request: httpx.Request, exchange: Exchange | None = None) -> str:
        """POST one message (or wait for the answer to one start() wrote); returns DIDWW's id
        or raises a worker.errors.DidwwError."""
        try:
            if exchange is not None:
                response = await exchange.response()
            else:
                response = await self._transport.handle_async_request(request)
            await response.aread()
        except httpx.TransportError as exc:
            raise map_transport_error(exc) from None
        except httpx.HTTPError as exc:
            # Not a transport failure (e.g. an undecodable answer): the request was sent.
            raise Ambiguous(f"{type(exc).__name__}: the answer could not be read") from None
        return raise_for_response(response, self.url.path)

    async def probe(self) -> bool:
        """Check the credentials without sending an SMS: an empty document is a 400 if the
        credentials are good and a 401 if not. Raises Retryable when DIDWW cannot answer,
        Misdirected when the URL is wrong."""
        request = httpx.Request(
            "POST",
            self.url,
            headers=self._headers,
            content=b'{"data":{"type":"outbound_messages","attributes":{}}}',
            extensions={"timeout": self._timeout} if self._timeout else None,
        )
        try:
            await self.send(request)
        except AuthFailed:
            return False
        except Rejected:
            return True
        return True

    async def aclose(self) -> None:
        await self._transport.aclose()
