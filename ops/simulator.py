"""A stand-in for the DIDWW Outbound SMS API with faults, latency, drops and status callbacks.

Speaks HTTP/1.1 itself on asyncio streams (not ASGI) so it can close a connection unanswered.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import dataclasses
import functools
import hmac
import json
import logging
import math
import random
import re
import signal
import ssl
import sys
import threading
import time
import uuid
from array import array
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, NamedTuple, NoReturn, TypeVar
from urllib.parse import parse_qs, urlsplit

logger = logging.getLogger(__name__)
T = TypeVar("T")

# The only request media type DIDWW accepts; any parameter (charset=...) is answered 415.
JSONAPI_MEDIA_TYPE = "application/vnd.api+json"
# Benchmarks open hundreds of connections at once; a small listen backlog stalls them for seconds.
LISTEN_BACKLOG = 4096
# Far above any SMS document; bigger bodies are refused before they are buffered whole.
MAX_BODY_BYTES = 1 << 20
# Request line plus headers; API clients send well under 1 KiB.
MAX_HEADER_BYTES = 16 * 1024

# Credentials the library and CLI use when none are given; tests pass them to their clients.
DEFAULT_USERNAME = "smsq"
DEFAULT_PASSWORD = "secret"
# A handset's delivery report usually follows acceptance within a fraction of a second.
DEFAULT_CALLBACK_DELAY_MS = 200.0
# A 429 asks the client to wait this long unless configured otherwise: the shortest honest value.
DEFAULT_RETRY_AFTER_S = 1
# The CLI's port when none is given; the library binds a free port (0) by default instead.
DEFAULT_CLI_PORT = 8900
# Parallel callback POSTs, one connection each: 1,000 callbacks/s even to a receiver taking
# 10 ms per callback, without opening more connections than a small ingester accepts at once.
CALLBACK_CONCURRENCY = 16
# Delivery attempts per callback, the first included, on connection errors and 5xx.
CALLBACK_ATTEMPTS = 4
# First retry delay, doubled per attempt: a receiver restarting within a second is ridden out.
CALLBACK_BACKOFF_S = 0.1
# A receiver slower than this is treated like one that is down.
CALLBACK_TIMEOUT_S = 5.0
# Distinct sources and texts shared between records; a campaign repeats one text a million times.
INTERN_LIMIT = 10_000

# One SMS carries 160 GSM-7 septets or 70 UTF-16 units; split parts lose 7 and 3 to the header.
_GSM7_SINGLE_UNITS, _GSM7_PART_UNITS = 160, 153
_UCS2_SINGLE_UNITS, _UCS2_PART_UNITS = 70, 67
# 3GPP TS 23.038 default alphabet without 0x1B, which escapes into the extension table.
_GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")
_GSM7_ALL = _GSM7_BASIC | _GSM7_EXTENSION

END_TIME_KEYS = ("end_time", "time_end", "random")
_RATIO_FIELDS = (
    "fail_5xx",
    "fail_429",
    "drop_before",
    "drop_after",
    "callback_failure_ratio",
    "callback_duplicate_ratio",
)
_MS_FIELDS = ("latency_ms", "latency_jitter_ms", "callback_delay_ms")
# Settings bound when the simulator starts; POST /_sim/config refuses them.
_STARTUP_FIELDS = frozenset({"host", "port", "seed", "callback_concurrency"})

# Request outcomes that are not status codes, stored as negative codes in a compact array.
_DROP_BEFORE, _DROP_AFTER = -1, -2
_OUTCOME_NAMES = {_DROP_BEFORE: "drop_before", _DROP_AFTER: "drop_after"}
_DIGITS = re.compile(r"[0-9]+")


@dataclasses.dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """Everything the simulator does; ratios are fractions of valid requests (0 to 1).

    Fault ratios take precedence in the order drop_before, fail_5xx, fail_429, drop_after: if
    they add up to more than 1, the later ones get what is left. Invalid values raise ValueError.
    """

    host: str = "127.0.0.1"
    port: int = 0
    username: str = DEFAULT_USERNAME
    password: str = DEFAULT_PASSWORD
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    fail_5xx: float = 0.0
    fail_429: float = 0.0
    retry_after_s: int = DEFAULT_RETRY_AFTER_S
    drop_before: float = 0.0
    drop_after: float = 0.0
    # An outage: every API request gets 503 before it is even read, as from a load balancer
    # in front of a service that is down (the fault ratios above apply to valid requests).
    outage: bool = False
    callback_url: str | None = None
    callback_delay_ms: float = DEFAULT_CALLBACK_DELAY_MS
    callback_failure_ratio: float = 0.0
    callback_duplicate_ratio: float = 0.0
    # A callback the receiver refuses (5xx, or no connection) is tried this many times in
    # all, waiting callback_backoff_s, then twice that, and so on, between tries.
    callback_attempts: int = CALLBACK_ATTEMPTS
    callback_backoff_s: float = CALLBACK_BACKOFF_S
    end_time_key: str = "end_time"
    # Keep every delivered callback's document for GET /_sim/callbacks (tests compare events
    # with them); off by default because a million of them cost hundreds of MB.
    record_callbacks: bool = False
    seed: int | None = None
    callback_concurrency: int = CALLBACK_CONCURRENCY

    def __post_init__(self) -> None:
        for name in ("host", "username", "password"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string")
        for name in ("outage", "record_callbacks"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false")
        for name in ("port", "retry_after_s", "callback_concurrency", "callback_attempts"):
            if not _is_int(getattr(self, name)):
                raise ValueError(f"{name} must be an integer")
        if self.seed is not None and not _is_int(self.seed):
            raise ValueError("seed must be an integer or null")
        for name in _MS_FIELDS + _RATIO_FIELDS:
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                raise ValueError(f"{name} must be a non-negative number")
        for name in _RATIO_FIELDS:
            if getattr(self, name) > 1:
                raise ValueError(f"{name} must be between 0 and 1")
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be between 0 and 65535")
        if self.retry_after_s < 0:
            raise ValueError("retry_after_s must not be negative")
        if self.callback_attempts < 1:
            raise ValueError("callback_attempts must be at least 1")
        if not _is_number(self.callback_backoff_s) or self.callback_backoff_s < 0:
            raise ValueError("callback_backoff_s must be a non-negative number")
        if self.callback_concurrency < 1:
            raise ValueError("callback_concurrency must be at least 1")
        if self.end_time_key not in END_TIME_KEYS:
            raise ValueError(f"end_time_key must be one of {', '.join(END_TIME_KEYS)}")
        if self.callback_url is not None and not (
            isinstance(self.callback_url, str)
            and self.callback_url.startswith(("http://", "https://"))
        ):
            raise ValueError("callback_url must be an http:// or https:// URL or null")


class MessageRecord(NamedTuple):
    """One accepted message; a tuple (about 280 bytes with its strings), not a dict."""

    id: str
    destination: str
    source: str
    content: str
    arrived_at: float
    dropped_after: bool


class _Answer(NamedTuple):
    status: int
    body: bytes
    content_type: bytes = JSONAPI_MEDIA_TYPE.encode()
    headers: tuple[tuple[bytes, bytes], ...] = ()


@dataclasses.dataclass(slots=True)
class _Callback:
    url: str
    generation: int
    record: MessageRecord
    status: str
    code_id: int | None
    end_time_key: str
    duplicate: bool
    body: bytes = b""
    attempt: int = 1
    recorded: bool = False


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _errors_body(status: int, title: str, detail: str) -> bytes:
    error = {"title": title, "detail": detail, "code": str(status), "status": str(status)}
    return json.dumps({"errors": [error]}).encode()


def _error(status: int, title: str, detail: str, *headers: tuple[bytes, bytes]) -> _Answer:
    return _Answer(status, _errors_body(status, title, detail), headers=headers)


def _json(value: Any, status: int = 200) -> _Answer:
    return _Answer(status, json.dumps(value).encode(), b"application/json")


# Built once: these answers never vary, and the 401 body is the seed's, word for word.
_UNAUTHORIZED = _error(
    401, "Unauthorized", "Authorization failed", (b"www-authenticate", b'Basic realm="DIDWW"')
)
_UNSUPPORTED_MEDIA_TYPE = _error(
    415, "Unsupported Media Type", f"Content-Type must be {JSONAPI_MEDIA_TYPE} without parameters"
)
_SERVICE_UNAVAILABLE = _error(503, "Service Unavailable", "Temporary failure, try again later")
_NOT_FOUND = _error(404, "Not Found", "No such endpoint")


def _fragments(content: str) -> int:
    """Count the SMS parts of `content`; like real encoders, no character straddles two parts."""
    if _GSM7_ALL.issuperset(content):
        sizes = [2 if char in _GSM7_EXTENSION else 1 for char in content]
        single, per_part = _GSM7_SINGLE_UNITS, _GSM7_PART_UNITS
    else:
        sizes = [2 if ord(char) > 0xFFFF else 1 for char in content]
        single, per_part = _UCS2_SINGLE_UNITS, _UCS2_PART_UNITS
    if sum(sizes) <= single:
        return 1
    parts, used = 1, 0
    for size in sizes:
        if used + size > per_part:
            parts, used = parts + 1, 0
        used += size
    return parts


def _iso(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_message(body: bytes) -> tuple[str, str, str] | str:
    """Return (destination, source, content), or the detail of a 400 when the document is bad."""
    try:
        document = json.loads(body)
    except ValueError:
        return "Request body is not valid JSON"
    if not isinstance(document, dict):
        return "Request document must be a JSON object"
    data = document.get("data")
    if not isinstance(data, dict):
        return "Request document must have a data object"
    if data.get("type") != "outbound_messages":
        return 'data.type must be "outbound_messages"'
    attributes = data.get("attributes")
    if not isinstance(attributes, dict):
        return "data.attributes must be an object"
    values: list[str] = []
    for name in ("destination", "source", "content"):
        value = attributes.get(name)
        if value is None:
            return f"data.attributes.{name} is required"
        if not isinstance(value, str) or not value:
            return f"data.attributes.{name} must be a non-empty string"
        if name != "content" and not _DIGITS.fullmatch(value):
            return f"data.attributes.{name} must be digits only (E.164 without a leading +)"
        values.append(value)
    return values[0], values[1], values[2]


class _Request(NamedTuple):
    method: bytes
    target: bytes
    headers: dict[bytes, bytes]
    body: bytes
    arrived_at: float
    keep_alive: bool
    http10: bool


class _HttpError(Exception):
    """A message that cannot be read; a request is answered with `status`, then closed."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


