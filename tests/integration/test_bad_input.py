"""The real `smsq send` refusing bad input against a private Redis: exit code 2, one clear line
on stderr, nothing written. A partly bad file sends its valid lines and reports every bad one.

Complements test_send_cli.py (empty text, no valid --to, non-UTF-8 text, a plain list with no
valid line, a missing file, a short source), whose cases are not repeated here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ops.stack import ROOT
from tests.integration.conftest import SOURCE

TO = ["--to", "37041654321"]


def smsq(stack, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`smsq ARGS` against the stack, with extra environment variables."""
    return subprocess.run(
        [str(Path(sys.executable).with_name("smsq")), *args],
        env=stack.env(**env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def write(path: Path, content: bytes) -> str:
    path.write_bytes(content)
    return str(path)


def test_each_refusal_is_one_line_exit_2_and_writes_nothing(make_stack, tmp_path: Path):
    stack = make_stack()
    gsm_11_segments = "a" * (153 * 10 + 1)
    ucs2_11_segments = "ж" * (67 * 10 + 1)
    empty = write(tmp_path / "empty.csv", b"")
    blank = write(tmp_path / "blank.txt", b"\n  \n\t\n\r\n")
    header_only = write(tmp_path / "header.csv", b"name,phone\n")
    binary = write(tmp_path / "photo.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64))
    latin1 = write(tmp_path / "latin1.txt", "37041654321\nJosé;37041654322\n".encode("latin-1"))
    # (arguments, extra environment, what the one line must say)
    cases: list[tuple[list[str], dict[str, str], str]] = [
        ([*TO, "--text", gsm_11_segments], {}, "needs 11 SMS segments (GSM-7); the limit is 10"),
        ([*TO, "--text", ucs2_11_segments], {}, "needs 11 SMS segments (UCS-2); the limit is 10"),
        ([*TO, "--text", "a" * 307], {"SMSQ_MAX_SEGMENTS": "2"}, "the limit is 2"),
        ([*TO, "--text", "€" * 154], {"SMSQ_MAX_SEGMENTS": "2"}, "needs 3 SMS segments"),
        ([*TO, "--text", "hi", "--source", "abc"], {}, "invalid source number 'abc'"),
        ([*TO, "--text", "hi", "--source", ""], {}, "invalid source number ''"),
        ([*TO, "--text", "hi", "--source", "+0037041123456"], {}, "invalid source number"),
        ([*TO, "--text", "hi", "--source", "1234567890123456"], {}, "too long"),
        ([*TO, "--text", "hi", "--name", "caf\udce9"], {}, "campaign name is not valid UTF-8"),
        (["--recipients", empty, "--text", "hi"], {}, "empty.csv' is empty"),
        (["--recipients", blank, "--text", "hi"], {}, "blank.txt' is empty"),
        (["--recipients", header_only, "--text", "hi"], {}, "has a header but no data lines"),
        (["--recipients", binary, "--text", "hi"], {}, "is not a UTF-8 text file"),
        (["--recipients", latin1, "--text", "hi"], {}, "is not a UTF-8 text file"),
        (["--recipients", latin1, *TO, "--text", "hi"], {}, "either --to or --recipients"),
        (["--text", "hi"], {}, "either --to or --recipients"),
    ]

    def run(case: tuple[list[str], dict[str, str], str]) -> subprocess.CompletedProcess[str]:
        args, env, _ = case
        source = [] if "--source" in args else ["--source", SOURCE]
        return smsq(stack, "send", *source, *args, **env)

    # Each case is a process of its own; two at a time keeps the run short on two cores.
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run, cases))
    for (args, _, expected), result in zip(cases, results, strict=True):
        what = f"{[a[:30] for a in args]}: {result.stderr!r}"
        assert result.returncode == 2, what
        assert result.stdout == "", what
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("smsq: "), what
        assert expected in lines[0], what
    client = stack.redis()
    try:
        assert client.dbsize() == 0, client.keys("*")
    finally:
        client.close()


def test_a_file_with_no_valid_line_reports_each_line_then_refuses(make_stack, tmp_path: Path):
    stack = make_stack()
    bad = ["0041 22 123", "+1 (555) 010", "x@example.com", "37041\uff1654321", "123456789012345678"]
    path = tmp_path / "none.csv"
    path.write_text("phone;name\n" + "".join(f"{b};n{i}\n" for i, b in enumerate(bad)) + ";\n")
    result = smsq(stack, "send", "--source", SOURCE, "--recipients", str(path), "--text", "hi")
    assert result.returncode == 2, result.stderr
    *reports, last = result.stderr.splitlines()
    assert [r.split(":")[0] for r in reports] == [f"line {n}" for n in range(2, 7)]
    assert all(repr(b) in r for b, r in zip(bad, reports, strict=True)), reports
    assert last == "smsq: no valid destination number (5 rejected)"
    client = stack.redis()
    try:
        assert client.dbsize() == 0
    finally:
        client.close()


def test_a_partly_bad_file_sends_the_valid_lines_and_reports_every_bad_one(
    make_stack, tmp_path: Path
):
    stack = make_stack()
    lines: list[str] = []
    bad_lines: list[int] = []
    valid: list[str] = []
    for i in range(300):
        kind = i % 6
        if kind == 0:
            lines.append(f"+49 30 {i:08d}")
            valid.append(f"4930{i:08d}")
        elif kind in (1, 2, 3):
            lines.append([f"0{i:07d}", f"nope-{i}", f"4930{i}x"][kind - 1])
            bad_lines.append(len(lines))
        else:
            lines.append("" if kind == 4 else valid[-1])  # a blank line, or a duplicate
    path = tmp_path / "mixed.txt"
    path.write_text("\n".join(lines) + "\n")
    assert len(bad_lines) > 100  # more than --json lists

    result = smsq(stack, "send", "--source", SOURCE, "--recipients", str(path), "--text", "hi")
    assert result.returncode == 0, result.stderr
    reported = [int(r.split(":")[0].removeprefix("line ")) for r in result.stderr.splitlines()]
    assert reported == bad_lines
    summary = result.stdout.splitlines()[0]
    counts = f"{len(valid)} queued, {len(bad_lines)} rejected, {len(valid)} duplicates"
    assert counts in summary, summary
    cid = summary.split()[1].rstrip(":")

    status = json.loads(smsq(stack, "status", cid, "--json").stdout)
    assert status["total"] == len(valid) == status["counts"]["queued"]
    stored = [r.destination for r in stack.records(cid).values() if r.state == "queued"]
    assert sorted(stored) == sorted(valid)
