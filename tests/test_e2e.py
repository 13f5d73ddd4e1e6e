"""End to end: the real exporter process against the standalone simulator process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)

from tests.helpers import (
    E2E_CLIENT,
    ExporterProcess,
    env_for,
    matching,
    require_tool,
    samples,
    scrape,
    value,
    wait_until,
)

pytestmark = pytest.mark.e2e

SECRET = E2E_CLIENT[1]


def refreshes_seen(exporter: ExporterProcess, mandant: str) -> float:
    requests_total = matching(scrape(exporter), "beenergised_api_requests_total")
    return sum(
        v
        for labels, v in requests_total.items()
        if dict(labels)["mandant"] == mandant and dict(labels)["endpoint"] == "charging_stations"
    )


def test_fleet_changes_and_one_token_end_to_end(simulator_process, exporter_process):
    simulator = simulator_process(
        "--stations", "57", "--max-page-limit", "10", "--client-id", "e2e-client",
        "--client-secret", SECRET, "--seed", "3", "--quickstart-next-links",
    )  # fmt: skip
    exporter = exporter_process(
        ["--refresh.interval=1s", "--api.page-limit=25"], env_for(simulator)
    )
    mandant = "127.0.0.1"  # the default name of a mandant whose URL has an IP address
    wait_until(
        lambda: value(scrape(exporter), "beenergised_charging_stations", mandant=mandant) == 57,
        what="57 stations on /metrics",
    )
    metrics = scrape(exporter)
    firmware = {
        dict(labels)["firmware_version"]: v
        for labels, v in matching(metrics, "beenergised_charging_stations_by_firmware").items()
    }
    assert firmware == {k: float(v) for k, v in simulator.state()["firmware"].items()}
    assert len(matching(metrics, "beenergised_charging_station_info")) == 57
    assert value(metrics, "beenergised_up", mandant=mandant) == 1
    assert exporter.get("/readyz").status_code == 200

    before = {
        dict(labels)["station_id"]
        for labels in matching(metrics, "beenergised_charging_station_info")
    }
    # One request, so the exporter sees either none or all of the change.
    change = simulator.change(remove=2, add=3, rollout={"to": "9.0.0", "count": 4})
    after = (before - set(change["removed"])) | set(change["added"])
    wait_until(
        lambda: (
            value(scrape(exporter), "beenergised_charging_stations", mandant=mandant) == len(after)
        ),
        what="the stations after the churn",
    )
    metrics = scrape(exporter)
    changed = set(change["rolled_out"]) & before & after
    assert value(metrics, "beenergised_charging_stations_added_total", mandant=mandant) == len(
        after - before
    )
    assert value(metrics, "beenergised_charging_stations_removed_total", mandant=mandant) == len(
        before - after
    )
    assert value(metrics, "beenergised_firmware_changes_total", mandant=mandant) == len(changed)
    info_ids = {
        dict(labels)["station_id"]
        for labels in matching(metrics, "beenergised_charging_station_info")
    }
    assert info_ids == after

    seen = refreshes_seen(exporter, mandant)
    wait_until(lambda: refreshes_seen(exporter, mandant) >= seen + 6, what="more refreshes")
    assert simulator.state()["tokens_issued"] == 1

    promtool = require_tool("promtool")
    check = subprocess.run(
        [promtool, "check", "metrics"], input=exporter.get("/metrics").text,
        capture_output=True, text=True,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr

    assert exporter.stop() == 0
    assert SECRET not in exporter.output
    assert "debug" in exporter.output  # the check above ran against debug-level logs
    for request in simulator.request_log():
        assert SECRET not in request["path"]


def test_a_failing_mandant_does_not_affect_the_other(simulator_process, exporter_process, tmp_path):
    good = simulator_process("--stations", "12", "--client-secret", SECRET)
    other = simulator_process("--stations", "5", "--client-secret", "something-else")
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    config = tmp_path / "config.yml"
    config.write_text(
        f"""
refresh_interval: 1s
mandants:
  - name: good
    api_url: {good.url}
    token_url: {good.url}/oauth2/token
    client_id: demo-client
    client_secret_file: secret
  - name: rejected
    api_url: {other.url}
    token_url: {other.url}/oauth2/token
    client_id: demo-client
    client_secret_file: {secret_file}
