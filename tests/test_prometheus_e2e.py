"""The shipped dashboards and alerts against a real Prometheus that scrapes the real exporter.

Needs Debian's `prometheus` package (`.ci/run` installs it): every PromQL expression of every
dashboard panel runs through the Prometheus HTTP API, every metric name a dashboard or rule
uses must be one the exporter exports, the "station disappeared" alert must fire when
stations are removed (and the dashboard's alert panels show them) but not during an API
outage, the rollout panels must follow a firmware rollout and the duplicate identity alert
must go pending when two stations share one.

The tests share one stack and change its fleet, so each works from the fleet as it finds it
(the simulator's state), not from the fleet it started with. The outage test must run before
the removal test, whose alert stays up for 15 minutes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
import yaml

from tests.dashboards import load_dashboards, metric_names, panel_queries
from tests.helpers import (
    ROOT,
    ExporterProcess,
    Process,
    SimulatorProcess,
    free_port,
    require_tool,
    wait_until,
)

pytestmark = pytest.mark.e2e

STATIONS = 30
TARGET_PATTERN = r"3\..*"
TARGET = f"/{TARGET_PATTERN}/"
"""The exporter's target firmware: any 3.x; the seeded fleet has a few on 3.0.0-rc1."""
DUPLICATE_ALERT = "BeenergisedDuplicateChargeBoxIdentity"


