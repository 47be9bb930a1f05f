"""The webhook benchmark's receiver: a bare ASGI app under uvicorn that reads each POST's body
and answers 204, and counts what it answered (GET /_count), so the receiving end costs as
little as a real application could and runs in a process of its own.

Run: python -m ops.bench.receiver --host 127.0.0.1 --port P
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Requests answered 204 so far.
answered = 0


async def app(scope: Message, receive: Receive, send: Send) -> None:
    global answered
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    if scope["method"] == "GET" and scope["path"] == "/_count":
        body = json.dumps({"answered": answered}).encode()
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    answered += 1
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ops.bench.receiver")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    # uvloop and httptools, no access log, no Date or Server header: the least work per
    # request uvicorn does, so the receiver is not what the benchmark measures.
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_config=None,
        server_header=False,
        date_header=False,
    )


if __name__ == "__main__":
    main()
