"""The shipped Prometheus rules: promtool checks and unit tests, annotations and runbooks."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, require_tool

RULES_DIR = ROOT / "prometheus"
SEVERITIES = {"critical", "warning", "info"}


def alerting_rules() -> list[dict]:
    document = yaml.safe_load((RULES_DIR / "alerts.yml").read_text())
    return [rule for group in document["groups"] for rule in group["rules"] if "alert" in rule]


def promtool(*args: str, cwd: Path = RULES_DIR) -> subprocess.CompletedProcess:
    return subprocess.run(
        [require_tool("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


@pytest.mark.e2e
def test_rule_files_pass_promtool_check_rules():
    result = promtool("check", "rules", "alerts.yml", "rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.e2e
def test_every_alert_fires_and_stays_quiet_as_the_unit_tests_say():
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.e2e
def test_example_prometheus_config_passes_promtool_check_config():
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_unit_tested_firing_and_not_firing():
    tests = yaml.safe_load((RULES_DIR / "alerts_test.yml").read_text())["tests"]
    cases = [case for test in tests for case in test.get("alert_rule_test", [])]
    for rule in alerting_rules():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case["exp_alerts"] for case in mine), f"{rule['alert']} never tested firing"
        assert any(not case["exp_alerts"] for case in mine), f"{rule['alert']} never quiet"


@pytest.mark.parametrize("rule", alerting_rules(), ids=lambda rule: rule["alert"])
def test_alerts_are_named_labelled_and_documented(rule):
    assert re.fullmatch(r"Beenergised[A-Z][A-Za-z]+", rule["alert"])
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    if "by (job, mandant, station_id" in rule["expr"]:
        # one alert per station: its labels name it, its annotations need no query (a mass
        # removal fires thousands of them, each expanded at every evaluation)
        assert set(annotations) == {"summary", "description", "dashboard", "runbook_url"}
        assert not re.search(r"\bquery\b", str(annotations).replace("urlquery", ""))
        assert "$labels.station_id" in annotations["description"]
        # the summary is the same for a whole group, so a notification can lead with it
        assert "$labels.station_id" not in annotations["summary"]
    elif "max by (job, mandant" in rule["expr"]:
        # one alert per mandant: the replicas' instance label is aggregated away, the links
        # to every replica's /changes take its place
        assert set(annotations) == {"summary", "description", "dashboard", "changes", "runbook_url"}
        assert "$labels.instance" not in str(annotations)
    else:
        assert set(annotations) == {"summary", "description", "runbook_url"}
        assert "{{ $labels.instance }}" in annotations["description"]
    # That runbook_url leads to a heading of docs/runbooks.md is tests/test_docs.py's job.
    runbooks = (ROOT / "docs" / "runbooks.md").read_text()
    assert f"`{rule['alert']}`" in runbooks, "docs/runbooks.md must list every alert"


@pytest.mark.parametrize("rule", alerting_rules(), ids=lambda rule: rule["alert"])
def test_fleet_change_alerts_do_not_depend_on_refresh_success(rule):
    """An outage must neither fire a fleet-change alert nor resolve one that fires: a resolved
    alert that fires again after the outage notifies the same change twice. The count alerts
    read counters that only a successful refresh moves; the per-station alerts compare views
    dated by the age of their data, which an outage only makes older. alerts_test.yml has the
    cases."""
    if not rule["alert"].startswith(("BeenergisedStation", "BeenergisedFleet")):
        return
    assert "beenergised_up" not in rule["expr"]
    if "by (job, mandant, station_id" in rule["expr"]:
        assert "beenergised_last_refresh_success_age_seconds" in rule["expr"]
