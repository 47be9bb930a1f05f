"""smsq's httpx transport: HTTP/1.1 to one host on an asyncio Protocol and httptools, with an
O(1) pool, because httpx's own transport spends most of a sender's CPU per request. The
workers post to DIDWW with it, the webhook delivery service to each subscription.
"""

# Hand-written where we measured the library falls short: against the simulator (0 ms, uvloop,
# 20 in flight), httpx's default transport (httpcore, anyio, h11) cost 630-2,000 us of CPU per
# request, its pool scanning every connection each time; a prototype of this one cost 120 us
# (323 us through AsyncClient.post), this module about 150 us, half of it building httpx.Request.

from __future__ import annotations

import asyncio
import ssl
import urllib.request
from collections import deque
from typing import cast

import httptools
import httpx

# Far above any DIDWW answer; a bigger body is refused instead of buffered.
MAX_RESPONSE_BYTES = 1 << 20
# Drop idle connections before a typical server's 5 s keep-alive closes them under a request.
KEEPALIVE_EXPIRY_S = 2.0
# Headers that frame a body; without either, the body runs until the server closes.
_FRAMING_HEADERS = frozenset({b"content-length", b"transfer-encoding"})


class _Connection(asyncio.Protocol):
    """One connection: writes a request, parses its answer; the pool reuses it while it lives."""

    def __init__(self, max_response_bytes: int, pool: set[_Connection]) -> None:
        self._max_response_bytes = max_response_bytes
        self._pool = pool
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport  # set by connection_made, before anyone sees this
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._request: httpx.Request | None = None
        self._keep_alive = self._out_of_step = self.lost = False
        self._reset()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.idle_since = 0.0

    def _reset(self) -> None:
        self._reason, self._headers, self._body = b"", [], []
        self._body_bytes, self._headers_done, self._complete = 0, False, False

    def reusable(self) -> bool:
        closing = self.lost or self._transport.is_closing()
        return self._keep_alive and not self._out_of_step and not closing

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._pool.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._pool.discard(self)
        if self._waiter is not None and not self._waiter.done():
            if self._headers_done and not any(
                name.lower() in _FRAMING_HEADERS for name, _ in self._headers
            ):
                self._waiter.set_result(None)  # a body that runs until the close is complete
            else:
                self._fail("server closed the connection without a complete response")
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            # Nothing was asked: the stream is out of step, so the next answer could be wrong.
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(f"malformed response: {type(exc).__name__} {exc}")
            return
        if self._body_bytes > self._max_response_bytes:
            self._fail(f"response body over {self._max_response_bytes} bytes")
        elif self._complete:
            self._waiter.set_result(None)

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes <= self._max_response_bytes:
            self._body.append(body)

    def on_message_begin(self) -> None:
        # A second answer to one request: nobody asked for it, so the stream is out of step.
        self._out_of_step = self._out_of_step or self._complete

    def on_message_complete(self) -> None:
        if self._parser.get_status_code() < 200:
            self._reset()  # an interim answer (103 Early Hints, say): the final one follows
            return
        self._complete = True
        # Only valid inside this callback: the parser forgets the message once it returns.
        self._keep_alive = self._parser.should_keep_alive()

    def send(self, request: httpx.Request, data: bytes, timeout_s: float) -> None:
        """Write the request in one piece, now; wait() for its response."""
        if self.lost or self._transport.is_closing():
            raise httpx.WriteError(
                "connection closed before the request was written", request=request
            )
        loop = asyncio.get_running_loop()
        self._waiter, self._request, self._keep_alive = loop.create_future(), request, False
        self._reset()
        self._transport.write(data)
        reason = f"no complete response within {timeout_s} s"
        self._timer = loop.call_later(timeout_s, self._fail, reason, httpx.ReadTimeout)

    async def wait(self) -> None:
        """Wait until the response to the request written by send() is complete."""
        assert self._waiter is not None
        try:
            await self._waiter
        finally:
            if self._timer is not None:
                self._timer.cancel()

    def response(self) -> httpx.Response:
        version = b"HTTP/" + self._parser.get_http_version().encode()
        response = httpx.Response(
            self._parser.get_status_code(),
            headers=self._headers,
            stream=httpx.ByteStream(b"".join(self._body)),
            request=self._request,
            extensions={"http_version": version, "reason_phrase": self._reason},
        )
        response.read()  # decodes any Content-Encoding; the caller gets .content and .json()
        return response

    def close(self) -> None:
        # abort, not close: nothing more is owed to the server, and TLS shutdown can stall.
        self._transport.abort()

    def _fail(
        self, reason: str, error: type[httpx.TransportError] = httpx.RemoteProtocolError
    ) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(error(reason, request=self._request))
        self.close()


def _encode(request: httpx.Request) -> bytes:
    headers = request.headers.raw
    head = b"%s %s HTTP/1.1\r\n%s\r\n" % (
        request.method.encode(),
        request.url.raw_path,
        b"".join([b"%s: %s\r\n" % header for header in headers]),
    )
    # One line each for the request line, every header and the blank line, or a header
    # value smuggled a line break (and a header of its own) in.
    if head.count(b"\n") != len(headers) + 2:
        raise httpx.LocalProtocolError("line break in a header", request=request)
    return head + request.content


class Exchange:
    """A request written by LeanTransport.start(): await response() for its answer."""

    def __init__(self, transport: LeanTransport, connection: _Connection) -> None:
        self._transport = transport
        self._connection: _Connection | None = connection

    async def response(self) -> httpx.Response:
        """The answer; once only (the connection and its permit go back to the pool)."""
        connection, self._connection = self._connection, None
        if connection is None:
            raise RuntimeError("Exchange.response() awaited twice")
        return await self._transport._finish(connection)


class LeanTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 to the origin of base_url: every request goes there (its path and headers as
    given), with its body in memory; not for HEAD, whose answer httptools would wait a body for.

    Exceptions are httpx's. ConnectError, ConnectTimeout, PoolTimeout, WriteError and
    LocalProtocolError mean the request was surely not sent; ReadTimeout and
    RemoteProtocolError that it may have been.
    """

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int,
        connect_timeout_s: float,
        read_timeout_s: float,
        keepalive_expiry_s: float = KEEPALIVE_EXPIRY_S,
        ssl_context: ssl.SSLContext | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("base_url must be an http:// or https:// URL with a host")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        https = url.scheme == "https"
        self._host, self._port = url.host, url.port or (443 if https else 80)
        self._ssl = (ssl_context or httpx.create_ssl_context()) if https else None
        self._server_hostname = url.host if https else None
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._keepalive_expiry_s = keepalive_expiry_s
        self._max_response_bytes = max_response_bytes
        # A permit per request in flight: a connection is opened only when none is idle, so
        # open connections never outnumber permits. Counted here rather than by an
        # asyncio.Semaphore so that start() can take one without awaiting.
        self._free_permits = max_connections
        self._permit_waiters: deque[asyncio.Future[None]] = deque()
        self._idle: deque[_Connection] = deque()
        self._open: set[_Connection] = set()
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        data = _encode(request)
        await self._acquire_permit(request)
        try:
            connection = self._take_idle() or await self._connect(request)
        except BaseException:
            self._release_permit()
            raise
        self._send(connection, request, data)
        return await self._finish(connection)

    def start(self, request: httpx.Request) -> Exchange | None:
        """Write the request now, without yielding to the event loop, if a connection is idle
        and a permit free; the returned Exchange gives its response. None otherwise: use
        handle_async_request. The worker claims a message and writes its request in one go
        this way, so nothing it claimed waits for the loop (docs/architecture.md §6)."""
        if self._free_permits <= 0 or self._closed:
            return None
        data = _encode(request)
        connection = self._take_idle()
        if connection is None:
            return None
        self._free_permits -= 1
        self._send(connection, request, data)
        return Exchange(self, connection)

    def _send(self, connection: _Connection, request: httpx.Request, data: bytes) -> None:
        """Write the request on a connection this caller holds with a permit; if that fails,
        the connection is closed and the permit given back."""
        try:
            connection.send(request, data, self._read_timeout_s)
        except BaseException:
            connection.close()
            self._release_permit()
            raise

    async def _finish(self, connection: _Connection) -> httpx.Response:
        try:
            try:
                await connection.wait()
                response = connection.response()
            except BaseException:
                connection.close()
                raise
            self._put_back(connection)
            return response
        finally:
            self._release_permit()

    async def aclose(self) -> None:
        self._closed = True
        self._idle.clear()
        connections = list(self._open)
        for connection in connections:
            connection.close()
        if connections:
            await asyncio.wait([connection.closed for connection in connections])

    async def _acquire_permit(self, request: httpx.Request) -> None:
        if self._free_permits > 0:
            self._free_permits -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._permit_waiters.append(waiter)
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                await waiter
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():
                return  # handed a permit in the very turn the timeout fired: keep it
            raise httpx.PoolTimeout(
                f"no free connection within {self._connect_timeout_s} s", request=request
            ) from None
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release_permit()  # handed a permit, then cancelled: pass it on
            raise
        finally:
            if not waiter.done():
                waiter.cancel()

    def _release_permit(self) -> None:
        while self._permit_waiters:
            waiter = self._permit_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the permit goes straight to the next in line
                return
        self._free_permits += 1

    def _take_idle(self) -> _Connection | None:
        now = asyncio.get_running_loop().time()
        while self._idle:
            connection = self._idle.pop()
            if connection.reusable() and now - connection.idle_since < self._keepalive_expiry_s:
                return connection
            connection.close()
        return None

    def _put_back(self, connection: _Connection) -> None:
        if self._closed or not connection.reusable():
            connection.close()
            return
        now = connection.idle_since = asyncio.get_running_loop().time()
        idle = self._idle
        # The oldest idle ones expire first: dropping them here keeps this O(1) amortised.
        while idle and (now - idle[0].idle_since >= self._keepalive_expiry_s or idle[0].lost):
            idle.popleft().close()
        idle.append(connection)

    async def _connect(self, request: httpx.Request) -> _Connection:
        if self._closed:
            raise httpx.ConnectError("the transport is closed", request=request)
        origin, loop = f"{self._host}:{self._port}", asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, connection = await loop.create_connection(
                    lambda: _Connection(self._max_response_bytes, self._open),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._server_hostname,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(
                f"connecting to {origin} took over {self._connect_timeout_s} s", request=request
            ) from None
        except OSError as exc:  # ssl.SSLError included: a failed handshake sent nothing
            raise httpx.ConnectError(
                f"cannot connect to {origin}: {exc}", request=request
            ) from None
        if self._closed:
            connection.close()
            raise httpx.ConnectError("the transport is closed", request=request)
        return connection


def proxy_for(url: httpx.URL) -> str | None:
    """The proxy the environment names for this URL (HTTPS_PROXY, NO_PROXY, ...), if any:
    LeanTransport connects directly, so a caller uses httpx's transport when there is one."""
    proxies = urllib.request.getproxies()
    if not proxies or urllib.request.proxy_bypass(url.host):
        return None
    proxy = proxies.get(url.scheme) or proxies.get("all")
    # HTTPS_PROXY=proxy:3128 means http://proxy:3128 to curl and httpx alike.
    return proxy if not proxy or "://" in proxy else f"http://{proxy}"
