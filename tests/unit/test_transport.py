"""Tests for web.transport.LeanTransport over real sockets on 127.0.0.1, on asyncio and uvloop.

Each test runs small asyncio servers of its own; which httpx exception a failure raises is the
point of most of them, since the worker decides from its class whether a message may be resent.
"""

from __future__ import annotations

import asyncio
import base64
import json
import queue
import re
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import httpx
import pytest
import trustme
import uvloop

from ops.simulator import JSONAPI_MEDIA_TYPE, Simulator, SimulatorConfig
from web.transport import Exchange, LeanTransport

# A password and a body that must never appear in an exception's message.
SECRET = "s3cr3t-never-logged"
AUTHORIZATION = "Basic " + base64.b64encode(f"smsq:{SECRET}".encode()).decode()
BODY = json.dumps({"data": {"attributes": {"content": SECRET}}}).encode()
CREATED_BODY = b'{"data":{"type":"outbound_messages","id":"m-1"}}'
CREATED = (
    b"HTTP/1.1 201 Created\r\nContent-Type: application/vnd.api+json\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(CREATED_BODY), CREATED_BODY)
)
# Long enough for anything on loopback; short enough that a hang fails the test quickly.
WAIT_S = 5.0

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Server"], Awaitable[None]]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    return uvloop.run if request.param == "uvloop" else asyncio.run


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    """One whole request (head and Content-Length body), or None at the end of the stream."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    return head + await reader.readexactly(int(length.group(1)) if length else 0)


def respond(*chunks: bytes, close: bool = False, delay_s: float = 0.0) -> Handler:
    """Answer each request with `chunks` written one at a time (none: never answer), then
    close the connection if `close`."""

    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server
    ) -> None:
        while (request := await read_request(reader)) is not None:
            server.requests.append(request)
            await asyncio.sleep(delay_s)
            for chunk in chunks:
                writer.write(chunk)
                await writer.drain()
            if close:
                return

    return handle


class Server:
    """A loopback server running `handler` per connection; counts connections as it goes."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.requests: list[bytes] = []
        self.connections = self.open = self.peak = self.ended = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"https://localhost:{port}" if self.ssl_context else f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._server.close()
        # Cut the connections rather than cancel their handlers: each one ends at the EOF.
        for writer in self._writers:
            writer.transport.abort()
        async with asyncio.timeout(WAIT_S):
            await asyncio.gather(*self._tasks)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        self.open += 1
        self.peak = max(self.peak, self.open)
        try:
            await self.handler(reader, writer, self)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            self.open -= 1
            self.ended += 1
            writer.close()
            self._tasks.discard(task)
            self._writers.discard(writer)


def lean(url: str, **options: Any) -> LeanTransport:
    settings: dict[str, Any] = {
        "max_connections": 4,
        "connect_timeout_s": WAIT_S,
        "read_timeout_s": WAIT_S,
    }
    return LeanTransport(url, **(settings | options))


def post(url: str) -> httpx.Request:
    headers = {"Content-Type": JSONAPI_MEDIA_TYPE, "Authorization": AUTHORIZATION}
    return httpx.Request("POST", url + "/outbound_messages", headers=headers, content=BODY)


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT_S):
        while not condition():
            await asyncio.sleep(0.005)


def assert_clean(exc: BaseException) -> None:
    assert SECRET not in str(exc) and SECRET not in repr(exc)
    assert AUTHORIZATION not in str(exc)


