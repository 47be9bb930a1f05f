"""The real callback ingester process (`python -m callbacks`) under abuse: ten thousand generated
bodies, duplicates and late failures, callbacks for unknown ids, oversized bodies, and a token
that must never reach its log."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis

from callbacks.document import parse
from ledger.settings import Settings
from ledger.store import Ledger
from tests.integration.conftest import SOURCE, write_numbers
from tests.unit.smsq_testing import accept as accept_message
from tests.unit.smsq_testing import is_kept, kept_count

# Distinctive, so a leak anywhere in the log is found by a substring search.
TOKEN = "cbtok-Hq7wLk9Zr2"
JSONAPI = "application/vnd.api+json"
FINAL = {"Success": "sent", "Failed": "failed", "Routing Error": "failed"}
GOOD_MEDIA = [
    JSONAPI,
    "application/json",
    "application/json; charset=utf-8",
    "application/vnd.api+json; ext=bulk",
    "Application/JSON",
]
BAD_MEDIA = [
    None,
    "",
    "text/plain",
    "text/json",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/jsonx",
    "application/json-patch+json",
    "application/vnd.api+json+x",
    "json",
]
BAD_TOKENS: list[dict[str, str]] = [
    {},
    {"token": ""},
    {"token": TOKEN + "x"},
    {"token": TOKEN[:-1]},
    {"token": TOKEN.upper()},
    {"token": " " + TOKEN},
    {"token": TOKEN[::-1]},
    {"token": "BADTOK-0001"},
    {"Token": TOKEN},
    {"tok": TOKEN},
]
# A marker in every bad token that is not a variant of the real one: none may reach the log.
BAD_TOKEN_MARKER = "BADTOK"


def new_id(rng: random.Random) -> str:
    """A DIDWW message id (a UUID); random ones differ in ~30 characters, so no small
    mutation of one can turn it into another."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


# ------------------------------------------------------------------ messages DIDWW accepted


def accept(stack: Any, cid: str, didww_ids: dict[int, str]) -> None:
    """Claim and accept messages of `cid` under the given DIDWW ids through the ledger, as a
    worker does when DIDWW answers 201."""

    async def work() -> None:
        client = Redis.from_url(stack.redis_url)
        try:
            ledger = Ledger(client, Settings(_env_file=None, redis_url=stack.redis_url))
            for index, didww_id in sorted(didww_ids.items()):
                await accept_message(ledger, cid, didww_id, index)
        finally:
            await client.aclose()

    asyncio.run(work())


def campaign(stack: Any, path: Path, count: int, start: int = 0) -> tuple[str, list[str]]:
    numbers = write_numbers(path, count, start=start)
    cid = stack.send("--recipients", str(path), "--text", "hi")["campaign_id"]
    return cid, numbers


def doc(didww_id: Any, status: Any = "Success", **attrs: Any) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "time_start": "2024-05-01T10:00:00.123Z",
        "end_time": "2024-05-01T10:00:02.456Z",
        "destination": "37041654321",
        "source": SOURCE,
        "status": status,
        "code_id": None,
        "fragments_sent": 1,
    }
    attributes.update(attrs)
    return {
        "data": {"type": "outbound_message_callbacks", "id": didww_id, "attributes": attributes}
    }


def post(
    client: httpx.Client,
    body: bytes | dict[str, Any],
    content_type: str | None = JSONAPI,
    params: dict[str, str] | None = None,
) -> httpx.Response:
    content = json.dumps(body).encode() if isinstance(body, dict) else body
    headers = {"content-type": content_type} if content_type is not None else {}
    return client.post(
        "/callbacks",
        content=content,
        headers=headers,
        params={"token": TOKEN} if params is None else params,
    )


def stream_len(stack: Any) -> int:
    client = stack.redis()
    try:
        return int(client.xlen("smsq:events"))
    finally:
        client.close()


def stats(stack: Any) -> Counter[str]:
    client = stack.redis()
    try:
        return Counter({k.decode(): int(v) for k, v in client.hgetall("smsq:stats").items()})
    finally:
        client.close()


# ------------------------------------------------------------------ the generator


@dataclass
class Case:
    """One request and what the ingester must answer: `expect` is the exact status, or None
    for noise whose validity the generator does not know (then 200 or 400)."""

    kind: str
    body: bytes
    content_type: str | None = JSONAPI
    params: dict[str, str] | None = None
    expect: int | None = 400
    didww_id: str | None = None
    status: str | None = None


# Wrong values for each field, by what the field must be. Raw JSON tokens that json.dumps
# cannot write (NaN, 5,000-digit numbers) go in as Raw and are spliced into the text.
@dataclass(frozen=True)
class Raw:
    token: str


OPTIONAL_TEXT_WRONG: list[Any] = [
    0, 1.5, True, False, [], {}, ["x"], {"x": "y"}, "", "x" * 65, "\ud800", "2024\udfff",
    Raw("NaN"), Raw("1e400"),
]  # fmt: skip
REQUIRED_TEXT_WRONG: list[Any] = [None, *OPTIONAL_TEXT_WRONG]
INTEGER_WRONG: list[Any] = [
    -1, 2**31, 2**63, 10**30, 1.5, True, False, "1", "", [], {}, [1], {"n": 1},
    Raw("NaN"), Raw("Infinity"), Raw("-Infinity"), Raw("1e400"), Raw("1.0"), Raw("1E2"),
    Raw("9" * 4000), Raw("1" * 5000),
]  # fmt: skip
WRONG: dict[str, list[Any]] = {
    "status": [
        "success", "SUCCESS", "Delivered", "Sent", "", " Success", "Success ", "Routing error",
        None, 0, 1, True, [], ["Success"], {"Success": 1}, "\ud800",
    ],
    "destination": REQUIRED_TEXT_WRONG,
    "source": REQUIRED_TEXT_WRONG,
    "time_start": OPTIONAL_TEXT_WRONG,
    "end_time": OPTIONAL_TEXT_WRONG,
    "time_end": OPTIONAL_TEXT_WRONG,
    "code_id": INTEGER_WRONG,
    "fragments_sent": INTEGER_WRONG,
}  # fmt: skip
DATA_WRONG: dict[str, list[Any]] = {
    "type": [
        "outbound_messages", "Outbound_Message_Callbacks", "", None, 0, [], {},
        ["outbound_message_callbacks"],
    ],
    "id": [None, "", 0, 1234567, 1.5, True, [], ["x"], {}, "x" * 101, "\ud800", "id-\udfff"],
    "attributes": [None, [], "status", 0, True, [{"status": "Success"}]],
}  # fmt: skip
REQUIRED = ["data", "data.type", "data.id", "data.attributes", "status", "destination", "source"]
BAD_UTF8 = [b"\xff", b"\xfe", b"\x80", b"\xbf", b"\xc3(", b"\xe2\x82", b"\xf0\x9f\x98", b"\xc0\xaf"]
JUNK = [b"", b" ", b"null", b"true", b"0", b"{}", b"[]", b'"x"', b"NaN", b"{", b"}", b'{"data":{}}']


class Fuzzer:
    """A seeded generator of requests to the ingester; every case knows its right answer."""

    def __init__(self, seed: int, known: list[str], noise_ids: list[str], unknown: list[str]):
        self.rng = random.Random(seed)
        self.known, self.noise_ids, self.unknown = known, noise_ids, unknown
        self.kinds: dict[str, tuple[int, Callable[[], Case]]] = {
            "valid-known": (12, lambda: self.valid("valid-known", self.known)),
            "valid-unknown": (5, lambda: self.valid("valid-unknown", self.unknown)),
            "bad-token": (8, self.bad_token),
            "bad-media": (8, self.bad_media),
            "random-bytes": (8, self.random_bytes),
            "truncated": (8, self.truncated),
            "wrong-field": (20, self.wrong_field),
            "missing-field": (6, self.missing_field),
            "deep-nesting": (2, self.deep_nesting),
            "invalid-utf8": (6, self.invalid_utf8),
            "junk-json": (4, self.junk_json),
            "noise": (13, self.noise),
        }

    def cases(self, count: int) -> list[Case]:
        names = list(self.kinds)
        weights = [self.kinds[n][0] for n in names]
        return [self.kinds[name][1]() for name in self.rng.choices(names, weights, k=count)]

    # A valid document: every field of the right type, optional ones absent, null or set,
    # sometimes with members the ingester must ignore.
    def document(self, didww_id: str, status: str) -> dict[str, Any]:
        rng = self.rng
        attrs: dict[str, Any] = {
            "destination": str(rng.randrange(10**7, 10**15)),
            "source": SOURCE,
            "status": status,
        }
        optional: dict[str, Callable[[], Any]] = {
            "code_id": lambda: rng.choice([0, 4, 9, 105, 2**31 - 1, rng.randrange(2**31)]),
            "fragments_sent": lambda: rng.randrange(0, 256),
            "time_start": lambda: rng.choice(["2024-05-01T10:00:00.123Z", "x" * 64, "ü €"]),
            "end_time": lambda: "2024-05-01T10:00:02Z",
            "time_end": lambda: "2024-05-01T10:00:03Z",
        }
        for name, make in optional.items():
            choice = rng.random()
            if choice < 0.4:
                attrs[name] = make()
            elif choice < 0.6:
                attrs[name] = None
        if rng.random() < 0.1:
            attrs["unexpected"] = rng.choice([1, "x", [1, 2], {"a": None}])
        d: dict[str, Any] = {
            "data": {"type": "outbound_message_callbacks", "id": didww_id, "attributes": attrs}
        }
        if rng.random() < 0.1:
            # Nested, but well within the parser's limits and (indented) under 64 KiB.
            depth = rng.randrange(1, 50)
            d["meta"] = json.loads("[" * depth + "]" * depth)
        if rng.random() < 0.05:
            d["data"]["relationships"] = {}
        return d

    def dump(self, value: Any, ascii_only: bool | None = None) -> bytes:
        rng = self.rng
        raws: list[str] = []

        def unraw(v: Any) -> Any:
            if isinstance(v, Raw):
                raws.append(v.token)
                return f"@@raw{len(raws) - 1}@@"
            if isinstance(v, dict):
                return {k: unraw(x) for k, x in v.items()}
            if isinstance(v, list):
                return [unraw(x) for x in v]
            return v

        text = json.dumps(
            unraw(value),
            ensure_ascii=rng.random() < 0.5 if ascii_only is None else ascii_only,
            indent=rng.choice([None, None, 0, 2]),
        )
        for i, token in enumerate(raws):
            text = text.replace(f'"@@raw{i}@@"', token)
        # A lone surrogate goes out as the bytes a careless encoder writes (CESU-8).
        return text.encode("utf-8", "surrogatepass")

    def status(self) -> str:
        return self.rng.choice(list(FINAL))

    def valid(self, kind: str, pool: list[str]) -> Case:
        didww_id, status = self.rng.choice(pool), self.status()
        return Case(
            kind,
            self.dump(self.document(didww_id, status)),
            content_type=self.rng.choice(GOOD_MEDIA),
            expect=200,
            didww_id=didww_id,
            status=status,
        )

    def known_doc(self) -> dict[str, Any]:
        return self.document(self.rng.choice(self.known), self.status())

    def bad_token(self) -> Case:
        body = self.dump(self.known_doc())
        return Case("bad-token", body, params=self.rng.choice(BAD_TOKENS), expect=401)

    def bad_media(self) -> Case:
        body = self.dump(self.known_doc())
        return Case("bad-media", body, content_type=self.rng.choice(BAD_MEDIA), expect=415)

    def random_bytes(self) -> Case:
        rng = self.rng
        size = rng.randrange(0, 400)
        if rng.random() < 0.5:
            return Case("random-bytes", rng.randbytes(size))
        text = "".join(rng.choice('{}[]":,0123456789.eE-+ \n\tabcdnulltrue') for _ in range(size))
        return Case("random-bytes", text.encode())

    def truncated(self) -> Case:
        body = self.dump(self.known_doc())
        return Case("truncated", body[: self.rng.randrange(len(body))])

    def wrong_field(self) -> Case:
        rng = self.rng
        d = self.known_doc()
        where = rng.choice([*WRONG, *DATA_WRONG, "data", "root", "duplicate-key"])
        if where in WRONG:
            d["data"]["attributes"][where] = rng.choice(WRONG[where])
        elif where in DATA_WRONG:
            d["data"][where] = rng.choice(DATA_WRONG[where])
        elif where == "data":
            d["data"] = rng.choice([None, [], "x", 0, True, [d["data"]]])
        elif where == "root":
            return Case("wrong-field", self.dump(rng.choice([[], [d], "x", 0, None, True])))
        else:
            # JSON parsers keep the last of duplicate keys: a valid document, then null.
            body = self.dump(d)
            return Case("wrong-field", body[:-1] + b', "data": null}')
        return Case("wrong-field", self.dump(d))

    def missing_field(self) -> Case:
        d = self.known_doc()
        name = self.rng.choice(REQUIRED)
        if name == "data":
            del d["data"]
        elif name.startswith("data."):
            del d["data"][name[5:]]
        else:
            del d["data"]["attributes"][name]
        return Case("missing-field", self.dump(d))

    def deep_nesting(self) -> Case:
        # Past the parser's recursion limit; the deepest still fits under 64 KiB.
        depth = self.rng.choice([2_000, 10_000, 30_000])
        nest = "[" * depth + "]" * depth
        d = self.known_doc()
        where = self.rng.choice(["root", "status", "meta"])
        if where == "root":
            return Case("deep-nesting", nest.encode())
        text = self.dump(d, ascii_only=True).decode()
        if where == "status":
            text = text.replace(json.dumps(d["data"]["attributes"]["status"]), nest, 1)
        else:
            text = text[:-1] + f', "meta": {nest}}}'
        return Case("deep-nesting", text.encode())

    def invalid_utf8(self) -> Case:
        # ASCII-only JSON, so no inserted byte can complete a multibyte character.
        body = self.dump(self.known_doc(), ascii_only=True)
        at = self.rng.randrange(len(body) + 1)
        return Case("invalid-utf8", body[:at] + self.rng.choice(BAD_UTF8) + body[at:])

    def junk_json(self) -> Case:
        return Case("junk-json", self.rng.choice(JUNK))

    def noise(self) -> Case:
        """Byte-level mutations and other encodings of documents for ids no valid case
        uses: whatever the ingester makes of them, the answer is 200 or 400."""
        rng = self.rng
        d = self.document(rng.choice(self.noise_ids), self.status())
        if rng.random() < 0.1:
            encoding = rng.choice(["utf-16", "utf-16-le", "utf-32", "utf-8-sig"])
            return Case("noise", json.dumps(d).encode(encoding), expect=None)
        body = bytearray(self.dump(d))
        for _ in range(rng.randrange(1, 5)):
            at = rng.randrange(len(body))
            op = rng.randrange(4)
            if op == 0:
                body[at] = rng.randrange(256)
            elif op == 1:
                del body[at]
            elif op == 2:
                body.insert(at, rng.randrange(256))
            else:
                body[at:at] = body[at : at + rng.randrange(1, 20)]
        return Case("noise", bytes(body), expect=None)


