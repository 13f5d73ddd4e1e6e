"""The shipped alerts through a real Prometheus and a real Alertmanager to a webhook.

Two exporter replicas read the same simulated mandant; a real Prometheus (Debian package
`prometheus`) scrapes both with the project's rules unchanged (prometheus/alerts.yml) and
sends to a real Alertmanager (package `prometheus-alertmanager`) running the example routing
deploy/alertmanager/alertmanager.yml, with its webhook pointed at a receiver in this test and
group_wait/group_interval shortened to seconds. An API outage must deliver no fleet-change
notification; removing 3 stations must deliver exactly one notification for the mandant,
naming exactly those 3 stations.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
import yaml

from tests.helpers import ROOT, ExporterProcess, Process, SimulatorProcess, require_tool, wait_until

pytestmark = pytest.mark.e2e

EXAMPLE = ROOT / "deploy" / "alertmanager"
MANDANT = "127.0.0.1"
"""The mandant label of an exporter reading the simulator at http://127.0.0.1:PORT."""
FLEET_ALERTS = {
    "BeenergisedStationDisappeared",
    "BeenergisedStationAdded",
    "BeenergisedFleetLargelyDisappeared",
    "BeenergisedStationsDisappearedUnnamed",
    "BeenergisedStationsAddedUnnamed",
    "BeenergisedDuplicateChargeBoxIdentity",
}
MAX_BODY = 1 << 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Webhook:
    """An HTTP receiver on 127.0.0.1 that keeps the JSON bodies Alertmanager posts to it."""

    def __init__(self) -> None:
        self.notifications: list[dict] = []
        received = self.notifications

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = min(int(self.headers.get("Content-Length", 0)), MAX_BODY)
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def fleet(self) -> list[dict]:
        """The notifications of fleet-change alerts received so far."""
        return [n for n in self.notifications if n["groupLabels"]["alertname"] in FLEET_ALERTS]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Server(Process):
    """A Prometheus or Alertmanager binary on a free loopback port, ready when /-/ready is."""

    def __init__(self, args: list[str], what: str) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        super().__init__([*args, f"--web.listen-address={self.url.removeprefix('http://')}"])
        wait_until(self.ready, timeout=30, what=f"{what} to be ready")

    def ready(self) -> bool:
        if self.popen.poll() is not None:
            raise AssertionError(f"{self.popen.args[0]} exited:\n{self.output}")
        try:
            return requests.get(self.url + "/-/ready", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False


def alertmanager_config(webhook: str) -> dict:
    """The example routing with the test's webhook and group timers of seconds."""
    config = yaml.safe_load((EXAMPLE / "alertmanager.yml").read_text())
    config["templates"] = [str(EXAMPLE / "notification.tmpl")]
    config["route"] |= {"group_wait": "2s", "group_interval": "2s"}
    for receiver in config["receivers"]:
        for webhook_config in receiver.get("webhook_configs", []):
            webhook_config["url"] = webhook
    return config


class Stack:
    def __init__(self, tmp: Path) -> None:
        prometheus, alertmanager = (
            require_tool("prometheus"),
            require_tool("prometheus-alertmanager"),
        )
        self.webhook = Webhook()
        self.processes: list[Process] = []
        try:
            self._start(tmp, prometheus, alertmanager)
        except BaseException:
            self.stop()
            raise

    def _start(self, tmp: Path, prometheus: str, alertmanager: str) -> None:
        self.simulator = SimulatorProcess("--stations", "20", "--seed", "13")
        self.processes.append(self.simulator)
        env = {
            "BEENERGISED_API_URL": self.simulator.url,
            "BEENERGISED_TOKEN_URL": self.simulator.url + "/oauth2/token",
            "BEENERGISED_CLIENT_ID": "demo-client",
            "BEENERGISED_CLIENT_SECRET": "demo-secret",
        }
        self.exporters = [ExporterProcess(["--refresh.interval=1s"], env) for _ in range(2)]
        self.processes += self.exporters
        (tmp / "alertmanager.yml").write_text(yaml.safe_dump(alertmanager_config(self.webhook.url)))
        self.alertmanager = Server(
            [
                alertmanager,
                f"--config.file={tmp / 'alertmanager.yml'}",
                f"--storage.path={tmp / 'alertmanager'}",
                "--cluster.listen-address=",
                "--log.level=warn",
            ],
            "Alertmanager",
        )
        self.processes.append(self.alertmanager)
        targets = [exporter.url.removeprefix("http://") for exporter in self.exporters]
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ROOT / "prometheus" / "alerts.yml")],
            "alerting": {
                "alertmanagers": [
                    {"static_configs": [{"targets": [self.alertmanager.url[len("http://") :]]}]}
                ]
            },
            "scrape_configs": [
                {"job_name": "beenergised", "static_configs": [{"targets": targets}]}
            ],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.prometheus = Server(
            [
                prometheus,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                "--log.level=warn",
            ],
            "Prometheus",
        )
        self.processes.append(self.prometheus)

    def query(self, expr: str) -> list[dict]:
        response = requests.get(
            self.prometheus.url + "/api/v1/query", params={"query": expr}, timeout=10
        )
        body = response.json()
        assert body["status"] == "success", f"{expr}: {body.get('error')}"
        return body["data"]["result"]

    def up_replicas(self) -> int:
        """How many replicas Prometheus last saw refresh the mandant successfully."""
        return len(self.query(f'beenergised_up{{mandant="{MANDANT}"}} == 1'))

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.webhook.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("alertmanager"))
    try:
        wait_until(
            lambda: len(stack.query("count_over_time(beenergised_up[1m]) >= 5")) == 2,
            timeout=60,
            what="five scrapes of both replicas in Prometheus",
        )
        yield stack
    finally:
        stack.stop()


