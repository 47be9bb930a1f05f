"""Tests for worker.didww: the exact request, every HTTP outcome mapped to its error class, the
https rule for SMSQ_DIDWW_URL and the choice of transport when a proxy is configured.

Most tests post through httpx.MockTransport; a few go over loopback sockets, through
LeanTransport, where what matters is what reaches the wire or the start() path.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import socket
import traceback
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from smsq_testing import PASSWORD, make_settings

from ledger.errors import ConfigError
from ledger.settings import TrunkConfig
from ops.simulator import Simulator, SimulatorConfig
from web.transport import Exchange, LeanTransport
from worker.didww import DidwwClient, raise_for_response
from worker.errors import (
    Ambiguous,
    AuthFailed,
    DidwwError,
    Halting,
    Misdirected,
    NotSent,
    RateLimited,
    Rejected,
    Retryable,
    ServerError,
)

Handler = Callable[[httpx.Request], httpx.Response]
MESSAGE_ID = "550e8400-e29b-41d4-a716-446655440000"
CREATED = {"data": {"type": "outbound_messages", "id": MESSAGE_ID}}
SOURCE, DESTINATION, TEXT = "37041123456", "37041654321", "Hello World!"
DOCUMENT = (
    b'{"data":{"type":"outbound_messages","attributes":'
    b'{"destination":"37041654321","source":"37041123456","content":"Hello World!"}}}'
)
AUTHORIZATION = b"Basic " + base64.b64encode(f"u:{PASSWORD}".encode())
SECRET_FORMS = [PASSWORD, AUTHORIZATION.decode(), AUTHORIZATION.decode().removeprefix("Basic ")]
# Long enough for anything on loopback; short enough that a hang fails the test quickly.
WAIT_S = 5.0


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy from the developer's shell may change which transport a client picks."""
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)


def trunk(**overrides: Any) -> TrunkConfig:
    return make_settings(**overrides).trunks()["default"]


def client_for(transport: httpx.AsyncBaseTransport | None = None, **overrides: Any) -> DidwwClient:
    return DidwwClient(
        trunk(**overrides),
        max_connections=4,
        connect_timeout_s=WAIT_S,
        read_timeout_s=WAIT_S,
        transport=transport,
    )


def errors_body(detail: str, status: int) -> dict[str, Any]:
    return {"errors": [{"title": "Error", "detail": detail, "code": str(status)}]}


def call(handler: Handler, method: str = "send", **overrides: Any) -> Any:
    """Run one client call against a mock transport; returns its result."""

    async def go() -> Any:
        client = client_for(httpx.MockTransport(handler), **overrides)
        try:
            if method == "probe":
                return await client.probe()
            return await client.send(client.request(SOURCE, DESTINATION, TEXT))
        finally:
            await client.aclose()

    return asyncio.run(go())


def raised(handler: Handler, method: str = "send", **overrides: Any) -> DidwwError:
    with pytest.raises(DidwwError) as info:
        call(handler, method, **overrides)
    return info.value


def answer(status: int, **kwargs: Any) -> Handler:
    return lambda request: httpx.Response(status, request=request, **kwargs)


# --- The request -----------------------------------------------------------------------------


def test_send_posts_the_exact_jsonapi_request() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json=CREATED)

    assert call(handler) == MESSAGE_ID
    [request] = seen
    assert request.method == "POST"
    assert str(request.url) == "http://didww.test/outbound_messages"
    assert request.headers.raw == [
        (b"Host", b"didww.test"),
        (b"Content-Type", b"application/vnd.api+json"),
        (b"Accept", b"application/vnd.api+json"),
        (b"Authorization", AUTHORIZATION),
        (b"Content-Length", str(len(DOCUMENT)).encode()),
    ]
    assert base64.b64decode(AUTHORIZATION.split()[1]) == b"u:pw-SECRET"
    assert request.content == DOCUMENT


def test_a_path_in_the_trunk_url_is_kept() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(201, json=CREATED)

    assert call(handler, didww_url="https://didww.test/api/") == MESSAGE_ID
    assert seen == ["https://didww.test/api/outbound_messages"]


