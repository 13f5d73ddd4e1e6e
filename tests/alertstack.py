"""A real alerting stack: the simulator, exporter replicas, the real Prometheus with the
project's rules, the real Alertmanager with the example routing, and a webhook receiver.

The replicas listen on loopback ports chosen up front, so a replica that is killed or
restarted comes back as the same Prometheus target; with ``clocks`` each runs under a wall
clock of its own (libfaketime, ``SteppedClock``). The webhook timestamps every notification on
arrival. tests/test_alertmanager_e2e.py and the chaos soak (tests/chaos_soak.py) build on it.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests
import yaml

from tests.helpers import (
    ROOT,
    ExporterProcess,
    Process,
    SimulatorProcess,
    SteppedClock,
    env_for,
    free_port,
    require_tool,
    wait_until,
)

EXAMPLE = ROOT / "deploy" / "alertmanager"
RULES = ROOT / "prometheus" / "alerts.yml"
MANDANT = "127.0.0.1"
"""The mandant label of an exporter reading the simulator at http://127.0.0.1:PORT."""
DEMO_CLIENT = ("demo-client", "demo-secret")
"""The client the simulator accepts by default."""
FLEET_ALERTS = {
    "BeenergisedStationDisappeared",
    "BeenergisedStationAdded",
    "BeenergisedFleetLargelyDisappeared",
    "BeenergisedStationsDisappearedUnnamed",
    "BeenergisedStationsAddedUnnamed",
    "BeenergisedDuplicateChargeBoxIdentity",
    # The per-mandant alerts of the rules before one alert per station (the soak's --rules
    # runs them to show what they missed).
    "BeenergisedStationsDisappeared",
    "BeenergisedStationsAdded",
}
"""The alerts that tell of a change of the fleet."""
MAX_BODY = 64 << 20
"""The largest notification the webhook reads: one lists every firing alert of its group."""


@dataclass(frozen=True)
class Notification:
    """One notification as the webhook received it, with the time it arrived."""

    monotonic: float
    wall: float
    body: dict[str, Any]

    @property
    def alertname(self) -> str:
        return str(self.body["groupLabels"].get("alertname", ""))