def test_a_201_is_read_whole_and_the_request_goes_out_byte_for_byte(run: Any) -> None:
    async def go() -> tuple[httpx.Response, httpx.Request, Server]:
        async with Server(respond(CREATED)) as server:
            transport = lean(server.url)
            request = post(server.url)
            response = await transport.handle_async_request(request)
            await transport.aclose()
            return response, request, server

    response, request, server = run(go())
    assert response.status_code == 201
    assert response.headers["content-type"] == "application/vnd.api+json"
    assert response.json() == {"data": {"type": "outbound_messages", "id": "m-1"}}
    assert response.request is request
    assert response.extensions["http_version"] == b"HTTP/1.1"
    assert response.reason_phrase == "Created"
    port = server.url.rsplit(":", 1)[1]
    assert server.requests == [
        b"POST /outbound_messages HTTP/1.1\r\n"
        + f"Host: 127.0.0.1:{port}\r\n".encode()
        + b"Content-Type: application/vnd.api+json\r\n"
        + f"Authorization: {AUTHORIZATION}\r\n".encode()
        + f"Content-Length: {len(BODY)}\r\n\r\n".encode()
        + BODY
    ]


def test_sequential_requests_share_one_connection(run: Any) -> None:
    async def go() -> Server:
        async with Server(respond(CREATED)) as server:
            transport = lean(server.url)
            for _ in range(5):
                assert (await transport.handle_async_request(post(server.url))).status_code == 201
            await transport.aclose()
            return server

    server = run(go())
    assert (server.connections, len(server.requests)) == (1, 5)


def test_a_chunked_response_arriving_in_pieces(run: Any) -> None:
    chunks = (
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n",
        b'5\r\n{"a":\r\n',
        b'2\r\n12\r\n3\r\n, "\r\n',
        b'5\r\nb":3}\r\n0\r\n\r\n',
    )

    async def go() -> tuple[httpx.Response, httpx.Response, Server]:
        async with Server(respond(*chunks)) as server:
            transport = lean(server.url)
            first = await transport.handle_async_request(post(server.url))
            second = await transport.handle_async_request(post(server.url))
            await transport.aclose()
            return first, second, server

    first, second, server = run(go())
    assert first.json() == second.json() == {"a": 12, "b": 3}
    assert server.connections == 1


@pytest.mark.parametrize(
    "status_line",
    [b"HTTP/1.1 201 Created\r\nConnection: close", b"HTTP/1.0 201 Created"],
    ids=["connection-close", "http-1.0"],
)
def test_a_connection_the_server_will_close_is_not_reused(run: Any, status_line: bytes) -> None:
    answer = status_line + b"\r\nContent-Length: 2\r\n\r\n{}"

    async def go() -> Server:
        async with Server(respond(answer)) as server:
            transport = lean(server.url)
            for _ in range(3):
                assert (await transport.handle_async_request(post(server.url))).json() == {}
            await transport.aclose()
            return server

    assert run(go()).connections == 3


def test_an_idle_connection_the_server_closed_is_replaced(run: Any) -> None:
    async def go() -> Server:
        async with Server(respond(CREATED, close=True)) as server:
            transport = lean(server.url)
            await transport.handle_async_request(post(server.url))
            await until(lambda: server.ended == 1)
            await asyncio.sleep(0.05)  # the client's loop sees the close
            assert (await transport.handle_async_request(post(server.url))).status_code == 201
            await transport.aclose()
            return server

    assert run(go()).connections == 2


def test_an_idle_connection_past_keepalive_expiry_is_closed_not_reused(run: Any) -> None:
    async def go() -> Server:
        async with Server(respond(CREATED)) as server:
            transport = lean(server.url, keepalive_expiry_s=0.05)
            await transport.handle_async_request(post(server.url))
            await asyncio.sleep(0.1)
            assert (await transport.handle_async_request(post(server.url))).status_code == 201
            await until(lambda: server.ended == 1)
            await transport.aclose()
            return server

    assert run(go()).connections == 2