def watch(seconds: float) -> None:
    """Let Prometheus evaluate and Alertmanager group for a bounded while (both tick at 1-2 s)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.5)


def test_an_api_outage_delivers_no_fleet_notification(stack):
    fault = {"kind": "status", "status": 503}
    requests.post(stack.simulator.url + "/_sim/faults", json=fault, timeout=5).raise_for_status()
    try:
        wait_until(lambda: stack.up_replicas() == 0, timeout=30, what="both replicas to fail")
        watch(5)
    finally:
        requests.delete(stack.simulator.url + "/_sim/faults", timeout=5).raise_for_status()
    wait_until(lambda: stack.up_replicas() == 2, timeout=30, what="both replicas to recover")
    watch(5)  # longer than group_wait: a notification would have arrived
    assert stack.webhook.fleet() == []


def station_labels(stack: Stack) -> dict[str, dict[str, str]]:
    """The label and charge box identity of every station, by station id, as Prometheus has
    them."""
    rows = stack.query(f'beenergised_charging_station_info{{mandant="{MANDANT}"}}')
    return {
        row["metric"]["station_id"]: {
            "label": row["metric"]["label"],
            "charge_box_identity": row["metric"]["charge_box_identity"],
        }
        for row in rows
    }


def stations_named(notification: dict) -> dict[str, str]:
    """startsAt of each station alert in the notification, by station id."""
    return {alert["labels"]["station_id"]: alert["startsAt"] for alert in notification["alerts"]}


def test_each_batch_of_removed_stations_is_notified_naming_them(stack, tmp_path):
    """3 stations go, then 2 more while the first 3 still fire: the second batch is a
    notification of its own (the old alerts per mandant waited for the repeat interval)."""
    labels = station_labels(stack)
    first = stack.simulator.change(remove=3)["removed"]
    assert len(first) == 3 and set(first) <= set(labels)
    (notification,) = wait_until(
        stack.webhook.fleet, timeout=30, what="the notification of the disappeared stations"
    )
    watch(6)  # three group intervals: no second notification, none from the other replica
    assert stack.webhook.fleet() == [notification]

    assert notification["groupLabels"] == {
        "alertname": "BeenergisedStationDisappeared",
        "mandant": MANDANT,
    }
    assert sorted(stations_named(notification)) == sorted(first)
    for alert in notification["alerts"]:
        assert alert["status"] == "firing"
        assert "instance" not in alert["labels"]
        station = alert["labels"]["station_id"]
        assert {k: alert["labels"][k] for k in ("label", "charge_box_identity")} == labels[station]
        assert station in alert["annotations"]["description"]
    print(json.dumps(notification, indent=2))  # the example in docs/runbooks.md

    text = render(notification, tmp_path)
    print(text)
    assert text.startswith(f"[FIRING:3] BeenergisedStationDisappeared · mandant {MANDANT}\n")
    for station in first:
        assert f"{labels[station]['label']} (charge box identity" in text
    assert f"Dashboard: http://localhost:3000/d/beenergised-fleet?var-mandant={MANDANT}\n" in text

    second = stack.simulator.change(remove=2)["removed"]
    assert len(second) == 2

    def removals() -> list[dict]:
        # 5 of 20 gone may also page BeenergisedFleetLargelyDisappeared: a group of its own
        return [
            n
            for n in stack.webhook.fleet()
            if n["groupLabels"]["alertname"] == "BeenergisedStationDisappeared"
        ]

    wait_until(lambda: len(removals()) == 2, timeout=30, what="the second batch's notification")
    later = removals()[1]
    named = stations_named(later)
    # The group lists every alert that fires: the new two, and the first three with the time
    # their alerts began, unchanged (the same alerts, not new ones).
    assert sorted(named) == sorted(first + second)
    assert {s: named[s] for s in first} == stations_named(notification)
    assert min(named[s] for s in second) > max(named[s] for s in first)


def render(notification: dict, tmp: Path) -> str:
    """The notification through the example template, as an email or chat message shows it."""
    data = tmp / "notification.json"
    data.write_text(json.dumps(notification))
    result = subprocess.run(
        [
            require_tool("amtool"),
            "template",
            "render",
            f"--template.glob={EXAMPLE / 'notification.tmpl'}",
            f"--template.data={data}",
            "--template.text="
            '{{ template "beenergised.title" . }}\n{{ template "beenergised.text" . }}',
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout
