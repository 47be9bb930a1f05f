"""ops/prometheus/: the alert rules pass `promtool check rules` and their unit tests pass
`promtool test rules` (Debian's prometheus package; .ci/run installs it), every alert has a
test that fires it and one that does not, and every series they read is one smsq or Flower
makes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from metric_names import known, read_by

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "ops" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERT_TESTS = PROMETHEUS_DIR / "alerts_test.yml"
SEVERITIES = {"critical", "warning"}

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="no promtool (Debian: apt-get install --no-install-recommends prometheus; "
    ".ci/run does it as root)",
)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


@needs_promtool
def test_promtool_checks_the_rules_and_the_config() -> None:
    checked = promtool("check", "rules", ALERTS.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr


@needs_promtool
def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    result = promtool("test", "rules", ALERT_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_test_that_fires_it_and_one_that_does_not() -> None:
    names = {rule["alert"] for rule in rules()}
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert fired == names, f"no test fires {names - fired}"
    assert quiet == names, f"no test where {names - quiet} stays quiet"
    assert yaml.safe_load(ALERT_TESTS.read_text())["rule_files"] == [ALERTS.name]


def test_every_alert_has_a_severity_a_summary_and_a_description() -> None:
    found = rules()
    assert len({rule["alert"] for rule in found}) == len(found), "an alert is named twice"
    for rule in found:
        assert rule["alert"].startswith("Smsq"), rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert set(rule["annotations"]) == {"summary", "description"}, rule["alert"]
        assert "for" in rule, f"{rule['alert']}: one bad scrape must not page anyone"


def test_the_issue_s_alerts_are_all_there() -> None:
    reads = {rule["alert"]: read_by(rule["expr"]) for rule in rules()}
    assert reads["SmsqTrunkHalted"] == {"smsq_halted"}
    assert reads["SmsqTrunkBackingOff"] == {"smsq_backing_off"}
    assert reads["SmsqCampaignOverdue"] == {"smsq_campaign_overdue_seconds"}
    assert reads["SmsqUnknownShareHigh"] == {"smsq_worker_messages_total"}
    assert reads["SmsqUnconfirmedShareHigh"] == {"smsq_messages"}
    assert reads["SmsqCallbacksStopped"] == {
        "smsq_worker_messages_total",
        "smsq_callback_lag_seconds_count",
    }
    assert reads["SmsqNoWorkerUp"] == {"up"}
    assert reads["SmsqKeptCallbacksDropped"] == {"smsq_callback_results"}
    assert reads["SmsqWebhookLag"] == {"smsq_webhook_lag_seconds"}
    assert reads["SmsqRedisMemoryHigh"] == {
        "smsq_redis_used_memory_bytes",
        "smsq_redis_maxmemory_bytes",
    }
    assert reads["SmsqRedisEvictingKeys"] == {"smsq_redis_evicted_keys_total"}
    assert reads["SmsqRedisAofOff"] == {"smsq_redis_aof_enabled"}
    assert reads["SmsqRedisAofFailing"] == {"smsq_redis_aof_write_ok"}
    assert reads["SmsqRedisMaxmemoryUnset"] == {"smsq_redis_maxmemory_bytes"}
    assert reads["SmsqRedisNoReplica"] == {
        "smsq_redis_connected_replicas",
        "smsq_redis_replicas_expected",
    }
    assert reads["SmsqRedisReplicaLagging"] == {
        "smsq_redis_replica_lag_seconds",
        "smsq_redis_replica_behind_bytes",
    }


def test_alerts_read_only_series_that_exist() -> None:
    names = known()
    for rule in rules():
        unknown = read_by(rule["expr"]) - names
        assert not unknown, f"{rule['alert']} reads {unknown}, which nothing makes"