# ------------------------------------------------------------------ tests

FUZZ_CASES = 10_000


def test_generated_bodies_get_200_or_4xx_and_only_valid_ones_count(make_stack, tmp_path: Path):
    stack = make_stack(SMSQ_CALLBACK_TOKEN=TOKEN)
    rng = random.Random(3)
    cid, numbers = campaign(stack, tmp_path / "n.csv", 300)
    ids = [new_id(rng) for _ in numbers]
    accept(stack, cid, dict(enumerate(ids)))
    known, noise_ids = ids[:200], ids[200:]
    unknown = [new_id(rng) for _ in range(300)]
    cases = Fuzzer(20240501, known, noise_ids, unknown).cases(FUZZ_CASES)
    assert len({c.kind for c in cases}) == 12
    proc = stack.start_callbacks()
    events_before, stats_before = stream_len(stack), stats(stack)

    wrong: list[str] = []
    results: Counter[str] = Counter()
    first_status: dict[str, str] = {}
    with httpx.Client(base_url=stack.callbacks_url, timeout=10.0) as client:
        for case in cases:
            response = post(client, case.body, case.content_type, case.params)
            code = response.status_code
            ok = code == case.expect if case.expect is not None else code in (200, 400)
            result = response.json().get("result") if code == 200 else None
            if code == 200:
                results[result] += 1
            if case.didww_id is not None and case.status is not None:
                # The first valid callback for an id settles (or, unknown, is kept); the
                # rest are duplicates.
                seen = case.didww_id in first_status
                first_status.setdefault(case.didww_id, case.status)
                first = "orphan" if case.kind == "valid-unknown" else "applied"
                ok = ok and result == ("duplicate" if seen else first)
            if not ok:
                wrong.append(
                    f"{case.kind}: HTTP {code} {response.text[:120]} for {case.body[:80]!r}"
                )
    assert not wrong, f"{len(wrong)} wrong answers, e.g.:\n" + "\n".join(wrong[:15])

    proc.check_alive()
    assert httpx.get(f"{stack.callbacks_url}/healthz").json() == {"ok": True}

    # Only callbacks that settled a message published; the invalid ones published nothing.
    new_events = stack.events()[events_before:]
    assert len(new_events) == results["applied"] == stream_len(stack) - events_before
    delta = stats(stack) - stats_before
    assert delta["callbacks_applied"] == results["applied"]
    assert delta["orphans_kept"] == results["orphan"]
    assert delta["callbacks_duplicate"] == results["duplicate"]
    # Every message of the known pool that got a valid callback was settled by its first one.
    known_hit = {i: s for i, s in first_status.items() if i in known}
    by_id = {e["didww_id"]: e for e in new_events}
    assert len(by_id) == len(new_events)
    for didww_id, status in known_hit.items():
        event = by_id[didww_id]
        assert event["type"] == FINAL[status] and event["status"] == status, event
        assert event["campaign_id"] == cid
    noise_applied = set(by_id) - set(known_hit)
    assert noise_applied <= set(noise_ids)
    counts = stack.status(cid)["counts"]
    assert counts["sent"] + counts["failed"] == len(new_events)
    assert counts["accepted"] == 300 - len(new_events)
    # Unknown ids are kept, never dropped, until their 201 is stored.
    unknown_hit = set(first_status) & set(unknown)
    assert unknown_hit and delta["orphans_kept"] >= len(unknown_hit)
    client = stack.redis()
    try:
        assert all(is_kept(client, i) for i in unknown_hit)
    finally:
        client.close()


def test_duplicates_late_failures_and_unknown_ids(make_stack, tmp_path: Path):
    stack = make_stack(SMSQ_CALLBACK_TOKEN=TOKEN, SMSQ_ORPHAN_TTL_S="600")
    rng = random.Random(7)
    cid, _ = campaign(stack, tmp_path / "n.csv", 4)
    a, b, c, late = (new_id(rng) for _ in range(4))
    accept(stack, cid, {0: a, 1: b, 2: c})
    stack.start_callbacks()
    before = len(stack.events())

    with httpx.Client(base_url=stack.callbacks_url, timeout=10.0) as client:

        def result(didww_id: str, status: str, **attrs: Any) -> str:
            response = post(client, doc(didww_id, status, **attrs))
            assert response.status_code == 200, response.text
            return str(response.json()["result"])

        assert result(a, "Success") == "applied"
        assert [result(a, "Success") for _ in range(3)] == ["duplicate"] * 3
        # A terminal state never changes: a late failure after a success is a duplicate.
        assert result(a, "Failed", code_id=4) == "duplicate"
        assert result(a, "Routing Error", code_id=105) == "duplicate"
        assert result(b, "Failed", code_id=4, fragments_sent=0) == "applied"
        assert result(b, "Success") == "duplicate"
        # A callback for an id not stored yet is kept, counted, and publishes nothing.
        assert result(late, "Success", time_end="2024-05-01T10:00:09Z") == "orphan"
        assert result(late, "Failed") == "duplicate"

    events = stack.events()[before:]
    assert [(e["type"], e["didww_id"]) for e in events] == [("sent", a), ("failed", b)]
    assert events[1]["code_id"] == 4 and events[1]["reason"]
    status = stack.status(cid)
    assert status["counts"]["sent"] == 1 and status["counts"]["failed"] == 1
    assert status["counts"]["accepted"] == 1 and status["counts"]["queued"] == 1
    assert status["trunk_status"]["orphan_callbacks_waiting"] == 1
    client = stack.redis()
    try:
        assert is_kept(client, late) and kept_count(client) == 1
        counters = stats(stack)
        assert counters["orphans_kept"] == 1 and counters["callbacks_applied"] == 2
        assert counters["callbacks_duplicate"] == 7
    finally:
        client.close()

    # The 201 for that id arrives: the kept callback settles its message with its own status.
    accept(stack, cid, {3: late})
    events = stack.events()[before:]
    assert [(e["type"], e["didww_id"]) for e in events[2:]] == [("accepted", late), ("sent", late)]
    assert events[3]["message_id"] == f"{cid}-3" and events[3]["time_end"] == "2024-05-01T10:00:09Z"
    assert stack.status(cid)["counts"]["sent"] == 2
    client = stack.redis()
    try:
        assert not is_kept(client, late) and kept_count(client) == 0
        assert stats(stack)["orphans_joined"] == 1
    finally:
        client.close()


