"""Tests for worker.didww: the exact request, and every HTTP outcome mapped to its error."""

from __future__ import annotations

import asyncio
import base64
import json
import traceback
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from smsq_testing import PASSWORD, make_settings

from worker.didww import DidwwClient, raise_for_response
from worker.errors import (
    Ambiguous,
    AuthFailed,
    DidwwError,
    NotSent,
    RateLimited,
    Rejected,
    Retryable,
    ServerError,
)

Handler = Callable[[httpx.Request], httpx.Response]
MESSAGE_ID = "550e8400-e29b-41d4-a716-446655440000"
CREATED = {"data": {"type": "outbound_messages", "id": MESSAGE_ID}}


def errors_body(detail: str, status: int) -> dict[str, Any]:
    return {"errors": [{"title": "Error", "detail": detail, "code": str(status)}]}


def call(handler: Handler, method: str = "send") -> Any:
    """Run one client call against a mock transport; returns its result."""

    async def go() -> Any:
        client = DidwwClient(make_settings(), transport=httpx.MockTransport(handler))
        try:
            if method == "probe":
                return await client.probe()
            return await client.send("37041123456", "37041654321", "Hello World!")
        finally:
            await client.aclose()

    return asyncio.run(go())


def raised(handler: Handler, method: str = "send") -> DidwwError:
    with pytest.raises(DidwwError) as info:
        call(handler, method)
    return info.value


def test_send_posts_the_exact_jsonapi_request() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json=CREATED)

    assert call(handler) == MESSAGE_ID
    assert len(seen) == 1
    request = seen[0]
    assert request.method == "POST"
    assert str(request.url) == "http://didww.test/outbound_messages"
    assert request.headers["content-type"] == "application/vnd.api+json"
    expected_auth = base64.b64encode(f"u:{PASSWORD}".encode()).decode()
    assert request.headers["authorization"] == f"Basic {expected_auth}"
    assert json.loads(request.content) == {
        "data": {
            "type": "outbound_messages",
            "attributes": {
                "destination": "37041654321",
                "source": "37041123456",
                "content": "Hello World!",
            },
        }
    }


def test_send_keeps_non_ascii_content_as_utf8() -> None:
    seen: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.content)
        return httpx.Response(201, json=CREATED)

    async def go() -> str:
        client = DidwwClient(make_settings(), transport=httpx.MockTransport(handler))
        try:
            return await client.send("1", "2", "Ačiū €")
        finally:
            await client.aclose()

    assert asyncio.run(go()) == MESSAGE_ID
    assert json.loads(seen[0].decode("utf-8"))["data"]["attributes"]["content"] == "Ačiū €"


@pytest.mark.parametrize("status", [400, 415])
def test_400_and_415_are_rejected_with_didww_detail(status: int) -> None:
    error = raised(lambda _: httpx.Response(status, json=errors_body("Invalid request", status)))
    assert type(error) is Rejected
    assert error.status == status
    assert error.detail == "Invalid request"
    assert not isinstance(error, Retryable)


def test_rejected_joins_several_details() -> None:
    body = {"errors": [{"detail": "bad destination"}, {"detail": "bad source"}]}
    error = raised(lambda _: httpx.Response(400, json=body))
    assert isinstance(error, Rejected)
    assert error.detail == "bad destination; bad source"


def test_rejected_without_a_readable_body_names_the_status() -> None:
    error = raised(lambda _: httpx.Response(400, content=b"<html>oops</html>"))
    assert isinstance(error, Rejected)
    assert error.detail == "HTTP 400"


@pytest.mark.parametrize(
    "body", [b'{"errors": 5}', b'{"errors": true}', b'{"errors": "x"}', b"null", b"\xff\xfe"]
)
def test_rejected_with_an_odd_errors_member_still_maps(body: bytes) -> None:
    error = raised(lambda _: httpx.Response(400, content=body))
    assert isinstance(error, Rejected)
    assert error.detail == "HTTP 400"


