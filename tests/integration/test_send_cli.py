"""`smsq send` against a real Redis: what it stores, what it queues, what it refuses."""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.conftest import SOURCE


def test_json_output_and_what_is_stored(make_stack, tmp_path: Path):
    stack = make_stack()
    path = tmp_path / "r.csv"
    path.write_text("name;msisdn\na;+370 (41) 65-43-21\nb;0037041654321\nc;12ab\nd;\n")
    result = stack.smsq(
        "send", "--source", "+37041123456", "--recipients", str(path), "--text", "Hi €", "--json"
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["queued"] == 1 and out["duplicates"] == 1 and out["rejected"] == 2
    assert [r["line"] for r in out["rejections"]] == [4, 5]
    assert all(r["reason"] for r in out["rejections"])
    assert out["encoding"] == "GSM-7" and out["max_segments"] == 1
    client = stack.redis()
    try:
        cid = out["campaign_id"]
        campaign = client.hgetall(f"smsq:campaign:{cid}")
        assert campaign[b"source"] == SOURCE.encode() and campaign[b"text"] == "Hi €".encode()
        [record] = stack.records(cid).values()
        assert (record.index, record.state, record.destination) == (0, "queued", "37041654321")
        # A single message is transactional: the trunk's urgent lane and the priority queue.
        assert client.lrange("smsq:trunk:default:urgent", 0, -1) == [f"{cid}|0|0".encode()]
        assert client.llen("smsq.priority") == 1 and client.llen("smsq.campaigns") == 0
    finally:
        client.close()


def test_bad_input_exits_2_and_enqueues_nothing(make_stack, tmp_path: Path):
    stack = make_stack()
    bad = tmp_path / "bad.txt"
    bad.write_text("12\nabc\n+0123456789\n")
    cases = [
        (["--to", "37041654321", "--text", ""], "text is empty"),
        (["--to", "37041654321", "--text", "   "], "text is empty"),
        (["--to", "abc", "--text", "hi"], "no valid destination"),
        (["--to", "37041654321", "--text", "caf\udce9"], "not valid UTF-8"),
        (["--recipients", str(bad), "--text", "hi"], "line 3"),
        (["--recipients", str(tmp_path / "missing.csv"), "--text", "hi"], "does not exist"),
    ]
    for args, expected in cases:
        result = stack.smsq("send", "--source", SOURCE, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert expected in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    result = stack.smsq("send", "--source", "12", "--to", "37041654321", "--text", "hi")
    assert result.returncode == 2 and "invalid source" in result.stderr
    client = stack.redis()
    try:
        assert client.keys("smsq:*") == []
        assert client.llen("smsq.campaigns") == 0
    finally:
        client.close()