@pytest.mark.parametrize(
    ("content", "encoded"),
    [
        ("Ačiū €", "Ačiū €".encode()),
        ("Привет 👋", "Привет 👋".encode()),
        ('say "hi"\\\n\tnow', b'say \\"hi\\"\\\\\\n\\tnow'),
        ("", b""),
    ],
    ids=["lithuanian-euro", "cyrillic-emoji", "escapes", "empty"],
)
def test_content_goes_out_as_utf8_json(content: str, encoded: bytes) -> None:
    seen: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.content)
        return httpx.Response(201, json=CREATED)

    async def go() -> str:
        client = client_for(httpx.MockTransport(handler))
        try:
            return await client.send(client.request("1", "2", content))
        finally:
            await client.aclose()

    assert asyncio.run(go()) == MESSAGE_ID
    assert seen == [
        b'{"data":{"type":"outbound_messages","attributes":'
        b'{"destination":"2","source":"1","content":"' + encoded + b'"}}}'
    ]
    assert json.loads(seen[0])["data"]["attributes"]["content"] == content


# --- Over loopback, through LeanTransport ----------------------------------------------------


class RawServer:
    """A loopback HTTP/1.1 server that records each request's bytes and answers it with the
    next of `answers` (None: close the connection without answering)."""

    def __init__(self, *answers: bytes | None) -> None:
        self.answers = list(answers)
        self.requests: list[bytes] = []
        self._writers: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._server.close()
        for writer in self._writers:  # each handler then ends at the EOF
            writer.transport.abort()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                body = await reader.readexactly(int(length.group(1)) if length else 0)
                self.requests.append(head + body)
                reply = self.answers.pop(0) if self.answers else None
                if reply is None:
                    break
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


def http_201(body: bytes = b'{"data":{"type":"outbound_messages","id":"m-1"}}') -> bytes:
    return b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def run_with_server(
    go: Callable[[RawServer, DidwwClient], Coroutine[Any, Any, Any]], *answers: bytes | None
) -> RawServer:
    async def main() -> RawServer:
        async with RawServer(*answers) as server:
            client = client_for(didww_url=server.url)
            try:
                await go(server, client)
            finally:
                await client.aclose()
            return server

    return asyncio.run(main())


def test_the_request_on_the_wire_is_exactly_the_jsonapi_post() -> None:
    async def go(server: RawServer, client: DidwwClient) -> None:
        assert isinstance(client._transport, LeanTransport)
        assert await client.send(client.request(SOURCE, DESTINATION, TEXT)) == "m-1"

    server = run_with_server(go, http_201())
    assert server.requests == [
        b"POST /outbound_messages HTTP/1.1\r\n"
        + f"Host: 127.0.0.1:{server.port}\r\n".encode()
        + b"Content-Type: application/vnd.api+json\r\n"
        + b"Accept: application/vnd.api+json\r\n"
        + b"Authorization: "
        + AUTHORIZATION
        + b"\r\n"
        + f"Content-Length: {len(DOCUMENT)}\r\n\r\n".encode()
        + DOCUMENT
    ]


def test_start_writes_on_an_idle_connection_and_send_reads_its_answer() -> None:
    async def go(server: RawServer, client: DidwwClient) -> None:
        # No connection yet: nothing can be written without waiting.
        first = client.request(SOURCE, DESTINATION, TEXT)
        assert client.start(first) is None
        assert await client.send(first) == "m-1"
        second = client.request(SOURCE, DESTINATION, "second")
        exchange = client.start(second)
        assert isinstance(exchange, Exchange)
        assert await client.send(second, exchange) == "m-2"

    server = run_with_server(go, http_201(), http_201(b'{"data":{"id":"m-2"}}'))
    assert len(server.requests) == 2
    assert server.requests[1].endswith(b'"content":"second"}}}')