def _raw_request(url: str, head: str, body_parts: list[bytes]) -> tuple[bytes, float]:
    """Send a request head and some body bytes on a raw socket; return what came back before
    the server closed (or 5 s passed) and how long the first answer took."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5.0) as sock:
        started = time.monotonic()
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
        for part in body_parts:
            sock.sendall(part)
        answer = b""
        answered_in = float("inf")
        try:
            while b"\r\n\r\n" not in answer:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answered_in = min(answered_in, time.monotonic() - started)
                answer += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    return answer, answered_in


def test_bodies_over_64_kib_are_refused_without_being_read(make_stack):
    stack = make_stack(SMSQ_CALLBACK_TOKEN=TOKEN)
    proc = stack.start_callbacks()
    target = f"POST /callbacks?token={TOKEN} HTTP/1.1\nHost: cb\nContent-Type: {JSONAPI}\n"

    # Declared 10 MB, sent 9 bytes: the answer comes at once, not after waiting for the rest.
    answer, seconds = _raw_request(
        stack.callbacks_url, target + "Content-Length: 10000000\n", [b'{"data":{']
    )
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert seconds < 2.0

    # Chunked, no length: refused once past 64 KiB, while the body has not even ended.
    chunk = b"1000\r\n" + b" " * 0x1000 + b"\r\n"
    answer, seconds = _raw_request(
        stack.callbacks_url, target + "Transfer-Encoding: chunked\n", [chunk] * 17
    )
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert seconds < 2.0

    proc.check_alive()
    assert httpx.get(f"{stack.callbacks_url}/healthz").status_code == 200
    client = stack.redis()
    try:
        assert kept_count(client) == 0
    finally:
        client.close()


def test_the_token_never_reaches_the_log(make_stack, tmp_path: Path):
    stack = make_stack(SMSQ_CALLBACK_TOKEN=TOKEN)
    rng = random.Random(11)
    cid, _ = campaign(stack, tmp_path / "n.csv", 20)
    ids = [new_id(rng) for _ in range(20)]
    accept(stack, cid, dict(enumerate(ids)))
    proc = stack.start_callbacks()
    codes: Counter[int] = Counter()
    with httpx.Client(base_url=stack.callbacks_url, timeout=10.0) as client:
        for i in range(300):
            didww_id = ids[i % 20] if i % 3 else new_id(rng)
            params = BAD_TOKENS[i % len(BAD_TOKENS)] if i % 4 == 0 else None
            body = doc(didww_id) if i % 5 else b'{"data": 1}'
            content_type = "text/plain" if i % 7 == 0 else JSONAPI
            codes[post(client, body, content_type, params).status_code] += 1
    assert set(codes) == {200, 400, 401, 415}, codes
    proc.check_alive()
    proc.stop()

    log = proc.log()
    # The log is there, and says what happened, without query strings or tokens.
    for name in ("callback_handled", "callback_unauthorized", "callback_invalid"):
        assert name in log, name
    for leak in (TOKEN, TOKEN[::-1], TOKEN.upper(), BAD_TOKEN_MARKER, "token=", "/callbacks?"):
        assert leak not in log, f"{leak!r} is in {proc.log_path}"


# ------------------------------------------------------------------ forged ids at scale

FORGED = 100_000
ORPHANS_MAX = 20_000
# What one kept callback may cost in Redis (issue 18: at most 200 bytes each).
KEPT_BYTES = 200
# How many of the forged callbacks go through the real ingester (over HTTP).
HTTP_FORGED = 5_000
# Requests written on a connection before its answers are read.
PIPELINE = 32


async def _flood_connection(
    host: str, port: int, bodies: list[bytes], results: Counter[str]
) -> None:
    """POST the bodies on one keep-alive connection, PIPELINE at a time (the ingester answers
    in order), counting each answer's result."""
    reader, writer = await asyncio.open_connection(host, port)
    head = (
        f"POST /callbacks?token={TOKEN} HTTP/1.1\r\nhost: {host}:{port}\r\n"
        f"content-type: {JSONAPI}\r\n"
    ).encode()
    try:
        for at in range(0, len(bodies), PIPELINE):
            chunk = bodies[at : at + PIPELINE]
            writer.write(
                b"".join(b"%scontent-length: %d\r\n\r\n%s" % (head, len(b), b) for b in chunk)
            )
            for _ in chunk:
                status = int((await reader.readuntil(b"\r\n")).split(b" ", 2)[1])
                length = 0
                while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                answer = await reader.readexactly(length)
                results[json.loads(answer)["result"] if status == 200 else str(status)] += 1
    finally:
        writer.close()


