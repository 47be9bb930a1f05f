"""The README's "From another application" commands, run as written against `make up`: a
receiver that verifies signatures, a webhook subscription, a campaign created over HTTP with
references, the campaigns listed and a message looked up; every event the receiver gets
verifies and carries its message's reference."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from ops.stack import ROOT, free_port
from tests.integration.test_cli_habits import make

SECTION = "### From another application"


def readme_commands(port: int) -> str:
    """The section's shell blocks, with the receiver on a free port instead of 8090."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index(SECTION)
    section = readme[start : readme.index("When you are done", start)]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert len(blocks) == 2, "the section's two shell blocks"
    return "".join(blocks).replace("8090", str(port))


def test_an_applications_whole_path_as_the_readme_shows_it(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    state_dir = tmp_path / "smsq-up"
    request.addfinalizer(lambda: make(state_dir, "down"))
    up = make(state_dir, "up")
    assert up.returncode == 0, up.stdout + up.stderr
    work = tmp_path / "app"
    work.mkdir()
    script = f"set -e\nsource {state_dir / 'env'}\n" + readme_commands(free_port())
    bin_dir = Path(ROOT / ".venv" / "bin")
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=work, capture_output=True, text=True, timeout=120, check=False,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr

    created = json.loads((work / "created.json").read_text())
    cid = created["campaign_id"]
    assert created["queued"] == 2 and created["rejected"] == 0
    # The list and the lookup answered (their JSON follows the create's on stdout).
    assert f'"campaign_id":"{cid}"' in done.stdout.replace(" ", "")
    assert f'"message_id":"{cid}-0"' in done.stdout.replace(" ", "")
    assert '"reference":"order-1017"' in done.stdout.replace(" ", "")
    received = (work / "received.txt").read_text().splitlines()
    events = [json.loads(line.split(" ", 1)[1]) for line in received]
    assert [line.split(" ", 1)[0] for line in received] == ["verified"] * len(received)
    # The simulator fails some messages: each of the two ends sent or failed, once at least.
    assert {e["message_id"] for e in events} == {f"{cid}-0", f"{cid}-1"}
    assert {e["type"] for e in events} <= {"sent", "failed"}
    references = {f"{cid}-0": "order-1017", f"{cid}-1": "order-1018"}
    assert all(e["reference"] == references[e["message_id"]] for e in events), events