# HTTP/1.1 is hand-written both ways. Measured on 2 cores: h11 costs 56 us per request against
# 3 us; httpx.AsyncClient costs 850 us of CPU per callback POST (1.8 ms with 16 connections), so
# 1,000 callbacks/s saturated the core the API answers need, while this client costs about 130 us
# with its system calls (1,200 requests/s plus 1,260 callbacks/s used 36% of one core).
async def _read_head(reader: asyncio.StreamReader) -> tuple[bytes, dict[bytes, bytes]] | None:
    """Read a start line and its header fields; None when the peer closed before sending one."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise _HttpError(400, "Connection closed in the middle of a message head") from None
        return None
    except asyncio.LimitOverrunError:
        raise _HttpError(431, "Message head is too large") from None
    # RFC 9112 asks servers to ignore empty lines sent before a request line.
    lines = head.lstrip(b"\r\n").split(b"\r\n")[:-2]
    if not lines:
        return None
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name[-1:] in (b" ", b"\t") or line[:1] in (b" ", b"\t"):
            raise _HttpError(400, "Malformed header line")
        name, value = name.lower(), value.strip(b" \t")
        headers[name] = headers[name] + b", " + value if name in headers else value
    return lines[0], headers


async def _read_body(
    reader: asyncio.StreamReader, headers: dict[bytes, bytes], *, until_close: bool
) -> bytes:
    """Read a body framed by Content-Length or chunks, or else (responses only) by the close."""
    transfer_encoding = headers.get(b"transfer-encoding")
    if transfer_encoding is not None:
        if transfer_encoding.lower() != b"chunked":
            raise _HttpError(501, "Only the chunked transfer coding is supported")
        return await _read_chunked(reader)
    length = headers.get(b"content-length")
    if length is None and until_close:
        body = bytearray()
        while chunk := await reader.read(MAX_BODY_BYTES):
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise _HttpError(413, "Body is too large")
        return bytes(body)
    length = length or b"0"
    if not length.isdigit():
        raise _HttpError(400, "Invalid Content-Length")
    if int(length) > MAX_BODY_BYTES:
        raise _HttpError(413, "Body is too large")
    return await reader.readexactly(int(length))


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        try:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip(), 16)
        except (asyncio.LimitOverrunError, ValueError):
            raise _HttpError(400, "Malformed chunk size") from None
        if size == 0:
            break
        if len(body) + size > MAX_BODY_BYTES:
            raise _HttpError(413, "Body is too large")
        chunk = await reader.readexactly(size + 2)
        if chunk[-2:] != b"\r\n":
            raise _HttpError(400, "Malformed chunk")
        body += chunk[:-2]
    try:
        # Trailer fields carry nothing the simulator uses; read up to the blank line.
        while await reader.readuntil(b"\r\n") != b"\r\n":
            pass
    except asyncio.LimitOverrunError:
        raise _HttpError(400, "Trailer is too large") from None
    return bytes(body)


async def _read_request(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> _Request | None:
    """Read one request; None when the client closed the connection between requests."""
    head = await _read_head(reader)
    if head is None:
        return None
    arrived_at = time.time()
    start_line, headers = head
    parts = start_line.split(b" ")
    if len(parts) != 3 or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise _HttpError(400, "Malformed request line")
    method, target, version = parts
    http10 = version == b"HTTP/1.0"
    connection = headers.get(b"connection", b"").lower()
    keep_alive = b"keep-alive" in connection if http10 else b"close" not in connection
    if headers.get(b"expect", b"").lower() == b"100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    body = await _read_body(reader, headers, until_close=False)
    return _Request(method, target, headers, body, arrived_at, keep_alive, http10)


_STATUS_LINES = {
    status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n".encode() for status in HTTPStatus
}


def _response_bytes(answer: _Answer, keep_alive: bool, http10: bool) -> bytes:
    parts = [
        _STATUS_LINES[answer.status],
        b"content-type: %s\r\ncontent-length: %d\r\nserver: smsq-simulator\r\n"
        % (answer.content_type, len(answer.body)),
    ]
    parts.extend(b"%s: %s\r\n" % header for header in answer.headers)
    if not keep_alive:
        parts.append(b"connection: close\r\n")
    elif http10:
        parts.append(b"connection: keep-alive\r\n")
    parts.append(b"\r\n")
    parts.append(answer.body)
    return b"".join(parts)


class _Target(NamedTuple):
    """Where a callback URL points: what to connect to and what to put in the request head."""

    https: bool
    host: str
    port: int
    host_header: bytes
    path: bytes


@functools.lru_cache(maxsize=16)
def _target(url: str) -> _Target:
    parts = urlsplit(url)
    https = parts.scheme == "https"
    if not parts.hostname:
        raise _HttpError(400, f"Callback URL has no host: {url}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return _Target(
        https,
        parts.hostname,
        parts.port or (443 if https else 80),
        parts.netloc.rpartition("@")[2].encode("idna"),
        path.encode(),
    )


class _Connection(NamedTuple):
    target: _Target
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


async def _post(
    connection: _Connection | None, url: str, body: bytes
) -> tuple[int, _Connection | None]:
    """POST `body` to `url`, reusing `connection` if it fits; returns the status and the
    connection to keep (None once it is closed). Raises OSError, _HttpError or IncompleteReadError.
    """
    target = _target(url)
    request = (
        b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n"
        b"user-agent: smsq-simulator\r\n\r\n%s"
        % (target.path, target.host_header, JSONAPI_MEDIA_TYPE.encode(), len(body), body)
    )
    while True:
        reused = (
            connection is not None
            and connection.target == target
            and not connection.reader.at_eof()
        )
        if not reused:
            if connection is not None:
                connection.writer.close()
            reader, writer = await asyncio.open_connection(
                target.host,
                target.port,
                ssl=_tls_context() if target.https else None,
                limit=MAX_HEADER_BYTES,
            )
            connection = _Connection(target, reader, writer)
        assert connection is not None
        connection.writer.write(request)
        try:
            status, keep_alive = await _read_response(connection.reader)
        except (ConnectionError, asyncio.IncompleteReadError):
            connection.writer.close()
            connection = None
            if reused:
                # The receiver closed an idle keep-alive connection just as it was reused.
                continue
            raise
        if not keep_alive:
            connection.writer.close()
            return status, None
        return status, connection


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response; returns its status and whether the connection can be reused."""
    while True:
        head = await _read_head(reader)
        if head is None:
            raise ConnectionResetError("the receiver closed the connection without answering")
        start_line, headers = head
        parts = start_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise _HttpError(502, "Malformed status line")
        status = int(parts[1])
        if status >= 200:
            break
    framed = status in (204, 304) or b"content-length" in headers or b"transfer-encoding" in headers
    if status not in (204, 304):
        await _read_body(reader, headers, until_close=not framed)
    connection = headers.get(b"connection", b"").lower()
    return status, framed and parts[0] == b"HTTP/1.1" and b"close" not in connection