def test_start_and_send_with_the_simulator() -> None:
    async def go() -> dict[str, Any]:
        async with Simulator(SimulatorConfig(username="u", password=PASSWORD)) as simulator:
            client = client_for(didww_url=simulator.url)
            ids = [await client.send(client.request(SOURCE, DESTINATION, TEXT))]
            request = client.request(SOURCE, DESTINATION, TEXT)
            exchange = client.start(request)
            assert exchange is not None
            ids.append(await client.send(request, exchange))
            assert await client.probe() is True
            await client.aclose()
            assert len(set(ids)) == 2 and all(ids)
            stats = simulator.stats
            async with asyncio.timeout(WAIT_S):
                while simulator.stats["connections_open"]:
                    await asyncio.sleep(0.005)
            return stats

    stats = asyncio.run(go())
    assert (stats["accepted"], stats["connections_total"]) == (2, 1)


def test_probe_with_wrong_credentials_at_the_simulator_is_false() -> None:
    async def go() -> bool:
        async with Simulator(SimulatorConfig(username="u", password="other")) as simulator:
            client = client_for(didww_url=simulator.url)
            try:
                return await client.probe()
            finally:
                await client.aclose()

    assert asyncio.run(go()) is False


def test_a_drop_after_writing_over_loopback_is_ambiguous() -> None:
    async def go(server: RawServer, client: DidwwClient) -> None:
        request = client.request(SOURCE, DESTINATION, TEXT)
        with pytest.raises(Ambiguous, match="RemoteProtocolError"):
            await client.send(request)
        # And the same through start(): the answer to a written request never came.
        await client.send(client.request(SOURCE, DESTINATION, TEXT))
        request = client.request(SOURCE, DESTINATION, TEXT)
        exchange = client.start(request)
        assert exchange is not None
        with pytest.raises(Ambiguous, match="RemoteProtocolError"):
            await client.send(request, exchange)

    server = run_with_server(go, None, http_201(), None)
    assert len(server.requests) == 3


def test_a_refused_connection_over_loopback_is_not_sent() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{unused.getsockname()[1]}"

    async def go() -> None:
        client = client_for(didww_url=url)
        with pytest.raises(NotSent, match="ConnectError"):
            await client.send(client.request(SOURCE, DESTINATION, TEXT))
        await client.aclose()

    asyncio.run(go())


def test_a_request_start_refuses_to_write_is_not_sent() -> None:
    """LocalProtocolError means the request was refused before a byte of it was written
    (worker.errors: Retryable), whether send() or start() meets it."""

    async def go(server: RawServer, client: DidwwClient) -> None:
        await client.send(client.request(SOURCE, DESTINATION, TEXT))  # one idle connection
        request = client.request(SOURCE, DESTINATION, TEXT)
        request.headers["X-Injected"] = "a\r\nX-Evil: 1"
        with pytest.raises(NotSent):
            client.start(request)

    server = run_with_server(go, http_201())
    assert len(server.requests) == 1


def test_start_with_a_mock_transport_is_none() -> None:
    async def go() -> None:
        client = client_for(httpx.MockTransport(lambda r: httpx.Response(201, json=CREATED)))
        request = client.request(SOURCE, DESTINATION, TEXT)
        assert client.start(request) is None
        assert await client.send(request) == MESSAGE_ID
        await client.aclose()

    asyncio.run(go())


# --- Every status, mapped ---------------------------------------------------------------------

STATUS_CLASSES: list[tuple[int, type[DidwwError]]] = [
    (100, Ambiguous),
    (102, Ambiguous),
    (200, Ambiguous),
    (202, Ambiguous),
    (203, Ambiguous),
    (204, Ambiguous),
    (206, Ambiguous),
    (299, Ambiguous),
    (300, Misdirected),
    (301, Misdirected),
    (302, Misdirected),
    (303, Misdirected),
    (304, Misdirected),
    (307, Misdirected),
    (308, Misdirected),
    (400, Rejected),
    (401, AuthFailed),
    (402, Rejected),
    (403, Misdirected),
    (404, Misdirected),
    (405, Misdirected),
    (406, Rejected),
    (407, Misdirected),
    (408, ServerError),
    (409, Rejected),
    (410, Rejected),
    (411, Rejected),
    (413, Rejected),
    (414, Rejected),
    (415, Rejected),
    (418, Rejected),
    (422, Rejected),
    (429, RateLimited),
    (431, Rejected),
    (451, Rejected),
    (499, Rejected),
    (500, ServerError),
    (501, Ambiguous),
    (502, Ambiguous),
    (503, ServerError),
    (504, Ambiguous),
    (505, Ambiguous),
    (507, Ambiguous),
    (511, Ambiguous),
    (520, Ambiguous),
    (599, Ambiguous),
]