class PrometheusServer(Process):
    def __init__(self, binary: str, workdir: Path, target: str) -> None:
        rules = ROOT / "prometheus"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules / "alerts.yml"), str(rules / "rules.yml")],
            "scrape_configs": [
                {"job_name": "beenergised", "static_configs": [{"targets": [target]}]}
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{free_port()}"
        super().__init__(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address={self.url.removeprefix('http://')}",
                "--log.level=warn",
            ]
        )
        wait_until(self.ready, timeout=30, what="Prometheus to be ready")

    def ready(self) -> bool:
        if self.popen.poll() is not None:
            raise AssertionError(f"prometheus exited:\n{self.output}")
        try:
            return requests.get(self.url + "/-/ready", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    def query(self, expr: str) -> list[dict]:
        response = requests.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert body["status"] == "success", f"{expr}: {body.get('error')}"
        return body["data"]["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def alerts(self, name: str) -> list[dict]:
        alerts = requests.get(self.url + "/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        return [alert for alert in alerts if alert["labels"]["alertname"] == name]


class Stack:
    def __init__(self, tmp: Path) -> None:
        binary = require_tool("prometheus")
        self.simulator = SimulatorProcess("--stations", str(STATIONS), "--seed", "4")
        self.exporter = ExporterProcess(
            ["--refresh.interval=1s", "--log.level=info"],
            {
                "BEENERGISED_API_URL": self.simulator.url,
                "BEENERGISED_TOKEN_URL": self.simulator.url + "/oauth2/token",
                "BEENERGISED_CLIENT_ID": "demo-client",
                "BEENERGISED_CLIENT_SECRET": "demo-secret",
                "BEENERGISED_TARGET_FIRMWARE": TARGET,
            },
        )
        self.prometheus = PrometheusServer(binary, tmp, self.exporter.url.removeprefix("http://"))

    def stop(self) -> None:
        for process in (self.prometheus, self.exporter, self.simulator):
            process.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("prometheus"))
    try:
        # enough samples for rate() and increase() over [1m]-style windows
        wait_until(
            lambda: (stack.prometheus.value("count_over_time(beenergised_up[1m])") or 0) >= 8,
            timeout=60,
            what="eight scrapes in Prometheus",
        )
        yield stack
    finally:
        stack.stop()


def all_panel_queries() -> list[tuple[str, str, str, bool]]:
    return [
        (name, title, expr, may_be_empty)
        for name, dashboard in load_dashboards().items()
        for title, expr, may_be_empty in panel_queries(dashboard)
    ]


@pytest.mark.parametrize(
    ("dashboard", "title", "expr", "may_be_empty"),
    all_panel_queries(),
    ids=[f"{name}:{title}" for name, title, _, _ in all_panel_queries()],
)
def test_every_dashboard_query_runs_and_has_data(stack, dashboard, title, expr, may_be_empty):
    result = stack.prometheus.query(expr)
    if not may_be_empty:
        assert result, f"{dashboard} / {title}: no data for {expr}"


def rule_expressions() -> list[str]:
    expressions = []
    for name in ("alerts.yml", "rules.yml"):
        document = yaml.safe_load((ROOT / "prometheus" / name).read_text())
        expressions += [rule["expr"] for group in document["groups"] for rule in group["rules"]]
    return expressions


def test_every_metric_a_dashboard_or_rule_uses_is_exported(stack):
    exported = set(
        requests.get(stack.prometheus.url + "/api/v1/label/__name__/values", timeout=10).json()[
            "data"
        ]
    )
    recorded = {
        rule["record"]
        for group in yaml.safe_load((ROOT / "prometheus" / "rules.yml").read_text())["groups"]
        for rule in group["rules"]
    }
    used = set()
    for _, _, expr, _ in all_panel_queries():
        used |= metric_names(expr)
    for expr in rule_expressions():
        used |= metric_names(expr)
    written_by_prometheus = {"ALERTS"}  # the fleet alerts read their own, to hold them
    unknown = used - exported - recorded - written_by_prometheus
    assert not unknown, f"not exported by the exporter: {sorted(unknown)}"


def firing_or_pending(stack: Stack, name: str) -> list[dict]:
    return [a for a in stack.prometheus.alerts(name) if a["state"] in ("pending", "firing")]


def fleet_size(stack: Stack) -> int:
    """The simulator's fleet size, once Prometheus shows it too."""
    size = stack.simulator.state()["stations"]
    wait_until(
        lambda: (
            stack.prometheus.value('beenergised_charging_stations{mandant="127.0.0.1"}') == size
        ),
        timeout=30,
        what=f"Prometheus to show the fleet of {size} stations",
    )
    return size


@contextmanager
def api_outage(stack: Stack) -> Iterator[None]:
    """Every API request fails with a 503 inside the block; Prometheus has seen the outage
    when the block starts and the recovery when it has ended."""
    fault = {"kind": "status", "status": 503}
    requests.post(stack.simulator.url + "/_sim/faults", json=fault, timeout=5).raise_for_status()
    try:
        wait_until(
            lambda: stack.prometheus.value('beenergised_up{mandant="127.0.0.1"}') == 0,
            timeout=30,
            what="Prometheus to see the outage",
        )
        yield
    finally:
        requests.delete(stack.simulator.url + "/_sim/faults", timeout=5).raise_for_status()
    wait_until(
        lambda: stack.prometheus.value('beenergised_up{mandant="127.0.0.1"}') == 1,
        timeout=30,
        what="Prometheus to see the recovery",
    )


def test_an_api_outage_does_not_fire_the_disappearance_alert(stack):
    size = fleet_size(stack)
    with api_outage(stack):
        # Watch a few more evaluations of the rules while the outage lasts.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            assert firing_or_pending(stack, "BeenergisedStationDisappeared") == []
            assert firing_or_pending(stack, "BeenergisedFleetLargelyDisappeared") == []
            time.sleep(0.5)  # the rules evaluate every second; this samples them
        stations = stack.prometheus.value('beenergised_charging_stations{mandant="127.0.0.1"}')
        assert stations == size
    assert firing_or_pending(stack, "BeenergisedStationDisappeared") == []


def test_removed_stations_fire_one_disappearance_alert_each(stack):
    removed = stack.simulator.change(remove=3)["removed"]
    assert len(removed) == 3

    def three_alerts() -> list[dict] | None:
        alerts = firing_or_pending(stack, "BeenergisedStationDisappeared")
        return alerts if len(alerts) >= 3 else None

    alerts = wait_until(
        three_alerts,
        timeout=30,
        what="BeenergisedStationDisappeared to fire for the three stations",
    )
    assert sorted(alert["labels"]["station_id"] for alert in alerts) == sorted(removed)
    for alert in alerts:
        assert alert["labels"]["mandant"] == "127.0.0.1"
        assert alert["labels"]["severity"] == "warning"
        assert alert["labels"]["station_id"] in alert["annotations"]["description"]
    # 3 of 30 or more is 10% at most: below the 25% of the critical alert
    assert firing_or_pending(stack, "BeenergisedFleetLargelyDisappeared") == []

    # The dashboard's alert panels show the same stations, by the labels the alerts carry.
    def notified(labels: dict[str, str]) -> tuple[str, ...]:
        names = ("alertname", "mandant", "label", "charge_box_identity", "station_id")
        return tuple(labels.get(name, "") for name in names)

    def table_rows() -> list[dict] | None:
        rows = stack.prometheus.query(panel_expression("Station alerts firing"))
        return rows if len(rows) >= 3 else None

    rows = wait_until(table_rows, timeout=10, what="three rows in 'Station alerts firing'")
    expected = sorted(notified(alert["labels"]) for alert in alerts)
    assert sorted(notified(row["metric"]) for row in rows) == expected
    assert stack.prometheus.value(panel_expression("Fleet alerts firing")) == 3


def panel_expression(title: str) -> str:
    """The query of a fleet dashboard panel, with the variables substituted (every mandant)."""
    dashboard = load_dashboards()["beenergised-fleet.json"]
    (expr,) = [expr for panel, expr, _ in panel_queries(dashboard) if panel == title]
    return expr


def rollout_percent(stack: Stack, title: str) -> float | None:
    """The percent a rollout panel shows for the stack's mandant; None before it has data."""
    result = stack.prometheus.query(panel_expression(title))
    if not result:
        return None
    (series,) = result
    assert series["metric"] == {"mandant": "127.0.0.1", "target": TARGET}
    return float(series["value"][1])


def wait_for_rollout_panels(stack: Stack, on_target: int, stations: int) -> None:
    expected = 100 * on_target / stations
    for title in ("On target firmware", "Firmware rollout"):
        wait_until(
            lambda title=title: rollout_percent(stack, title) == pytest.approx(expected),
            timeout=30,
            what=f"{title!r} to show {on_target} of {stations} stations on target",
        )


def on_target_in_simulator(stack: Stack) -> tuple[int, int]:
    """(stations on the target firmware, all stations) in the simulator's inventory."""
    state = stack.simulator.state()
    firmware = state["firmware"]
    on_target = sum(n for version, n in firmware.items() if re.fullmatch(TARGET_PATTERN, version))
    return on_target, state["stations"]


def test_the_rollout_panels_follow_a_firmware_rollout(stack):
    on_target, stations = on_target_in_simulator(stack)
    assert 0 < on_target < stations, "the seeded fleet has stations on and off the target"
    wait_for_rollout_panels(stack, on_target, stations)

    rollout = {"to": "3.0.0", "from": "2.4.1", "count": 5}
    assert len(stack.simulator.change(rollout=rollout)["rolled_out"]) == 5
    assert on_target_in_simulator(stack) == (on_target + 5, stations)
    wait_for_rollout_panels(stack, on_target + 5, stations)

    stack.simulator.change(rollout={"to": "3.0.0", "count": stations})
    assert on_target_in_simulator(stack) == (stations, stations)
    wait_for_rollout_panels(stack, stations, stations)  # 100%


def data_issues(stack: Stack) -> dict[str, float]:
    """Stations per issue, as the *Data issues* panel shows them for the stack's mandant."""
    return {
        series["metric"]["issue"]: float(series["value"][1])
        for series in stack.prometheus.query(panel_expression("Data issues"))
    }


def test_stations_sharing_a_charge_box_identity_make_the_duplicate_alert_pending(stack):
    assert firing_or_pending(stack, DUPLICATE_ALERT) == []
    before = data_issues(stack)
    assert before["duplicate_charge_box_identity"] == 0
    twins = [
        {
            "attributes": {
                "label": f"Twin {n}",
                "chargeBoxIdentity": "cp_twin",
                "firmwareVersion": "2.4.1",
                "serialnumber": f"SNTWIN{n}",
                "iccid": f"894900000000000000{n}",
                "imsi": f"26201000000000{n}",
            }
        }
        for n in (1, 2)
    ]
    added = stack.simulator.change(stations=twins)["added"]
    (alert,) = wait_until(
        lambda: firing_or_pending(stack, DUPLICATE_ALERT),
        timeout=30,
        what=f"{DUPLICATE_ALERT} to go pending",
    )
    assert alert["state"] == "pending"  # it fires after `for: 15m`
    assert alert["labels"]["mandant"] == "127.0.0.1"
    assert alert["labels"]["severity"] == "warning"
    assert float(alert["value"]) == 2
    # the twins have a firmware version and SIM data: they count under the duplicates only
    assert data_issues(stack) == before | {"duplicate_charge_box_identity": 2}
    rows = stack.prometheus.query(panel_expression("Stations sharing a charge box identity"))
    assert {row["metric"]["station_id"] for row in rows} == set(added)

    # During an API outage the count stays: the alert stays pending, its `for:` runs on.
    with api_outage(stack):
        time.sleep(2)  # a few evaluations of the rules during the outage
        after = [(a["state"], a["activeAt"]) for a in firing_or_pending(stack, DUPLICATE_ALERT)]
        assert after == [("pending", alert["activeAt"])]