def test_a_body_delimited_by_the_close_is_complete(run: Any) -> None:
    async def go() -> httpx.Response:
        async with Server(respond(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", close=True)) as server:
            transport = lean(server.url)
            response = await transport.handle_async_request(post(server.url))
            await transport.aclose()
            return response

    assert run(go()).content == b"until the end"


def test_an_interim_answer_is_skipped_for_the_final_one(run: Any) -> None:
    async def go() -> tuple[list[httpx.Response], Server]:
        hints = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n"
        async with Server(respond(hints, CREATED)) as server:
            transport = lean(server.url)
            responses = [await transport.handle_async_request(post(server.url)) for _ in "ab"]
            await transport.aclose()
            return responses, server

    responses, server = run(go())
    assert [response.status_code for response in responses] == [201, 201]
    assert "link" not in responses[0].headers
    assert server.connections == 1


def test_an_answer_nobody_asked_for_retires_the_connection(run: Any) -> None:
    async def go() -> tuple[list[httpx.Response], Server]:
        async with Server(respond(CREATED + CREATED)) as server:
            transport = lean(server.url)
            responses = [await transport.handle_async_request(post(server.url)) for _ in "ab"]
            await transport.aclose()
            return responses, server

    responses, server = run(go())
    assert [response.status_code for response in responses] == [201, 201]
    assert server.connections == 2


def test_a_protocol_switch_is_remote_protocol_error(run: Any) -> None:
    switch = b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"

    async def go() -> None:
        async with Server(respond(switch)) as server:
            transport = lean(server.url)
            with pytest.raises(httpx.RemoteProtocolError):
                await transport.handle_async_request(post(server.url))
            await transport.aclose()

    run(go())


def test_a_refused_connection_is_connect_error(run: Any) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{unused.getsockname()[1]}"

    async def go() -> None:
        transport = lean(url)
        with pytest.raises(httpx.ConnectError):
            await transport.handle_async_request(post(url))
        await transport.aclose()

    run(go())


def test_a_handshake_that_never_ends_is_connect_timeout(run: Any) -> None:
    async def go() -> None:
        async with Server(respond()) as server:
            url = server.url.replace("http://", "https://")
            transport = lean(url, connect_timeout_s=0.1)
            with pytest.raises(httpx.ConnectTimeout):
                await transport.handle_async_request(post(url))
            await transport.aclose()

    run(go())


def test_no_answer_within_the_read_timeout_is_read_timeout(run: Any) -> None:
    async def go() -> Server:
        async with Server(respond()) as server:
            transport = lean(server.url, read_timeout_s=0.1)
            with pytest.raises(httpx.ReadTimeout) as caught:
                await transport.handle_async_request(post(server.url))
            assert_clean(caught.value)
            await until(lambda: server.ended == 1)  # the connection was closed
            await transport.aclose()
            return server

    assert len(run(go()).requests) == 1


@pytest.mark.parametrize(
    "answer",
    [b"", b'HTTP/1.1 201 Created\r\nContent-Length: 40\r\n\r\n{"data":'],
    ids=["nothing", "partial"],
)
def test_a_close_after_the_request_is_remote_protocol_error(run: Any, answer: bytes) -> None:
    async def go() -> None:
        async with Server(respond(answer, close=True)) as server:
            transport = lean(server.url)
            with pytest.raises(httpx.RemoteProtocolError) as caught:
                await transport.handle_async_request(post(server.url))
            assert_clean(caught.value)
            assert caught.value.request.url.path == "/outbound_messages"
            await transport.aclose()

    run(go())


def test_a_malformed_status_line_is_remote_protocol_error_and_the_connection_goes(
    run: Any,
) -> None:
    async def go() -> Server:
        async with Server(respond(b"HTTP/1.1 twenty-one Created\r\n\r\n")) as server:
            transport = lean(server.url)
            for _ in range(2):
                with pytest.raises(httpx.RemoteProtocolError) as caught:
                    await transport.handle_async_request(post(server.url))
                assert_clean(caught.value)
            await transport.aclose()
            return server

    assert run(go()).connections == 2


def test_a_body_over_the_limit_is_remote_protocol_error_and_the_connection_goes(
    run: Any,
) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000

    async def go() -> Server:
        async with Server(respond(answer)) as server:
            transport = lean(server.url, max_response_bytes=1000)
            with pytest.raises(httpx.RemoteProtocolError, match="over 1000 bytes"):
                await transport.handle_async_request(post(server.url))
            await until(lambda: server.ended == 1)
            await transport.aclose()
            return server

    assert run(go()).connections == 1


def test_no_free_connection_within_the_connect_timeout_is_pool_timeout(run: Any) -> None:
    async def go() -> Server:
        async with Server(respond()) as server:
            transport = lean(server.url, max_connections=1, connect_timeout_s=0.1)
            hanging = asyncio.create_task(transport.handle_async_request(post(server.url)))
            await until(lambda: len(server.requests) == 1)
            with pytest.raises(httpx.PoolTimeout):
                await transport.handle_async_request(post(server.url))
            hanging.cancel()
            await asyncio.gather(hanging, return_exceptions=True)
            await transport.aclose()
            return server

    assert run(go()).connections == 1


def test_many_concurrent_requests_never_open_more_than_max_connections(run: Any) -> None:
    async def go() -> tuple[list[httpx.Response], Server]:
        async with Server(respond(CREATED, delay_s=0.002)) as server:
            transport = lean(server.url, max_connections=8)
            responses = await asyncio.gather(
                *(transport.handle_async_request(post(server.url)) for _ in range(200))
            )
            await transport.aclose()
            return responses, server

    responses, server = run(go())
    assert [response.status_code for response in responses] == [201] * 200
    assert len(server.requests) == 200
    assert server.connections == server.peak == 8


def test_a_cancelled_request_closes_its_connection_and_frees_its_slot(run: Any) -> None:
    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server
    ) -> None:
        # The first connection never answers; later ones do.
        await respond(*(() if server.connections == 1 else (CREATED,)))(reader, writer, server)

    async def go() -> Server:
        async with Server(handle) as server:
            transport = lean(server.url, max_connections=1)
            pending = asyncio.create_task(transport.handle_async_request(post(server.url)))
            await until(lambda: len(server.requests) == 1)
            pending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await pending
            await until(lambda: server.ended == 1)
            async with asyncio.timeout(WAIT_S):
                response = await transport.handle_async_request(post(server.url))
            assert response.status_code == 201
            await transport.aclose()
            return server

    assert run(go()).connections == 2


def test_aclose_closes_every_connection_and_later_requests_fail(run: Any) -> None:
    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server
    ) -> None:
        # The first two requests are answered, the third is left in flight.
        while (request := await read_request(reader)) is not None:
            server.requests.append(request)
            if len(server.requests) <= 2:
                writer.write(CREATED)

    async def go() -> None:
        async with Server(handle) as server:
            transport = lean(server.url)
            await asyncio.gather(*(transport.handle_async_request(post(server.url)) for _ in "ab"))
            in_flight = asyncio.create_task(transport.handle_async_request(post(server.url)))
            await until(lambda: len(server.requests) == 3)
            await transport.aclose()
            with pytest.raises(httpx.RemoteProtocolError):
                await in_flight
            await until(lambda: server.ended == 2)  # the idle one and the busy one
            with pytest.raises(httpx.ConnectError, match="closed"):
                await transport.handle_async_request(post(server.url))
            assert server.connections == 2

    run(go())