@pytest.mark.parametrize(
    ("status", "expected"), STATUS_CLASSES, ids=[str(s) for s, _ in STATUS_CLASSES]
)
def test_every_status_maps_to_its_error_class(status: int, expected: type[DidwwError]) -> None:
    error = raised(answer(status, json=errors_body("Some detail", status)))
    assert type(error) is expected
    assert error.status == status
    assert isinstance(error, Retryable) == (expected in (ServerError, RateLimited))
    assert isinstance(error, Halting) == (expected in (AuthFailed, Misdirected))
    assert error.detail  # never empty: it is what the operator reads


@pytest.mark.parametrize("status", [400, 415, 422])
def test_a_rejection_carries_didww_detail_alone(status: int) -> None:
    error = raised(answer(status, json=errors_body("Invalid request", status)))
    assert type(error) is Rejected
    assert error.detail == "Invalid request"


@pytest.mark.parametrize("status", [402, 409, 413, 418])
def test_an_unexpected_4xx_is_rejected_naming_the_status(status: int) -> None:
    error = raised(answer(status, json=errors_body("Nope", status)))
    assert type(error) is Rejected
    assert error.detail == f"unexpected HTTP {status}: Nope"


@pytest.mark.parametrize("status", [408, 500, 503])
def test_a_retryable_server_answer_carries_its_detail(status: int) -> None:
    error = raised(answer(status, json=errors_body("Try later", status)))
    assert type(error) is ServerError
    assert error.detail == "Try later"


@pytest.mark.parametrize("status", [501, 502, 504, 520])
def test_an_ambiguous_5xx_names_the_status_and_detail(status: int) -> None:
    error = raised(answer(status, json=errors_body("Gateway trouble", status)))
    assert type(error) is Ambiguous
    assert error.detail == f"HTTP {status}: Gateway trouble"


@pytest.mark.parametrize("status", [100, 200, 202, 204])
def test_a_success_other_than_201_is_ambiguous(status: int) -> None:
    error = raised(answer(status, json=CREATED))
    assert type(error) is Ambiguous
    assert error.detail == f"unexpected HTTP {status} instead of 201"


def test_401_is_auth_failed_with_didww_detail() -> None:
    error = raised(answer(401, json=errors_body("Authorization failed", 401)))
    assert type(error) is AuthFailed
    assert error.detail == "Authorization failed"


def test_details_are_joined_and_titles_stand_in() -> None:
    body = {
        "errors": [
            {"detail": "bad destination"},
            {"title": "Bad source"},
            "not an object",
            {"detail": "bad content"},
        ]
    }
    error = raised(answer(400, json=body))
    assert isinstance(error, Rejected)
    assert error.detail == "bad destination; Bad source; bad content"


@pytest.mark.parametrize(
    ("errors", "expected"),
    [
        ([{"code": "1001"}], "HTTP 400"),
        ([{"detail": "", "title": None}], "HTTP 400"),
        ([{"detail": "bad destination"}, {"status": "400"}], "bad destination"),
    ],
    ids=["code-only", "empty", "mixed"],
)
def test_an_error_object_without_detail_or_title_adds_nothing(
    errors: list[dict[str, Any]], expected: str
) -> None:
    error = raised(answer(400, json={"errors": errors}))
    assert type(error) is Rejected
    assert error.detail == expected


def test_a_long_detail_is_cut_at_300_characters() -> None:
    error = raised(answer(400, json=errors_body("x" * 1000, 400)))
    assert error.detail == "x" * 300


@pytest.mark.parametrize(
    "body",
    [
        b"<html>oops</html>",
        b"",
        b'{"errors": 5}',
        b'{"errors": true}',
        b'{"errors": "x"}',
        b'{"errors": []}',
        b'{"errors": null}',
        b"null",
        b"[]",
        b"\xff\xfe",
    ],
)
def test_an_odd_error_body_names_the_status(body: bytes) -> None:
    error = raised(answer(400, content=body))
    assert type(error) is Rejected
    assert error.detail == "HTTP 400"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"data": {"type": "outbound_messages", "id": "abc"}}', "abc"),
        (b'{"data": {"id": 12345}}', "12345"),
        (b'{"data": {"id": "0"}}', "0"),
    ],
    ids=["string", "integer", "string-zero"],
)
def test_201_returns_the_message_id_as_a_string(body: bytes, expected: str) -> None:
    assert call(answer(201, content=body)) == expected


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"",
        b"{}",
        b'{"data": {}}',
        b'{"data": null}',
        b"[]",
        b'{"data": "x"}',
        b'{"data": []}',
        b'{"data": {"id": null}}',
        b'{"data": {"id": ""}}',
        b'{"data": {"id": {"a": 1}}}',
        b'{"data": {"id": ["a"]}}',
        b'{"data": {"id": true}}',
        b'{"data": {"id": false}}',
        b'{"data": {"id": 0}}',
        b'{"data": {"id": 1.5}}',
    ],
    ids=[
        "not-json",
        "no-body",
        "empty",
        "no-id",
        "null-data",
        "list",
        "string-data",
        "list-data",
        "null-id",
        "empty-id",
        "object-id",
        "list-id",
        "true-id",
        "false-id",
        "zero-id",
        "float-id",
    ],
)
def test_201_without_a_readable_id_is_ambiguous(body: bytes) -> None:
    error = raised(answer(201, content=body))
    assert type(error) is Ambiguous
    assert error.status == 201
    assert error.detail == "201 without a readable message id"


def test_an_undecodable_answer_is_ambiguous() -> None:
    error = raised(answer(201, headers={"Content-Encoding": "gzip"}, content=b"not gzip"))
    assert type(error) is Ambiguous
    assert "DecodingError" in error.detail


@hsettings(max_examples=200, deadline=None, database=None)
@given(
    status=st.sampled_from([201, 400, 401, 415, 429, 503]) | st.integers(100, 599),
    body=st.one_of(
        st.binary(max_size=100),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=10),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.sampled_from(["data", "id", "errors", "detail"]), inner)
            ),
            max_leaves=8,
        ).map(lambda v: json.dumps(v).encode()),
    ),
    retry_after=st.none()
    | st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
    | st.sampled_from(["0", "1.5", "-3", "Wed, 21 Oct 2015 07:28:00 GMT", "inf", "nan"]),
)
def test_every_response_maps_to_an_id_or_a_didww_error(
    status: int, body: bytes, retry_after: str | None
) -> None:
    headers = {"Retry-After": retry_after} if retry_after else {}
    response = httpx.Response(status, content=body, headers=headers)
    try:
        message_id = raise_for_response(response)
    except DidwwError as exc:
        assert status != 201 or type(exc) is Ambiguous
        assert exc.detail
        if isinstance(exc, RateLimited) and exc.retry_after_s is not None:
            assert exc.retry_after_s >= 0.0
    else:
        assert status == 201
        assert isinstance(message_id, str) and message_id not in {"", "None"}


# --- Misdirected ------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_names_the_status_path_and_location_without_its_query(status: int) -> None:
    location = f"https://other.test/v2/outbound_messages?password={PASSWORD}&x=1"
    error = raised(answer(status, headers={"Location": location}))
    assert type(error) is Misdirected
    assert error.detail == (
        f"HTTP {status} from POST /outbound_messages"
        " (Location: https://other.test/v2/outbound_messages): check SMSQ_DIDWW_URL"
    )


def test_a_relative_location_is_named_without_its_query() -> None:
    error = raised(answer(302, headers={"Location": "/login?next=/outbound_messages"}))
    assert type(error) is Misdirected
    assert "(Location: /login)" in error.detail


@pytest.mark.parametrize("status", [403, 404, 405, 407])
def test_a_wrong_place_names_the_status_and_path(status: int) -> None:
    error = raised(answer(status, json=errors_body("Not here", status)))
    assert type(error) is Misdirected
    assert error.detail == f"HTTP {status} from POST /outbound_messages: check SMSQ_DIDWW_URL"


def test_misdirected_names_the_path_of_a_trunk_url_with_a_prefix() -> None:
    # As LeanTransport answers: the response knows its request.
    error = raised(answer(404), didww_url="https://didww.test/api")
    assert type(error) is Misdirected
    assert "POST /api/outbound_messages" in error.detail


def test_misdirected_names_the_real_path_when_the_transport_leaves_out_the_request() -> None:
    """httpx's own AsyncHTTPTransport (the proxy path) and MockTransport return responses
    without their request; the detail must still name the path posted to."""
    error = raised(lambda request: httpx.Response(404), didww_url="https://didww.test/api")
    assert type(error) is Misdirected
    assert "POST /api/outbound_messages" in error.detail


@pytest.mark.parametrize("location", ["http://[::1", "https://didww.test:99999999/x"])
def test_a_malformed_location_is_still_misdirected(location: str) -> None:
    error = raised(answer(302, headers={"Location": location}))
    assert type(error) is Misdirected
    assert error.status == 302


# --- 429 and Retry-After ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [("7", 7.0), ("1.5", 1.5), ("0", 0.0), ("-3", 0.0), ("120", 120.0)],
)
def test_429_with_seconds_retry_after(header: str, expected: float) -> None:
    error = raised(answer(429, headers={"Retry-After": header}, json=errors_body("slow", 429)))
    assert type(error) is RateLimited
    assert error.retry_after_s == expected
    assert error.detail == "slow"
    assert error.status == 429


def test_429_with_an_http_date_retry_after() -> None:
    header = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    error = raised(answer(429, headers={"Retry-After": header}))
    assert isinstance(error, RateLimited)
    assert error.retry_after_s is not None
    assert 28.0 <= error.retry_after_s <= 31.0


def test_429_with_a_date_in_the_past_waits_zero() -> None:
    header = format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)
    error = raised(answer(429, headers={"Retry-After": header}))
    assert isinstance(error, RateLimited)
    assert error.retry_after_s == 0.0


@pytest.mark.parametrize("header", [None, "soon", "", "Wed, 99 Foo 2015"])
def test_429_without_a_usable_retry_after(header: str | None) -> None:
    headers = {"Retry-After": header} if header is not None else {}
    error = raised(answer(429, headers=headers))
    assert isinstance(error, RateLimited)
    assert error.retry_after_s is None
    assert error.detail == "HTTP 429"


@pytest.mark.parametrize("zone", ["-0000", ""], ids=["minus-zero", "no-zone"])
def test_429_with_a_date_without_a_usable_zone_is_still_rate_limited(zone: str) -> None:
    """RFC 5322 reads "-0000" (and no zone) as "local time unknown"; the answer is still a 429."""
    when = datetime.now(UTC) + timedelta(seconds=30)
    header = (when.strftime("%a, %d %b %Y %H:%M:%S ") + zone).strip()
    error = raised(answer(429, headers={"Retry-After": header}))
    assert isinstance(error, RateLimited)
    assert error.retry_after_s is None or 0.0 <= error.retry_after_s <= 31.0


# --- Transport errors -------------------------------------------------------------------------