class Webhook:
    """An HTTP receiver on 127.0.0.1 that keeps the JSON bodies Alertmanager posts to it, each
    with its time of arrival."""

    def __init__(self) -> None:
        self.received: list[Notification] = []
        received, lock = self.received, threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                monotonic, wall = time.monotonic(), time.time()
                length = min(int(self.headers.get("Content-Length", 0)), MAX_BODY)
                body = json.loads(self.rfile.read(length))
                with lock:
                    received.append(Notification(monotonic, wall, body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def notifications(self) -> list[dict[str, Any]]:
        """The bodies received so far, in order of arrival."""
        return [notification.body for notification in list(self.received)]

    def fleet(self) -> list[dict[str, Any]]:
        """The notifications of fleet-change alerts received so far."""
        return [n.body for n in list(self.received) if n.alertname in FLEET_ALERTS]

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


def alertmanager_config(
    webhook: str, group_wait: str = "2s", group_interval: str = "2s"
) -> dict[str, Any]:
    """The example routing with ``webhook`` as its receiver and group timers of seconds."""
    config: dict[str, Any] = yaml.safe_load((EXAMPLE / "alertmanager.yml").read_text())
    config["templates"] = [str(EXAMPLE / "notification.tmpl")]
    config["route"] |= {"group_wait": group_wait, "group_interval": group_interval}
    for receiver in config["receivers"]:
        for webhook_config in receiver.get("webhook_configs", []):
            webhook_config["url"] = webhook
    return config


class Replica:
    """One exporter replica on a fixed loopback port, so a restart keeps its Prometheus target;
    with a ``clock``, its wall clock can be stepped."""

    def __init__(self, args: Sequence[str], env: dict[str, str], clock: SteppedClock | None):
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.clock = clock
        self._args = list(args)
        self._env = env | (clock.environment() if clock else {})
        self.process: ExporterProcess | None = None
        self.processes: list[ExporterProcess] = []

    def start(self) -> None:
        """Start the exporter and wait (bounded) until it listens."""
        self.process = ExporterProcess(self._args, self._env, listen=self.address)
        self.processes.append(self.process)

    def stop(self) -> None:
        """SIGTERM, as a restart does (bounded: SIGKILL after 10 s)."""
        if self.process is not None:
            self.process.stop()

    def kill(self) -> None:
        """SIGKILL: no shutdown at all."""
        if self.process is not None:
            self.process.popen.kill()
            self.process.stop()

    def signal(self, signum: signal.Signals) -> None:
        if self.process is not None and self.process.popen.poll() is None:
            self.process.popen.send_signal(signum)

    @property
    def output(self) -> str:
        """The log of every process this replica ran, in order."""
        return "\n".join(process.output for process in self.processes)


class Stack:
    """The simulator (``stations``, seeded), ``replicas`` exporter replicas reading it as one
    mandant, Prometheus (scraping every second, evaluating ``rules`` every
    ``evaluation_interval``), Alertmanager (the example routing, the group timers shortened)
    and the webhook. ``stop`` ends it all."""

    def __init__(
        self,
        tmp: Path,
        *,
        stations: int = 20,
        seed: int = 13,
        replicas: int = 2,
        rules: Path = RULES,
        clocks: bool = False,
        group_wait: str = "2s",
        group_interval: str = "2s",
        evaluation_interval: str = "1s",
    ) -> None:
        prometheus = require_tool("prometheus")
        alertmanager = require_tool("prometheus-alertmanager")
        self.rules = rules
        self.webhook = Webhook()
        self.simulator: SimulatorProcess | None = None
        self.replicas: list[Replica] = []
        self.servers: list[Server] = []
        try:
            self.simulator = SimulatorProcess("--stations", str(stations), "--seed", str(seed))
            env = env_for(self.simulator, DEMO_CLIENT)
            for index in range(replicas):
                clock = None
                if clocks:
                    (tmp / f"clock-{index}").mkdir()
                    clock = SteppedClock(tmp / f"clock-{index}")
                self.replicas.append(Replica(["--refresh.interval=1s"], env, clock))
            for replica in self.replicas:
                replica.start()
            config = alertmanager_config(self.webhook.url, group_wait, group_interval)
            (tmp / "alertmanager.yml").write_text(yaml.safe_dump(config))
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
            self.servers.append(self.alertmanager)
            prometheus_config = self._prometheus_config(rules, evaluation_interval)
            (tmp / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config))
            self.prometheus = Server(
                [
                    prometheus,
                    f"--config.file={tmp / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp / 'data'}",
                    "--log.level=warn",
                ],
                "Prometheus",
            )
            self.servers.append(self.prometheus)
        except BaseException:
            self.stop()
            raise

    def _prometheus_config(self, rules: Path, evaluation_interval: str) -> dict[str, Any]:
        targets = [replica.address for replica in self.replicas]
        return {
            "global": {"scrape_interval": "1s", "evaluation_interval": evaluation_interval},
            "rule_files": [str(rules)],
            "alerting": {
                "alertmanagers": [
                    {"static_configs": [{"targets": [self.alertmanager.url[len("http://") :]]}]}
                ]
            },
            "scrape_configs": [
                {"job_name": "beenergised", "static_configs": [{"targets": targets}]}
            ],
        }

    @property
    def exporters(self) -> list[ExporterProcess]:
        """The replicas' current exporter processes."""
        return [replica.process for replica in self.replicas if replica.process is not None]

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = requests.get(
            self.prometheus.url + "/api/v1/query", params={"query": expr}, timeout=10
        )
        body = response.json()
        assert body["status"] == "success", f"{expr}: {body.get('error')}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def up_replicas(self) -> int:
        """How many replicas Prometheus last saw refresh the mandant successfully."""
        return len(self.query(f'beenergised_up{{mandant="{MANDANT}"}} == 1'))

    def stop(self) -> None:
        """Prometheus and Alertmanager first, so nothing alerts on the replicas' ends."""
        for server in reversed(self.servers):
            server.stop()
        for replica in self.replicas:
            replica.stop()
        if self.simulator is not None:
            self.simulator.stop()
        self.webhook.stop()