def test_a_connection_found_closed_when_writing_is_write_error(run: Any) -> None:
    """The race the pool cannot see: the close lands between taking a connection and writing."""

    async def go() -> None:
        async with Server(respond(CREATED)) as server:
            transport = lean(server.url)
            await transport.handle_async_request(post(server.url))
            connection = transport._idle[-1]
            connection.close()
            await connection.closed
            with pytest.raises(httpx.WriteError):
                connection.send(post(server.url), b"GET / HTTP/1.1\r\n\r\n", WAIT_S)
            assert len(server.requests) == 1
            await transport.aclose()

    run(go())


def test_a_line_break_in_a_header_is_refused_before_sending(run: Any) -> None:
    async def go() -> Server:
        async with Server(respond(CREATED)) as server:
            transport = lean(server.url)
            request = post(server.url)
            request.headers["X-Injected"] = "a\r\nX-Evil: 1"
            with pytest.raises(httpx.LocalProtocolError):
                await transport.handle_async_request(request)
            await transport.aclose()
            return server

    assert run(go()).connections == 0


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def test_https_with_a_trusted_ca(run: Any, ca: trustme.CA) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)

    async def go() -> tuple[list[httpx.Response], Server]:
        async with Server(respond(CREATED), server_context) as server:
            transport = lean(server.url, ssl_context=client_context)
            responses = [await transport.handle_async_request(post(server.url)) for _ in range(3)]
            await transport.aclose()
            return responses, server

    responses, server = run(go())
    assert [response.json()["data"]["id"] for response in responses] == ["m-1"] * 3
    assert server.connections == 1
    assert server.requests[0].startswith(b"POST /outbound_messages HTTP/1.1\r\n")