def _raising(exc_type: type[httpx.TransportError]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        # The message carries the secret, as a URL with credentials might.
        raise exc_type(f"boom at http://u:{PASSWORD}@didww.test", request=request)

    return handler


BEFORE_WRITING = [
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.WriteError,
    httpx.WriteTimeout,
    httpx.LocalProtocolError,
]
AFTER_WRITING = [httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError]


@pytest.mark.parametrize("exc_type", BEFORE_WRITING)
def test_errors_before_the_request_was_written_are_not_sent(
    exc_type: type[httpx.TransportError],
) -> None:
    error = raised(_raising(exc_type))
    assert type(error) is NotSent
    assert isinstance(error, Retryable)
    assert error.detail.startswith(exc_type.__name__)


@pytest.mark.parametrize("exc_type", AFTER_WRITING)
def test_errors_after_the_request_was_written_are_ambiguous(
    exc_type: type[httpx.TransportError],
) -> None:
    error = raised(_raising(exc_type))
    assert type(error) is Ambiguous
    assert not isinstance(error, Retryable)
    assert error.detail == f"{exc_type.__name__}: no answer after the request was sent"


# --- probe ------------------------------------------------------------------------------------


def test_probe_true_on_400_and_never_a_real_message() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(400, json=errors_body("Invalid request", 400))

    assert call(handler, "probe") is True
    [request] = seen
    assert request.method == "POST"
    assert str(request.url) == "http://didww.test/outbound_messages"
    assert request.content == b'{"data":{"type":"outbound_messages","attributes":{}}}'
    assert request.headers["authorization"] == AUTHORIZATION.decode()
    assert request.headers["content-type"] == "application/vnd.api+json"


@pytest.mark.parametrize("status", [415, 422])
def test_probe_true_on_other_rejections(status: int) -> None:
    assert call(answer(status, json=errors_body("Invalid", status)), "probe") is True


def test_probe_false_on_401() -> None:
    assert call(answer(401, json=errors_body("Authorization failed", 401)), "probe") is False


@pytest.mark.parametrize(
    ("handler", "expected"),
    [
        (answer(500), ServerError),
        (answer(503), ServerError),
        (answer(429, headers={"Retry-After": "3"}), RateLimited),
        (answer(502), Ambiguous),
        (answer(404), Misdirected),
        (answer(302, headers={"Location": "https://x.test/"}), Misdirected),
        (_raising(httpx.ConnectError), NotSent),
        (_raising(httpx.ReadTimeout), Ambiguous),
    ],
    ids=["500", "503", "429", "502", "404", "302", "connect-error", "read-timeout"],
)
def test_probe_raises_when_it_learns_nothing_about_the_credentials(
    handler: Handler, expected: type[DidwwError]
) -> None:
    error = raised(handler, "probe")
    assert type(error) is expected


# --- Secrets ----------------------------------------------------------------------------------


LEAK_CASES: dict[str, Handler] = {
    "400": answer(400, json=errors_body("Invalid request", 400)),
    "401": answer(401, json=errors_body("Authorization failed", 401)),
    "302": answer(302, headers={"Location": f"https://x.test/?p={PASSWORD}"}),
    "307": answer(307, headers={"Location": f"/login?auth={AUTHORIZATION.decode()}"}),
    "403": answer(403),
    "407": answer(407, headers={"Proxy-Authenticate": "Basic"}),
    "415": answer(415),
    "418": answer(418),
    "429": answer(429, headers={"Retry-After": "1"}),
    "502": answer(502),
    "503": answer(503),
    "204": answer(204),
    "201-garbage": answer(201, content=b"garbage"),
    **{exc_type.__name__: _raising(exc_type) for exc_type in BEFORE_WRITING + AFTER_WRITING},
}


@pytest.mark.parametrize("handler", LEAK_CASES.values(), ids=LEAK_CASES.keys())
def test_no_error_text_contains_the_password(handler: Handler) -> None:
    error = raised(handler)
    # What a traceback would print, chained causes included.
    printed = "".join(traceback.format_exception(error))
    for text in (str(error), repr(error), error.detail, printed):
        for secret in SECRET_FORMS:
            assert secret not in text


# --- The https rule ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://sms-out.didww.com",
        "https://10.0.0.1",
        "https://simulator:8090",
        "http://127.0.0.1:8090",
        "http://127.0.0.2",
        "http://[::1]:8090",
        "http://localhost:8090",
        "http://LOCALHOST",
    ],
)
def test_https_and_loopback_urls_are_accepted(url: str) -> None:
    make_settings(didww_url=url).check_url_security()


