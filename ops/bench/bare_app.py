"""The yardstick for callback ingest: a bare Starlette endpoint that parses the same JSON and
answers 200, served by uvicorn with exactly the flags `python -m callbacks` uses.

Run: python -m ops.bench.bare_app --host 127.0.0.1 --port P
"""

from __future__ import annotations

import argparse
import json

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


async def receive(request: Request) -> Response:
    json.loads(await request.body())
    return JSONResponse({"result": "ok"})


async def health(_: Request) -> Response:
    return JSONResponse({"ok": True})


app = Starlette(
    routes=[
        Route("/callbacks", receive, methods=["POST"]),
        Route("/healthz", health, methods=["GET"]),
    ]
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ops.bench.bare_app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    # The same flags as callbacks/__main__.py, so only the application differs.
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        access_log=False,
        log_config=None,
        server_header=False,
    )


if __name__ == "__main__":
    main()