@functools.cache
def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()


class Simulator:
    """The simulated API on one listening socket; start() and stop() run in the caller's loop."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self._config = config or SimulatorConfig()
        self._credentials = self._credentials_of(self._config)
        seed = self._config.seed
        # Callback choices draw from their own stream so turning callbacks on does not change
        # which requests fail.
        self._rng = random.Random(seed)
        self._callback_rng = random.Random(None if seed is None else f"{seed}/callbacks")
        self._messages: list[MessageRecord] = []
        self._arrived_at = array("d")
        self._outcomes = array("h")
        self._outcome_counts: Counter[int] = Counter()
        self._interned: dict[str, str] = {}
        self._generation = 0
        self._callbacks_pending = 0
        self._callbacks_delivered = 0
        self._callbacks_retried = 0
        self._callbacks_failed = 0
        self._delivered_documents: list[bytes] = []
        self._connections: set[asyncio.Task[None]] = set()
        self._connections_total = 0
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[_Callback] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._url: str | None = None

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def config(self) -> SimulatorConfig:
        return self._config

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:8900, once started."""
        if self._url is None:
            raise RuntimeError("the simulator has not been started")
        return self._url

    @property
    def messages(self) -> list[MessageRecord]:
        """Accepted messages (201 and drop_after) in the order they were accepted."""
        return self._messages

    @property
    def requests(self) -> list[tuple[float, int | str]]:
        """(arrived_at, status code or "drop_before"/"drop_after") for each API request."""
        return [
            (arrived_at, _OUTCOME_NAMES.get(code, code))
            for arrived_at, code in zip(self._arrived_at, self._outcomes, strict=False)
        ]

    def requests_per_second(self) -> dict[int, int]:
        """API requests by the whole second (Unix time) in which their headers arrived."""
        return dict(sorted(Counter(int(arrived_at) for arrived_at in self._arrived_at).items()))

    @property
    def stats(self) -> dict[str, Any]:
        by_outcome = {
            str(_OUTCOME_NAMES.get(code, code)): count
            for code, count in sorted(self._outcome_counts.items())
        }
        return {
            "requests": len(self._outcomes),
            "by_outcome": by_outcome,
            "accepted": len(self._messages),
            "callbacks_pending": self._callbacks_pending,
            "callbacks_delivered": self._callbacks_delivered,
            "callbacks_retried": self._callbacks_retried,
            "callbacks_failed": self._callbacks_failed,
            "connections_open": len(self._connections),
            "connections_total": self._connections_total,
        }

    def configure(self, **changes: Any) -> SimulatorConfig:
        """Change settings while running; raises ValueError for unknown or invalid ones."""
        known = {field.name for field in dataclasses.fields(SimulatorConfig)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown setting(s): {', '.join(unknown)}")
        fixed = sorted(set(changes) & _STARTUP_FIELDS)
        if fixed:
            raise ValueError(f"cannot change while running: {', '.join(fixed)}")
        config = dataclasses.replace(self._config, **changes)
        # Both are read per request; each assignment is atomic, and a request sees one or the other.
        self._credentials = self._credentials_of(config)
        self._config = config
        return config

    def reset(self) -> None:
        """Forget every record and counter; callbacks not yet delivered are dropped too."""
        self._messages = []
        self._arrived_at = array("d")
        self._outcomes = array("h")
        self._outcome_counts = Counter()
        self._interned = {}
        self._generation += 1
        self._callbacks_pending = 0
        self._callbacks_delivered = 0
        self._callbacks_retried = 0
        self._callbacks_failed = 0
        self._delivered_documents = []

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the simulator is already running")
        config = self._config
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self._server = await asyncio.start_server(
            self._serve_connection,
            config.host,
            config.port,
            backlog=LISTEN_BACKLOG,
            limit=MAX_HEADER_BYTES,
        )
        port = self._server.sockets[0].getsockname()[1]
        host = f"[{config.host}]" if ":" in config.host else config.host
        self._url = f"http://{host}:{port}"
        self._workers = [
            asyncio.create_task(self._deliver_callbacks(), name=f"simulator-callbacks-{n}")
            for n in range(config.callback_concurrency)
        ]
        logger.info(
            "simulator_started url=%s latency_ms=%s jitter_ms=%s fail_5xx=%s fail_429=%s "
            "drop_before=%s drop_after=%s callback_url=%s",
            self._url,
            config.latency_ms,
            config.latency_jitter_ms,
            config.fail_5xx,
            config.fail_429,
            config.drop_before,
            config.drop_after,
            config.callback_url,
        )

    async def stop(self) -> None:
        """Close the socket, cut open connections and drop callbacks not yet delivered."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        self._generation += 1
        tasks = [*self._connections, *self._workers]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._workers = []
        await server.wait_closed()
        # Let the closed transports run their last callbacks before a caller closes the loop.
        await asyncio.sleep(0)
        logger.info("simulator_stopped url=%s", self._url)

    @staticmethod
    def _credentials_of(config: SimulatorConfig) -> bytes:
        return f"{config.username}:{config.password}".encode()

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self._connections_total += 1
        try:
            while True:
                try:
                    request = await _read_request(reader, writer)
                except _HttpError as exc:
                    answer = _error(exc.status, HTTPStatus(exc.status).phrase, exc.detail)
                    writer.write(_response_bytes(answer, keep_alive=False, http10=False))
                    return
                if request is None:
                    return
                answer = await self._answer(request)
                if answer is None:
                    return
                writer.write(_response_bytes(answer, request.keep_alive, request.http10))
                await writer.drain()
                if not request.keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            # close() still flushes what was written; a drop has written nothing.
            writer.close()
            self._connections.discard(task)

    async def _answer(self, request: _Request) -> _Answer | None:
        """The answer to send, or None to close the connection without one."""
        path, _, query = request.target.partition(b"?")
        if path == b"/outbound_messages":
            config = self._config
            answer = self._outbound(config, request)
            delay_ms = config.latency_ms
            if config.latency_jitter_ms:
                delay_ms += self._rng.uniform(-config.latency_jitter_ms, config.latency_jitter_ms)
            if delay_ms > 0:
                await asyncio.sleep(delay_ms / 1000)
            return answer
        if path.startswith(b"/_sim/"):
            return self._admin(request.method, path[len(b"/_sim/") :], query, request.body)
        return _NOT_FOUND

    def _outbound(self, config: SimulatorConfig, request: _Request) -> _Answer | None:
        """Decide and record the outcome of one API request, in the order DIDWW checks."""
        arrived_at = request.arrived_at
        if config.outage:
            self._record(arrived_at, 503)
            return _SERVICE_UNAVAILABLE
        if request.method != b"POST":
            self._record(arrived_at, 405)
            return _error(405, "Method Not Allowed", "Use POST", (b"allow", b"POST"))
        if not self._authorized(request.headers.get(b"authorization")):
            self._record(arrived_at, 401)
            return _UNAUTHORIZED
        content_type = request.headers.get(b"content-type", b"")
        if content_type.lower() != b"application/vnd.api+json":
            self._record(arrived_at, 415)
            return _UNSUPPORTED_MEDIA_TYPE
        parsed = _parse_message(request.body)
        if isinstance(parsed, str):
            self._record(arrived_at, 400)
            return _error(400, "Bad Request", parsed)
        draw = self._rng.random()
        threshold = config.drop_before
        if draw < threshold:
            self._record(arrived_at, _DROP_BEFORE)
            return None
        threshold += config.fail_5xx
        if draw < threshold:
            self._record(arrived_at, 503)
            return _SERVICE_UNAVAILABLE
        threshold += config.fail_429
        if draw < threshold:
            self._record(arrived_at, 429)
            retry_after = (b"retry-after", str(config.retry_after_s).encode())
            return _error(429, "Too Many Requests", "Rate limit exceeded", retry_after)
        dropped_after = draw < threshold + config.drop_after
        message_id = str(uuid.uuid4())
        destination, source, content = parsed
        record = MessageRecord(
            message_id,
            destination,
            self._intern(source),
            self._intern(content),
            arrived_at,
            dropped_after,
        )
        self._messages.append(record)
        if config.callback_url is not None:
            self._schedule_callback(config, config.callback_url, record)
        if dropped_after:
            self._record(arrived_at, _DROP_AFTER)
            return None
        self._record(arrived_at, 201)
        document = {"data": {"type": "outbound_messages", "id": message_id}}
        return _Answer(201, json.dumps(document).encode())

    def _authorized(self, header: bytes | None) -> bool:
        if header is None:
            return False
        scheme, _, token = header.strip().partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            decoded = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(decoded, self._credentials)

    def _record(self, arrived_at: float, outcome: int) -> None:
        self._arrived_at.append(arrived_at)
        self._outcomes.append(outcome)
        self._outcome_counts[outcome] += 1

    def _intern(self, text: str) -> str:
        shared = self._interned.get(text)
        if shared is not None:
            return shared
        if len(self._interned) < INTERN_LIMIT:
            self._interned[text] = text
        return text

    def _admin(self, method: bytes, name: bytes, query: bytes, body: bytes) -> _Answer:
        if method == b"GET" and name in (b"messages", b"requests"):
            try:
                params = parse_qs(query.decode("ascii"), strict_parsing=False)
                offset = int(params.get("offset", ["0"])[0])
                limit = int(params["limit"][0]) if "limit" in params else None
            except (UnicodeDecodeError, ValueError):
                return _json({"error": "offset and limit must be integers"}, 400)
            end = None if limit is None else offset + limit
            if name == b"requests":
                return _json(self.requests[offset:end])
            return _json(
                [
                    {
                        "id": record.id,
                        "destination": record.destination,
                        "source": record.source,
                        "content": record.content,
                        "arrived_at": record.arrived_at,
                        "dropped_after": record.dropped_after,
                    }
                    for record in self._messages[offset:end]
                ]
            )
        if method == b"GET" and name == b"callbacks":
            # The attributes of each delivered callback (a duplicate is listed once), plus id.
            return _json(
                [
                    {"id": doc["data"]["id"], **doc["data"]["attributes"]}
                    for doc in map(json.loads, self._delivered_documents)
                ]
            )
        if method == b"GET" and name == b"stats":
            return _json(self.stats)
        if method == b"GET" and name == b"config":
            return _json(dataclasses.asdict(self._config))
        if method == b"POST" and name == b"config":
            try:
                changes = json.loads(body)
            except ValueError:
                return _json({"error": "body must be a JSON object"}, 400)
            if not isinstance(changes, dict):
                return _json({"error": "body must be a JSON object"}, 400)
            try:
                config = self.configure(**changes)
            except ValueError as exc:
                return _json({"error": str(exc)}, 400)
            logger.info("simulator_configured settings=%s", ",".join(sorted(changes)))
            return _json(dataclasses.asdict(config))
        if method == b"POST" and name == b"reset":
            self.reset()
            return _json({"reset": True})
        if name in (b"messages", b"requests", b"callbacks", b"stats", b"config", b"reset"):
            return _json({"error": "method not allowed"}, 405)
        return _json({"error": "no such endpoint"}, 404)

    def _schedule_callback(self, config: SimulatorConfig, url: str, record: MessageRecord) -> None:
        rng = self._callback_rng
        status, code_id = "Success", None
        if rng.random() < config.callback_failure_ratio:
            status, code_id = ("Failed", 101) if rng.random() < 0.5 else ("Routing Error", 1)
        end_time_key = config.end_time_key
        if end_time_key == "random":
            end_time_key = rng.choice(("end_time", "time_end"))
        duplicate = rng.random() < config.callback_duplicate_ratio
        callback = _Callback(
            url, self._generation, record, status, code_id, end_time_key, duplicate
        )
        self._callbacks_pending += 2 if duplicate else 1
        assert self._loop is not None and self._queue is not None
        self._loop.call_later(config.callback_delay_ms / 1000, self._queue.put_nowait, callback)

    async def _deliver_callbacks(self) -> None:
        """One delivery worker: takes callbacks off the queue, one keep-alive connection each."""
        assert self._queue is not None
        connection: _Connection | None = None
        try:
            while True:
                callback = await self._queue.get()
                if callback.generation != self._generation:
                    continue
                try:
                    connection = await self._deliver(callback, connection)
                except Exception:
                    # A bug here must not silently cost a delivery worker.
                    logger.exception("callback_crashed id=%s", callback.record.id)
                    self._settle(callback, delivered=False)
        finally:
            if connection is not None:
                connection.writer.close()

    async def _deliver(
        self, callback: _Callback, connection: _Connection | None
    ) -> _Connection | None:
        if not callback.body:
            callback.body = self._callback_document(callback)
        try:
            async with asyncio.timeout(CALLBACK_TIMEOUT_S):
                status, connection = await _post(connection, callback.url, callback.body)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, _HttpError) as exc:
            if connection is not None:
                connection.writer.close()
            connection = None
            outcome, retryable = f"{type(exc).__name__}: {exc}", True
        else:
            if 200 <= status < 300:
                self._settle(callback, delivered=True)
                return connection
            outcome, retryable = f"HTTP {status}", status >= 500
        if callback.generation != self._generation:
            return connection
        config = self._config
        if retryable and callback.attempt < config.callback_attempts:
            self._callbacks_retried += 1
            delay_s = min(config.callback_backoff_s * 2 ** (callback.attempt - 1), 60.0)
            callback.attempt += 1
            assert self._loop is not None and self._queue is not None
            self._loop.call_later(delay_s, self._queue.put_nowait, callback)
            return connection
        logger.warning(
            "callback_failed id=%s attempts=%d outcome=%s",
            callback.record.id,
            callback.attempt,
            outcome,
        )
        self._settle(callback, delivered=False)
        return connection

    def _settle(self, callback: _Callback, *, delivered: bool) -> None:
        if callback.generation != self._generation:
            return
        self._callbacks_pending -= 1
        if delivered:
            self._callbacks_delivered += 1
            if self._config.record_callbacks and not callback.recorded:
                self._delivered_documents.append(callback.body)
                callback.recorded = True
        else:
            self._callbacks_failed += 1
        if callback.duplicate:
            # DIDWW may repeat a callback; the copy is the same document, sent once more.
            callback.duplicate, callback.attempt = False, 1
            assert self._queue is not None
            self._queue.put_nowait(callback)

    @staticmethod
    def _callback_document(callback: _Callback) -> bytes:
        record = callback.record
        attributes = {
            "time_start": _iso(record.arrived_at),
            callback.end_time_key: _iso(time.time()),
            "destination": record.destination,
            "source": record.source,
            "status": callback.status,
            "code_id": callback.code_id,
            "fragments_sent": _fragments(record.content),
        }
        data = {"type": "outbound_message_callbacks", "id": record.id, "attributes": attributes}
        return json.dumps({"data": data}).encode()


class SimulatorThread:
    """A simulator serving from its own event loop on a background thread, for synchronous code."""

    def __init__(
        self, simulator: Simulator, loop: asyncio.AbstractEventLoop, thread: threading.Thread
    ) -> None:
        self.simulator = simulator
        self._loop = loop
        self._thread = thread

    @property
    def url(self) -> str:
        return self.simulator.url

    @property
    def messages(self) -> list[MessageRecord]:
        return self.simulator.messages

    @property
    def stats(self) -> dict[str, Any]:
        return self.simulator.stats

    def stop(self, timeout_s: float = 10.0) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self.simulator.stop(), self._loop).result(timeout_s)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout_s)

    def __enter__(self) -> SimulatorThread:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def run_in_thread(
    config: SimulatorConfig | None = None, *, start_timeout_s: float = 10.0
) -> SimulatorThread:
    """Start a simulator on a daemon thread and return once it is listening."""
    simulator = Simulator(config)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    failures: list[BaseException] = []

    def serve() -> None:
        asyncio.set_event_loop(loop)
        try:
            try:
                loop.run_until_complete(simulator.start())
            except BaseException as exc:
                failures.append(exc)
                return
            finally:
                started.set()
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    thread = threading.Thread(target=serve, name="didww-simulator", daemon=True)
    thread.start()
    if not started.wait(start_timeout_s):
        raise RuntimeError(f"the simulator did not start within {start_timeout_s} s")
    if failures:
        thread.join()
        raise failures[0]
    return SimulatorThread(simulator, loop, thread)


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not the usage block: a parent process logs it as is.
        self.exit(2, f"{self.prog}: error: {message}\n")


def _non_negative(text: str) -> float:
    value = _read(text, float, "a number")
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a non-negative number")
    return value


def _non_negative_int(text: str) -> int:
    value = _read(text, int, "an integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def _read(text: str, kind: Callable[[str], T], what: str) -> T:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None


def _at_most(read: Callable[[str], T], limit: float, what: str) -> Callable[[str], T]:
    """An argument type: what read() makes of the text, refused above limit."""

    def parse(text: str) -> T:
        value = read(text)
        if value > limit:  # type: ignore[operator]
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    return parse


_ratio = _at_most(_non_negative, 1, "a ratio between 0 and 1")
_port = _at_most(_non_negative_int, 65535, "a port number")


def _url(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"{text!r} is not an http:// or https:// URL")
    return text


def _parse_args(argv: list[str] | None) -> SimulatorConfig:
    parser = _ArgumentParser(
        prog="python -m ops.simulator",
        description="Serve a simulated DIDWW Outbound SMS API.",
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1")
    add("--port", type=_port, default=DEFAULT_CLI_PORT, help="0 picks a free port")
    add("--username", default=DEFAULT_USERNAME)
    add("--password", default=DEFAULT_PASSWORD)
    add("--latency-ms", type=_non_negative, default=0.0)
    add("--latency-jitter-ms", type=_non_negative, default=0.0)
    add("--fail-5xx", type=_ratio, default=0.0, metavar="RATIO")
    add("--fail-429", type=_ratio, default=0.0, metavar="RATIO")
    add("--retry-after-s", type=_non_negative_int, default=DEFAULT_RETRY_AFTER_S)
    add("--drop-before", type=_ratio, default=0.0, metavar="RATIO")
    add("--drop-after", type=_ratio, default=0.0, metavar="RATIO")
    add("--outage", action="store_true", help="answer 503 to every API request")
    add("--callback-url", type=_url, default=None)
    add("--callback-delay-ms", type=_non_negative, default=DEFAULT_CALLBACK_DELAY_MS)
    add("--callback-failure-ratio", type=_ratio, default=0.0, metavar="RATIO")
    add("--callback-duplicate-ratio", type=_ratio, default=0.0, metavar="RATIO")
    add("--callback-attempts", type=_non_negative_int, default=CALLBACK_ATTEMPTS)
    add("--callback-backoff-s", type=_non_negative, default=CALLBACK_BACKOFF_S)
    add("--end-time-key", choices=END_TIME_KEYS, default="end_time")
    add("--record-callbacks", action="store_true", help="keep callbacks for GET /_sim/callbacks")
    add("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        return SimulatorConfig(**vars(args))
    except ValueError as exc:
        parser.error(str(exc))


async def _serve_until_signalled(config: SimulatorConfig) -> None:
    simulator = Simulator(config)
    await simulator.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    # The one line on stdout: a parent process reads the real port from it.
    print(f"simulator listening on {simulator.url}", flush=True)
    try:
        await stopping.wait()
    finally:
        await simulator.stop()


def main(argv: list[str] | None = None) -> int:
    config = _parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        asyncio.run(_serve_until_signalled(config))
    except OSError as exc:
        logger.error("simulator_failed error=%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