def test_https_with_an_untrusted_certificate_is_connect_error(run: Any, ca: trustme.CA) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)

    async def go() -> Server:
        async with Server(respond(CREATED), server_context) as server:
            transport = lean(server.url, ssl_context=client_context)
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await transport.handle_async_request(post(server.url))
            await transport.aclose()
            return server

    assert run(go()).requests == []


def test_posting_to_the_simulator_with_basic_auth_gets_201(run: Any) -> None:
    document = {
        "data": {
            "type": "outbound_messages",
            "attributes": {"destination": "37041654321", "source": "37041123456", "content": "Hi"},
        }
    }

    async def go() -> tuple[httpx.Response, httpx.Response, dict[str, Any]]:
        async with Simulator(SimulatorConfig()) as simulator:
            transport = lean(simulator.url)
            direct = await transport.handle_async_request(
                httpx.Request(
                    "POST",
                    simulator.url + "/outbound_messages",
                    headers={
                        "Content-Type": JSONAPI_MEDIA_TYPE,
                        "Authorization": "Basic " + base64.b64encode(b"smsq:secret").decode(),
                    },
                    content=json.dumps(document).encode(),
                )
            )
            async with httpx.AsyncClient(
                base_url=simulator.url, transport=transport, auth=("smsq", "secret")
            ) as client:
                via_client = await client.post(
                    "/outbound_messages",
                    json=document,
                    headers={"Content-Type": JSONAPI_MEDIA_TYPE},
                )
            stats = simulator.stats
            # Its connection handler ends at the EOF, before stop() would cancel it.
            await until(lambda: simulator.stats["connections_open"] == 0)
            return direct, via_client, stats

    direct, via_client, stats = run(go())
    assert direct.status_code == via_client.status_code == 201
    assert direct.json()["data"]["id"] != via_client.json()["data"]["id"]
    assert (stats["accepted"], stats["connections_total"]) == (2, 1)


# --- start(): writing a request without awaiting ----------------------------------------------


def test_start_is_none_until_a_connection_is_idle(run: Any) -> None:
    async def go() -> Server:
        async with Server(respond(CREATED)) as server:
            transport = lean(server.url)
            assert transport.start(post(server.url)) is None
            await asyncio.sleep(0.05)
            assert (server.connections, server.requests) == (0, [])  # nothing was started
            await transport.handle_async_request(post(server.url))
            exchange = transport.start(post(server.url))
            assert isinstance(exchange, Exchange)
            response = await exchange.response()
            assert response.status_code == 201
            assert response.json() == {"data": {"type": "outbound_messages", "id": "m-1"}}
            await transport.aclose()
            return server

    server = run(go())
    assert (server.connections, len(server.requests)) == (1, 2)