async def _flood(url: str, ids: list[str], connections: int = 8) -> Counter[str]:
    """A valid callback under the right token for each id, as fast as the ingester answers:
    a lean client (raw sockets, pipelined), so that the ingester, not the test, sets the pace."""
    host, _, port = url.removeprefix("http://").partition(":")
    bodies = [json.dumps(doc(i)).encode() for i in ids]
    results: Counter[str] = Counter()
    await asyncio.gather(
        *(
            _flood_connection(host, int(port), bodies[n::connections], results)
            for n in range(connections)
        )
    )
    return results


async def _keep_in_process(redis_url: str, ids: list[str], chunk: int = 1000) -> Counter[str]:
    """What the ingester does with a valid callback under the default trunk's token
    (callbacks/app.py: parse, then Ledger.apply_callback), in this process: the same script
    with the same arguments on the same Redis, without the HTTP in front, `chunk` to a round
    trip."""
    client = Redis.from_url(redis_url)
    results: Counter[str] = Counter()
    try:
        ledger = Ledger(
            client,
            Settings(_env_file=None, redis_url=redis_url, orphans_max=ORPHANS_MAX),
        )
        script = ledger.scripts["callback"]
        for at in range(0, len(ids), chunk):
            async with client.pipeline(transaction=False) as pipe:
                for didww_id in ids[at : at + chunk]:
                    update = parse(json.dumps(doc(didww_id)).encode())
                    keys, args = ledger.callback_call(update, "default")
                    await script(keys=keys, args=args, client=pipe)
                replies = await pipe.execute()
            results.update(reply[0].decode() for reply in replies)
    finally:
        await client.aclose()
    return results