@pytest.mark.parametrize(
    "url",
    [
        "http://simulator:8090",
        "http://10.0.0.1",
        "http://sms-out.didww.com",
        "http://127.0.0.1.nip.io",
        "http://localhost.evil.test",
        "http://[::2]",
    ],
)
def test_plain_http_to_anything_but_loopback_is_refused(url: str) -> None:
    settings = make_settings(didww_url=url)
    with pytest.raises(ConfigError) as info:
        settings.check_url_security()
    message = str(info.value)
    assert message.startswith("SMSQ_DIDWW_URL: must be https://")
    assert "\n" not in message
    assert "SMSQ_ALLOW_INSECURE_URL" in message
    assert PASSWORD not in message
    make_settings(didww_url=url, allow_insecure_url=True).check_url_security()


# --- Proxies ----------------------------------------------------------------------------------


def transport_kind(url: str) -> tuple[type[httpx.AsyncBaseTransport], dict[str, Any]]:
    async def go() -> tuple[type[httpx.AsyncBaseTransport], dict[str, Any]]:
        client = DidwwClient(
            trunk(didww_url=url), max_connections=3, connect_timeout_s=2.0, read_timeout_s=7.0
        )
        kind = type(client._transport)
        extensions = dict(client.request(SOURCE, DESTINATION, TEXT).extensions)
        await client.aclose()
        return kind, extensions

    return asyncio.run(go())


@pytest.fixture
def proxy_env(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    def set_env(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    return set_env


def test_without_a_proxy_the_lean_transport_is_used() -> None:
    kind, extensions = transport_kind("https://didww.test")
    assert kind is LeanTransport
    assert extensions == {}  # LeanTransport keeps its own timeouts


@pytest.mark.parametrize("name", ["HTTPS_PROXY", "https_proxy", "ALL_PROXY"])
def test_a_proxy_for_the_didww_url_selects_httpx_transport(
    proxy_env: Callable[..., None], name: str
) -> None:
    proxy_env(**{name: "http://proxy.test:3128"})
    kind, extensions = transport_kind("https://didww.test")
    assert issubclass(kind, httpx.AsyncHTTPTransport)
    # httpx's transport takes its timeouts from each request.
    assert extensions == {"timeout": {"connect": 2.0, "read": 7.0, "write": 7.0, "pool": 2.0}}


@pytest.mark.parametrize("no_proxy", ["didww.test", ".didww.test", "other.test,didww.test", "*"])
def test_no_proxy_covering_the_host_keeps_the_lean_transport(
    proxy_env: Callable[..., None], no_proxy: str
) -> None:
    proxy_env(HTTPS_PROXY="http://proxy.test:3128", NO_PROXY=no_proxy)
    assert transport_kind("https://didww.test")[0] is LeanTransport


def test_no_proxy_for_another_host_leaves_the_proxy_in_use(proxy_env: Callable[..., None]) -> None:
    proxy_env(HTTPS_PROXY="http://proxy.test:3128", NO_PROXY="other.test")
    assert issubclass(transport_kind("https://didww.test")[0], httpx.AsyncHTTPTransport)


def test_an_https_proxy_does_not_apply_to_an_http_url(proxy_env: Callable[..., None]) -> None:
    proxy_env(HTTPS_PROXY="http://proxy.test:3128")
    assert transport_kind("http://127.0.0.1:8090")[0] is LeanTransport


def test_a_proxy_given_without_a_scheme_is_used_as_http(proxy_env: Callable[..., None]) -> None:
    """HTTPS_PROXY=host:port is a common form (curl and httpx itself read it as http://)."""
    proxy_env(HTTPS_PROXY="proxy.test:3128")
    assert issubclass(transport_kind("https://didww.test")[0], httpx.AsyncHTTPTransport)