def test_start_is_none_while_every_permit_is_taken(run: Any) -> None:
    async def go() -> Server:
        async with Server(respond(CREATED)) as server:
            transport = lean(server.url, max_connections=1)
            await transport.handle_async_request(post(server.url))
            exchange = transport.start(post(server.url))
            assert exchange is not None
            assert transport.start(post(server.url)) is None
            assert (await exchange.response()).status_code == 201
            # The permit is back: start() writes again.
            again = transport.start(post(server.url))
            assert again is not None
            assert (await again.response()).status_code == 201
            await transport.aclose()
            return server

    server = run(go())
    assert (server.connections, len(server.requests)) == (1, 3)


def test_start_leaves_an_idle_connection_to_the_waiter_handed_the_permit(run: Any) -> None:
    async def go() -> Server:
        async with Server(respond(CREATED)) as server:
            transport = lean(server.url, max_connections=1)
            waiting = asyncio.create_task(transport.handle_async_request(post(server.url)))
            # Awaited here, not in a task: this takes the only permit before `waiting` runs,
            # and the code below runs as soon as it hands that permit on.
            await transport.handle_async_request(post(server.url))
            assert transport._idle  # the connection is idle, but its permit is spoken for
            assert transport.start(post(server.url)) is None
            assert (await waiting).status_code == 201
            await transport.aclose()
            return server

    server = run(go())
    assert (server.connections, len(server.requests)) == (1, 2)


