"""ops/grafana/smsq-dashboard.json: a dashboard Grafana can import (a ${DS_PROMETHEUS} input)
and provision (a DS_PROMETHEUS variable), whose panels do not overlap, whose queries parse
(promtool, where installed) and read only series that smsq or Flower makes."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from metric_names import known, read_by

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "ops" / "grafana" / "smsq-dashboard.json"
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
GRID_COLUMNS = 24
# Grafana's range variables, as a rule file can take them.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in panels(dashboard) for t in p["targets"]]


def test_it_can_be_imported_and_provisioned(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"] and dashboard["title"]
    (given,) = dashboard["__inputs"]
    assert (given["name"], given["type"], given["pluginId"]) == (
        "DS_PROMETHEUS",
        "datasource",
        "prometheus",
    )
    # Provisioning skips __inputs: a variable of the same name resolves ${DS_PROMETHEUS}.
    (variable,) = dashboard["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "DS_PROMETHEUS",
        "datasource",
        "prometheus",
    )
    for panel in panels(dashboard):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]


def test_panels_fit_the_grid_without_overlapping(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    taken: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] <= GRID_COLUMNS - grid["w"], panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


def test_queries_read_only_series_that_exist(dashboard: dict[str, Any]) -> None:
    names = known()
    for title, expr in expressions(dashboard):
        read = read_by(expr)
        assert read, f"{title}: {expr} reads no smsq, Flower or up series"
        assert read <= names, f"{title} reads {read - names}, which nothing makes"


def test_it_shows_what_the_issue_asks_for(dashboard: dict[str, Any]) -> None:
    read = set().union(*(read_by(expr) for _, expr in expressions(dashboard)))
    assert {
        "smsq_worker_messages_total",  # rate per trunk, outcomes, unknown share
        "smsq_api_request_seconds_bucket",  # API latency
        "smsq_queue_depth",
        "smsq_oldest_queued_age_seconds",
        "smsq_campaign_overdue_seconds",
        "smsq_callbacks_total",
        "smsq_callback_lag_seconds_bucket",
        "smsq_messages",  # unknown and unconfirmed
        "smsq_redis_used_memory_bytes",
        "smsq_redis_maxmemory_bytes",
        "smsq_halted",
        "smsq_backing_off",
        "flower_worker_online",
        "smsq_in_flight_requests",
        "smsq_claims_given_back_total",
    } <= read


@pytest.mark.skipif(shutil.which("promtool") is None, reason="no promtool (see test_alerts.py)")
def test_queries_parse(dashboard: dict[str, Any], tmp_path: Path) -> None:
    """Each query, Grafana's variables filled in, as a recording rule for promtool to parse."""
    recorded = []
    for i, (_, expr) in enumerate(expressions(dashboard)):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, expr
        recorded.append({"record": f"dashboard:query_{i}", "expr": expr})
    rules = tmp_path / "dashboard_rules.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recorded}]}))
    result = subprocess.run(
        ["promtool", "check", "rules", str(rules)], capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
