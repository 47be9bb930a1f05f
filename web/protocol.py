"""uvicorn's HTTP/1.1 protocol (httptools) with a read deadline: a request's headers and body
must arrive within SMSQ_HTTP_READ_TIMEOUT_S of its first byte (or of the connection, for the
first request), or the connection is closed. uvicorn has no such timeout of its own: a client
sending a byte every few seconds would hold its connection for ever.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = structlog.stdlib.get_logger("smsq.web")


class ReadDeadlineProtocol(HttpToolsProtocol):
    """Closes a connection whose request does not arrive whole within `read_timeout_s`."""

    read_timeout_s: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:
            self._arm()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._deadline = self.loop.call_later(self.read_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            client = f"{self.client[0]}:{self.client[1]}" if self.client else ""
            log.info("client_too_slow", client=client, read_timeout_s=self.read_timeout_s)
            self.transport.close()


def with_read_timeout(read_timeout_s: float) -> type[ReadDeadlineProtocol]:
    """The protocol class, for uvicorn's `http` option, with this read deadline."""
    return type("ReadDeadline", (ReadDeadlineProtocol,), {"read_timeout_s": read_timeout_s})