class ThreadServer:
    """A blocking server on its own thread, answering CREATED to each request of one
    connection: it reads what reaches the socket even while the client's event loop is stuck."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.received: queue.Queue[bytes] = queue.Queue()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            connection, _ = self._listener.accept()
        except OSError:
            return
        with connection:
            buffer = b""
            while True:
                try:
                    data = connection.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buffer += data
                while b"\r\n\r\n" in buffer:
                    head, rest = buffer.split(b"\r\n\r\n", 1)
                    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                    size = int(length.group(1)) if length else 0
                    if len(rest) < size:
                        break
                    buffer = rest[size:]
                    self.received.put(head + b"\r\n\r\n" + rest[:size])
                    connection.sendall(CREATED)

    def close(self) -> None:
        self._listener.close()
        self._thread.join(WAIT_S)
        assert not self._thread.is_alive()


def test_start_has_written_the_request_when_it_returns(run: Any) -> None:
    server = ThreadServer()

    async def go() -> tuple[bytes, bytes, httpx.Response]:
        transport = lean(server.url)
        await transport.handle_async_request(post(server.url))
        first = server.received.get(timeout=WAIT_S)
        exchange = transport.start(post(server.url))
        assert exchange is not None
        # Blocking this loop: only bytes written by start() itself can reach the server.
        second = server.received.get(timeout=WAIT_S)
        response = await exchange.response()
        await transport.aclose()
        return first, second, response

    try:
        first, second, response = run(go())
    finally:
        server.close()
    assert second == first
    assert second.startswith(b"POST /outbound_messages HTTP/1.1\r\n")
    assert second.endswith(BODY)
    assert response.status_code == 201


def test_an_exchange_answered_before_it_is_awaited_gives_the_answer(run: Any) -> None:
    async def go() -> tuple[httpx.Response, Server]:
        async with Server(respond(CREATED)) as server:
            transport = lean(server.url)
            await transport.handle_async_request(post(server.url))
            exchange = transport.start(post(server.url))
            assert exchange is not None
            await asyncio.sleep(0.05)  # nobody awaits the exchange meanwhile
            assert len(server.requests) == 2
            response = await exchange.response()
            await transport.aclose()
            return response, server

    response, server = run(go())
    assert response.json() == {"data": {"type": "outbound_messages", "id": "m-1"}}
    assert server.requests[1] == server.requests[0]
    assert server.connections == 1


def answer_together(total: int) -> Handler:
    """Answer each request only once the server has seen `total` requests in all: the last
    ones must be in flight together, so a lost permit shows as a request that never gets out."""

    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server
    ) -> None:
        while (request := await read_request(reader)) is not None:
            server.requests.append(request)
            await until(lambda: len(server.requests) >= total)
            writer.write(CREATED)

    return handle


@pytest.mark.parametrize(
    ("failure", "error"),
    [
        (b"", httpx.RemoteProtocolError),
        (b"HTTP/1.1 twenty-one\r\n\r\n", httpx.RemoteProtocolError),
        (None, httpx.ReadTimeout),
    ],
    ids=["closed", "malformed", "silent"],
)
def test_permits_come_back_after_an_exchange_fails(
    run: Any, failure: bytes | None, error: type[httpx.TransportError]
) -> None:
    max_connections = 3

    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server
    ) -> None:
        if server.connections > 1:
            # The two requests of the first connection, then max_connections together.
            await answer_together(2 + max_connections)(reader, writer, server)
            return
        # The first connection answers one request, then fails the second.
        while (request := await read_request(reader)) is not None:
            server.requests.append(request)
            if len(server.requests) == 1:
                writer.write(CREATED)
            elif failure is not None:
                writer.write(failure)
                await writer.drain()
                return

    async def go() -> tuple[list[httpx.Response], Server]:
        async with Server(handle) as server:
            transport = lean(server.url, max_connections=max_connections, read_timeout_s=0.5)
            await transport.handle_async_request(post(server.url))
            exchange = transport.start(post(server.url))
            assert exchange is not None
            with pytest.raises(error) as caught:
                await exchange.response()
            assert_clean(caught.value)
            responses = await asyncio.gather(
                *(transport.handle_async_request(post(server.url)) for _ in range(max_connections))
            )
            await transport.aclose()
            return responses, server

    responses, server = run(go())
    assert [response.status_code for response in responses] == [201] * max_connections
    assert server.connections == 1 + max_connections


def test_cancelling_the_wait_for_an_exchange_closes_its_connection_and_frees_its_permit(
    run: Any,
) -> None:
    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server
    ) -> None:
        # The first connection answers its first request only; later ones answer all.
        while (request := await read_request(reader)) is not None:
            server.requests.append(request)
            if server.connections > 1 or len(server.requests) == 1:
                writer.write(CREATED)

    async def go() -> Server:
        async with Server(handle) as server:
            transport = lean(server.url, max_connections=1, connect_timeout_s=0.5)
            await transport.handle_async_request(post(server.url))
            exchange = transport.start(post(server.url))
            assert exchange is not None
            waiting = asyncio.create_task(exchange.response())
            await until(lambda: len(server.requests) == 2)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            await until(lambda: server.ended == 1)  # that connection was closed
            # With the permit lost this would be a PoolTimeout.
            assert (await transport.handle_async_request(post(server.url))).status_code == 201
            await transport.aclose()
            return server

    server = run(go())
    assert (server.connections, len(server.requests)) == (2, 3)


def test_a_permit_wait_that_times_out_is_pool_timeout_and_keeps_no_permit(run: Any) -> None:
    async def go() -> Server:
        release = asyncio.Event()

        async def handle(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server
        ) -> None:
            while (request := await read_request(reader)) is not None:
                server.requests.append(request)
                await release.wait()
                writer.write(CREATED)

        async with Server(handle) as server:
            transport = lean(server.url, max_connections=1, connect_timeout_s=0.1)
            holder = asyncio.create_task(transport.handle_async_request(post(server.url)))
            await until(lambda: len(server.requests) == 1)
            with pytest.raises(httpx.PoolTimeout) as caught:
                await transport.handle_async_request(post(server.url))
            assert_clean(caught.value)
            release.set()
            assert (await holder).status_code == 201
            # The timed-out waiter must not have taken the permit the holder gave back.
            for _ in range(2):
                assert (await transport.handle_async_request(post(server.url))).status_code == 201
            await transport.aclose()
            return server

    server = run(go())
    assert (server.connections, len(server.requests)) == (1, 3)


def test_a_permit_handed_to_a_cancelled_waiter_goes_to_the_next(run: Any) -> None:
    async def go() -> Server:
        async with Server(respond(CREATED)) as server:
            transport = lean(server.url, max_connections=1, connect_timeout_s=1.0)
            cancelled = asyncio.create_task(transport.handle_async_request(post(server.url)))
            following = asyncio.create_task(transport.handle_async_request(post(server.url)))
            # Awaited here: it takes the only permit first, and on its return has handed it to
            # `cancelled`, which has not run since.
            await transport.handle_async_request(post(server.url))
            assert (transport._free_permits, len(transport._permit_waiters)) == (0, 1)
            cancelled.cancel()
            with pytest.raises(asyncio.CancelledError):
                await cancelled
            # Without the permit passed on, this would be a PoolTimeout.
            assert (await following).status_code == 201
            assert (await transport.handle_async_request(post(server.url))).status_code == 201
            await transport.aclose()
            return server

    server = run(go())
    assert (server.connections, len(server.requests)) == (1, 3)


def test_a_permit_handed_over_as_the_wait_times_out_is_not_lost(run: Any) -> None:
    """The holder of the only permit finishes just as a waiter's pool timeout fires, after the
    permit was handed to the waiter but before the waiter ran. Whether the waiter then sends or
    raises PoolTimeout, the permit must come back; otherwise every later request times out."""
    timeout_s = 0.2

    async def go() -> tuple[list[BaseException | httpx.Response], Server]:
        async with Server(respond(CREATED)) as server:
            transport = lean(server.url, max_connections=1, connect_timeout_s=timeout_s)
            loop = asyncio.get_running_loop()
            # The permit a request in flight holds; _finish gives it back with _release_permit.
            await transport._acquire_permit(post(server.url))
            waiter = asyncio.create_task(transport.handle_async_request(post(server.url)))
            await asyncio.sleep(0)
            assert len(transport._permit_waiters) == 1
            past_deadline = loop.time() + timeout_s + 0.1

            def finish_late() -> None:
                time.sleep(max(0.0, past_deadline - loop.time()))
                transport._release_permit()

            if run is uvloop.run:
                # libuv runs due timers before the ready callbacks: the release comes in one
                # turn, the timeout at the start of the next, before the waiter resumes.
                loop.call_soon(finish_late)
            else:
                # asyncio appends due timers after the ready callbacks: the release and the
                # timeout come in the same turn, in that order.
                time.sleep(max(0.0, past_deadline - loop.time()))
                loop.call_soon(transport._release_permit)
            outcome = await asyncio.gather(waiter, return_exceptions=True)
            later = await asyncio.gather(
                transport.handle_async_request(post(server.url)), return_exceptions=True
            )
            await transport.aclose()
            return outcome + later, server

    (outcome, later), _ = run(go())
    assert isinstance(outcome, httpx.Response | httpx.PoolTimeout)
    assert isinstance(later, httpx.Response), f"the permit was lost: {later!r}"
    assert later.status_code == 201


def test_a_request_start_refuses_leaves_no_connection_behind(run: Any) -> None:
    async def go() -> Server:
        async with Server(respond(CREATED)) as server:
            transport = lean(server.url)
            await transport.handle_async_request(post(server.url))
            request = post(server.url)
            request.headers["X-Injected"] = "a\r\nX-Evil: 1"
            with pytest.raises(httpx.LocalProtocolError):
                transport.start(request)
            assert (await transport.handle_async_request(post(server.url))).status_code == 201
            # The idle connection start() took was either used again or closed, not dropped
            # from the pool while still open.
            await until(lambda: server.connections - server.ended == 1)
            await transport.aclose()
            return server

    server = run(go())
    assert len(server.requests) == 2