@hsettings(max_examples=200, deadline=None)
@given(
    status=st.sampled_from([201, 400, 401, 415, 429, 503]) | st.integers(200, 599),
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
        assert status != 201 or isinstance(exc, Ambiguous)
    else:
        assert status == 201
        assert isinstance(message_id, str) and message_id not in {"", "None"}


def test_401_is_auth_failed() -> None:
    error = raised(lambda _: httpx.Response(401, json=errors_body("Authorization failed", 401)))
    assert type(error) is AuthFailed
    assert error.detail == "Authorization failed"
    assert not isinstance(error, Retryable)


def test_429_with_seconds_retry_after() -> None:
    error = raised(
        lambda _: httpx.Response(429, headers={"Retry-After": "7"}, json=errors_body("slow", 429))
    )
    assert type(error) is RateLimited
    assert isinstance(error, Retryable)
    assert error.retry_after_s == 7.0


def test_429_with_http_date_retry_after() -> None:
    when = datetime.now(UTC) + timedelta(seconds=30)
    header = format_datetime(when, usegmt=True)
    error = raised(lambda _: httpx.Response(429, headers={"Retry-After": header}))
    assert isinstance(error, RateLimited)
    assert error.retry_after_s is not None
    assert 28.0 <= error.retry_after_s <= 31.0


def test_429_with_a_date_in_the_past_waits_zero() -> None:
    header = format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)
    error = raised(lambda _: httpx.Response(429, headers={"Retry-After": header}))
    assert isinstance(error, RateLimited)
    assert error.retry_after_s == 0.0


@pytest.mark.parametrize("header", [None, "soon", ""])
def test_429_without_a_usable_retry_after(header: str | None) -> None:
    headers = {"Retry-After": header} if header is not None else {}
    error = raised(lambda _: httpx.Response(429, headers=headers))
    assert isinstance(error, RateLimited)
    assert error.retry_after_s is None


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_is_server_error(status: int) -> None:
    error = raised(lambda _: httpx.Response(status, text="down"))
    assert type(error) is ServerError
    assert isinstance(error, Retryable)
    assert error.status == status


def _raising(exc_type: type[httpx.TransportError]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        # The message carries the secret, as a URL with credentials might.
        raise exc_type(f"boom at http://u:{PASSWORD}@didww.test", request=request)

    return handler


@pytest.mark.parametrize("exc_type", [httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout])
def test_errors_before_sending_are_not_sent(exc_type: type[httpx.TransportError]) -> None:
    error = raised(_raising(exc_type))
    assert type(error) is NotSent
    assert isinstance(error, Retryable)
    assert exc_type.__name__ in str(error)


@pytest.mark.parametrize("exc_type", [httpx.ReadTimeout, httpx.RemoteProtocolError])
def test_errors_after_sending_are_ambiguous(exc_type: type[httpx.TransportError]) -> None:
    error = raised(_raising(exc_type))
    assert type(error) is Ambiguous
    assert not isinstance(error, Retryable)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"{}",
        b'{"data": {}}',
        b'{"data": null}',
        b"[]",
        b'{"data": "x"}',
        b'{"data": {"id": null}}',
        b'{"data": {"id": ""}}',
        b'{"data": {"id": {"a": 1}}}',
        b'{"data": {"id": true}}',
    ],
    ids=[
        "not-json",
        "empty",
        "no-id",
        "null-data",
        "list",
        "string-data",
        "null-id",
        "empty-id",
        "object-id",
        "bool-id",
    ],
)
def test_201_without_a_readable_id_is_ambiguous(body: bytes) -> None:
    error = raised(lambda _: httpx.Response(201, content=body))
    assert type(error) is Ambiguous
    assert error.status == 201


def test_probe_true_on_400() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(400, json=errors_body("Invalid request", 400))

    assert call(handler, "probe") is True
    # The probe must never be a real message.
    assert json.loads(seen[0].content)["data"]["attributes"] == {}


def test_probe_false_on_401() -> None:
    handler = lambda _: httpx.Response(401, json=errors_body("Authorization failed", 401))  # noqa: E731
    assert call(handler, "probe") is False


def test_probe_raises_when_didww_cannot_answer() -> None:
    error = raised(lambda _: httpx.Response(503), "probe")
    assert isinstance(error, ServerError)


SECRET_FORMS = [PASSWORD, base64.b64encode(f"u:{PASSWORD}".encode()).decode()]


@pytest.mark.parametrize(
    "handler",
    [
        lambda r: httpx.Response(400, json=errors_body("Invalid request", 400)),
        lambda r: httpx.Response(401, json=errors_body("Authorization failed", 401)),
        lambda r: httpx.Response(415),
        lambda r: httpx.Response(418),
        lambda r: httpx.Response(429, headers={"Retry-After": "1"}),
        lambda r: httpx.Response(503),
        lambda r: httpx.Response(201, content=b"garbage"),
        _raising(httpx.ConnectError),
        _raising(httpx.ConnectTimeout),
        _raising(httpx.PoolTimeout),
        _raising(httpx.ReadTimeout),
        _raising(httpx.RemoteProtocolError),
        _raising(httpx.WriteError),
    ],
)
def test_no_error_text_contains_the_password(handler: Handler) -> None:
    error = raised(handler)
    # What a traceback would print, chained causes included.
    printed = "".join(traceback.format_exception(error))
    for text in (str(error), repr(error), error.detail, printed):
        for secret in SECRET_FORMS:
            assert secret not in text
