"""A small HTTP/1.1 load generator: N keep-alive connections POST callback documents as fast
as they are answered, for a fixed time. The same tool measures the ingester and the bare
endpoint, so the comparison is fair whatever the tool costs.

python -m ops.bench.load URL [--duration-s 10] [--connections 32] [--warmup-s 1]
prints one JSON object: requests counted, 2xx answers, errors, 2xx per second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from urllib.parse import urlsplit

# Requests before this are not counted: connections are opening and caches are cold.
DEFAULT_WARMUP_S = 1.0
SOURCE = "37041123456"


def callback_body(connection: int, n: int) -> bytes:
    """A valid DIDWW callback for a DIDWW id nobody sent: the ingester keeps it as an orphan
    (a full write path: the id, an index by source and destination, the stats)."""
    attributes = {
        "time_start": "2026-01-01T00:00:00.000Z",
        "end_time": "2026-01-01T00:00:01.000Z",
        "destination": f"49{connection:03d}{n % 10_000_000:07d}",
        "source": SOURCE,
        "status": "Success",
        "code_id": None,
        "fragments_sent": 1,
    }
    data = {
        "type": "outbound_message_callbacks",
        "id": f"bench-{connection}-{n}",
        "attributes": attributes,
    }
    return json.dumps({"data": data}).encode()


async def _connection(
    host: str, port: int, path: bytes, number: int, stop_at: float, count_from: float,
    statuses: Counter[int],
) -> None:  # fmt: skip
    reader, writer = await asyncio.open_connection(host, port)
    head = b"POST %s HTTP/1.1\r\nhost: %s:%d\r\ncontent-type: application/vnd.api+json\r\n" % (
        path,
        host.encode(),
        port,
    )
    n = 0
    try:
        while (now := time.monotonic()) < stop_at:
            body = callback_body(number, n)
            n += 1
            writer.write(b"%scontent-length: %d\r\n\r\n%s" % (head, len(body), body))
            status_line = await reader.readuntil(b"\r\n")
            length = 0
            while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            if now >= count_from:
                statuses[int(status_line.split(b" ", 2)[1])] += 1
    finally:
        writer.close()


async def run(
    url: str, duration_s: float, connections: int, warmup_s: float = DEFAULT_WARMUP_S
) -> dict[str, object]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = (parts.path + ("?" + parts.query if parts.query else "")).encode()
    start = time.monotonic()
    count_from, stop_at = start + warmup_s, start + warmup_s + duration_s
    statuses: Counter[int] = Counter()
    await asyncio.gather(
        *(
            _connection(host, port, path, n, stop_at, count_from, statuses)
            for n in range(connections)
        )
    )
    total = sum(statuses.values())
    ok = sum(v for k, v in statuses.items() if 200 <= k < 300)
    return {
        "requests": total,
        "ok": ok,
        "errors": total - ok,
        "per_s": ok / duration_s,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.bench.load", description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--warmup-s", type=float, default=DEFAULT_WARMUP_S)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(run(args.url, args.duration_s, args.connections, args.warmup_s))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