"""
    )
    exporter = exporter_process([f"--config.file={config}"], {})
    wait_until(
        lambda: value(
            scrape(exporter),
            "beenergised_refresh_failures_total",
            mandant="rejected",
            reason="auth",
        ),
        what="an auth failure of the rejected mandant",
    )
    wait_until(
        lambda: value(scrape(exporter), "beenergised_charging_stations", mandant="good") == 12,
        what="the good mandant's stations",
    )
    metrics = scrape(exporter)
    assert value(metrics, "beenergised_up", mandant="good") == 1
    assert value(metrics, "beenergised_up", mandant="rejected") == 0
    assert value(metrics, "beenergised_charging_stations", mandant="rejected") is None
    ready = exporter.get("/readyz")
    assert ready.status_code == 503 and "rejected" in ready.text
    assert exporter.stop() == 0
    assert "invalid_client" in exporter.output
    assert SECRET not in exporter.output


def test_demo_mode_serves_a_fleet_without_credentials(exporter_process):
    exporter = exporter_process(["--demo"], {})
    wait_until(
        lambda: value(scrape(exporter), "beenergised_charging_stations", mandant="demo"),
        what="the demo fleet on /metrics",
    )
    metrics = scrape(exporter)
    count = value(metrics, "beenergised_charging_stations", mandant="demo")
    assert count == len(matching(metrics, "beenergised_charging_station_info")) > 0
    assert exporter.get("/").status_code == 200
    assert exporter.stop() == 0


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    script = str(Path(sys.executable).with_name("beenergised-exporter"))
    return subprocess.run(
        [script, *args], capture_output=True, text=True, timeout=30, env=env or {"PATH": ""}
    )


def test_a_wrong_setting_exits_2_with_one_line_naming_it():
    result = run_cli("--api.url", "foo", env={"BEENERGISED_CLIENT_SECRET": SECRET})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--api.url" in lines[0] and "'foo'" in lines[0]
    assert SECRET not in result.stderr + result.stdout


def test_help_lists_every_setting():
    result = run_cli("--help")
    assert result.returncode == 0
    for name in ["--api.url", "--api.token-url", "--api.client-id", "--api.client-secret-file",
                 "BEENERGISED_CLIENT_SECRET", "--refresh.interval", "--api.page-limit",
                 "--config.file", "--web.listen-address", "--web.telemetry-path", "--log.level",
                 "--log.format", "--demo", "--api.token-auth-method",
                 "--no-collector.station-info"]:  # fmt: skip
        assert name in result.stdout, name


def test_python_dash_m_runs_the_same_cli():
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "--help"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0 and "--api.url" in result.stdout


TRICKY = [
    {"label": 'Hof "Nord" \\ Tor 1', "chargeBoxIdentity": "cp\n2", "serialnumber": "",
     "firmwareVersion": 'v1 "quoted"\\'},
    {"label": "Ladepark Süd ⚡ 駐車場", "chargeBoxIdentity": "ünïcødé", "serialnumber": None,
     "firmwareVersion": None},
    {"label": "x" * 300, "chargeBoxIdentity": "y" * 300, "serialnumber": "z" * 300,
     "firmwareVersion": ""},
    {"label": "tab\there", "chargeBoxIdentity": "{curly}=,", "serialnumber": "# not a comment",
     "firmwareVersion": "2.0\n"},
]  # fmt: skip


def shown(text: str) -> str:
    """A value as the exporter shows it: control characters become U+FFFD (so a newline or a
    tab never reaches a label), and text over 256 characters is cut with an ellipsis."""
    text = text.replace("\n", "\ufffd").replace("\t", "\ufffd")
    return text if len(text) <= 256 else text[:255] + "…"


def test_tricky_label_values_come_out_escaped_or_repaired(simulator_process, exporter_process):
    simulator = simulator_process("--stations", "0")
    stations = [{"attributes": attributes} for attributes in TRICKY]
    ids = simulator.change(stations=stations)["added"]
    exporter = exporter_process(
        ["--refresh.interval=1s"],
        env_for(simulator)
        | {"BEENERGISED_CLIENT_ID": "demo-client", "BEENERGISED_CLIENT_SECRET": "demo-secret"},
    )
    wait_until(
        lambda: (
            value(scrape(exporter), "beenergised_charging_stations", mandant="127.0.0.1")
            == len(TRICKY)
        ),
        what="the tricky stations",
    )
    text = exporter.get("/metrics").text
    info = {
        dict(labels)["station_id"]: dict(labels)
        for labels in matching(samples(text), "beenergised_charging_station_info")
    }
    for station_id, attributes in zip(ids, TRICKY, strict=True):
        labels = info[station_id]
        assert labels["label"] == shown(attributes["label"])
        assert labels["charge_box_identity"] == shown(attributes["chargeBoxIdentity"])
        assert labels["serial_number"] == shown(attributes["serialnumber"] or "")
        assert labels["firmware_version"] == (
            shown(attributes["firmwareVersion"] or "") or "unknown"
        )
    firmware = matching(samples(text), "beenergised_charging_stations_by_firmware")
    assert sum(firmware.values()) == len(TRICKY)

    openmetrics = exporter.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    om_labels = {
        s.labels["station_id"]: s.labels
        for family in openmetrics_families(openmetrics.text)
        if family.name == "beenergised_charging_station_info"
        for s in family.samples
    }
    assert om_labels == info

    promtool = require_tool("promtool")  # checks the classic text format
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