def test_a_flood_of_forged_ids_stays_within_the_bound_and_real_callbacks_settle(
    make_stack, tmp_path: Path
):
    """100,000 valid callbacks under the right token for ids smsq never sent: Redis keeps
    SMSQ_ORPHANS_MAX of them at most (the oldest dropped, counted), each within 200 bytes;
    callbacks for real messages still settle them, before and after their 201. The last
    HTTP_FORGED go through the real ingester; the rest through the same scripts in this
    process (the ingester alone would take over a minute of both cores for them)."""
    stack = make_stack(SMSQ_CALLBACK_TOKEN=TOKEN, SMSQ_ORPHANS_MAX=str(ORPHANS_MAX))
    rng = random.Random(18)
    cid, _ = campaign(stack, tmp_path / "n.csv", 20)
    ids = [new_id(rng) for _ in range(20)]
    accept(stack, cid, dict(enumerate(ids[:10])))
    stack.start_callbacks()
    client = stack.redis()
    try:
        before = int(client.info("memory")["used_memory"])
        forged = [new_id(rng) for _ in range(FORGED)]
        # The first ORPHANS_MAX fill what may be kept: Redis's cost of each is measured there.
        first = asyncio.run(_keep_in_process(stack.redis_url, forged[:ORPHANS_MAX]))
        full = int(client.info("memory")["used_memory"])
        middle = asyncio.run(
            _keep_in_process(stack.redis_url, forged[ORPHANS_MAX : FORGED - HTTP_FORGED])
        )
        last = asyncio.run(_flood(stack.callbacks_url, forged[FORGED - HTTP_FORGED :]))
        after = int(client.info("memory")["used_memory"])
        assert first == {"orphan": ORPHANS_MAX}
        assert middle == {"orphan": FORGED - ORPHANS_MAX - HTTP_FORGED}
        assert last == {"orphan": HTTP_FORGED}
        assert kept_count(client) == ORPHANS_MAX
        counters = stats(stack)
        assert counters["orphans_dropped"] == FORGED - ORPHANS_MAX
        # The newest are the ones kept: the last ORPHANS_MAX, those over HTTP among them.
        kept = [is_kept(client, i) for i in forged[:: FORGED // 100]]
        assert kept == [False] * 80 + [True] * 20
        assert is_kept(client, forged[-1])
        per_kept = (full - before) / ORPHANS_MAX
        assert per_kept <= KEPT_BYTES, f"{per_kept:.0f} bytes per kept callback"
        # Five times as many forged ids later, Redis holds no more than it did with the bound.
        assert after - before <= ORPHANS_MAX * KEPT_BYTES, (before, full, after)
    finally:
        client.close()

    # Real callbacks: ten for messages whose 201 was recorded, ten that come before it.
    with httpx.Client(base_url=stack.callbacks_url, timeout=10.0) as http:
        assert [post(http, doc(i)).json()["result"] for i in ids[:10]] == ["applied"] * 10
        assert [post(http, doc(i)).json()["result"] for i in ids[10:]] == ["orphan"] * 10
    accept(stack, cid, {n: ids[n] for n in range(10, 20)})
    assert stack.status(cid)["counts"]["sent"] == 20
    print(f"forged ids: {per_kept:.0f} bytes per kept callback; {after - before:,} bytes in all")
