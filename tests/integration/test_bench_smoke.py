"""`python -m ops.bench --smoke` goes through every scenario's code in seconds (tiny sizes,
no target judged) and prints the table with each scenario in it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ops.bench.cli import SCENARIOS

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(150)
def test_smoke_runs_every_scenario_and_prints_one_table(tmp_path: Path):
    saved = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMSQ_")}
    done = subprocess.run(
        [sys.executable, "-m", "ops.bench", "--smoke", "--json", str(saved)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=140, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    # The main table: from its header to the first line that is not a row (scenarios print
    # tables of their own further down).
    lines = done.stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("| scenario "))
    rows = []
    for line in lines[first:]:
        if not line.startswith("|"):
            break
        if line.startswith("| "):
            rows.append(line)
    listed = {row.split("|")[1].strip() for row in rows[1:]}
    assert listed == set(SCENARIOS)
    assert "ERROR" not in done.stdout
    assert "targets not judged" in done.stdout

    document = json.loads(saved.read_text())
    assert document["smoke"] is True
    assert [s["name"] for s in document["scenarios"]] == list(SCENARIOS)
    for scenario in document["scenarios"]:
        assert scenario["error"] is None
        assert scenario["rows"], scenario["name"]
        # Every figure was measured: a smoke run exercises the code, it does not skip it.
        assert all(row["smsq"] is not None for row in scenario["rows"]), scenario["name"]
