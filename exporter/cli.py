"""Command line entry point: settings -> refreshers -> scheduler -> HTTP server."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace

from prometheus_client import CollectorRegistry
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from exporter import __version__
from exporter.changelog import ChangeLog
from exporter.config import Mandant, Secret, Settings, load_settings
from exporter.errors import ConfigError
from exporter.http import Limits
from exporter.logs import setup_logging
from exporter.metrics import Exposition, FleetCollector
from exporter.model import FirmwareTarget
from exporter.refresh import MandantRefresher, MandantState, start_scheduler
from exporter.web import ExporterApp, serve
from exporter.webconfig import BasicAuth, load_web_config

LOG = logging.getLogger("exporter")

DEMO_STATIONS = 40
DEMO_CHURN_INTERVAL = 20.0
DEMO_LAN_STATIONS = 2
"""Demo stations on a wired network, with no SIM data: the data-quality metric shows them."""
DEMO_TARGET_FIRMWARE = r"/2\.5\..*|3\..*/"
"""The demo's rollout target: 2.5 or newer, which the simulator's churn rolls stations to."""
SHUTDOWN_GRACE = 3.0
"""Seconds to wait for running refreshes at shutdown, so SIGTERM always ends within 5 s."""


def start_demo_api(settings: Settings) -> tuple[Settings, object]:
    """Start the in-process simulated CPO API and point the settings at it."""
    from exporter.simulator import Inventory, Simulator

    secret = "demo-secret"
    inventory = Inventory(
        size=DEMO_STATIONS - DEMO_LAN_STATIONS, seed=int.from_bytes(os.urandom(2), "big")
    )
    inventory.add_custom(
        [
            {
                "attributes": {
                    "label": f"Depot (LAN) {number}",
                    "chargeBoxIdentity": f"depot_lan_{number}",
                    "iccid": "",
                    "imsi": "",
                    "serialnumber": f"SN-LAN-{number}",
                    "firmwareVersion": "2.5.0",
                }
            }
            for number in range(1, DEMO_LAN_STATIONS + 1)
        ]
    )
    simulator = Simulator(
        inventory,
        client_id="demo-client",
        client_secret=secret,
        churn_interval=DEMO_CHURN_INTERVAL,
    ).start()
    mandant = Mandant(
        name="demo",
        api_url=simulator.api_url,
        token_url=simulator.token_url,
        client_id="demo-client",
        client_secret=Secret(secret),
        token_auth_method="basic",
        target_firmware=FirmwareTarget.parse(DEMO_TARGET_FIRMWARE),
    )
    LOG.info(
        "demo mode: simulated CPO API at %s with %d stations", simulator.api_url, DEMO_STATIONS
    )
    return replace(settings, mandants=(mandant,)), simulator


def build_exposition(
    states: Callable[[], Sequence[MandantState]], settings: Settings
) -> Exposition:
    """Our fleet metrics (rendered once per refresh) and the client library's process, platform
    and GC collectors (rendered per scrape: they change all the time)."""
    live = CollectorRegistry()
    ProcessCollector(registry=live)
    PlatformCollector(registry=live)
    GCCollector(registry=live)
    fleet = FleetCollector(
        states, station_info=settings.station_info, refresh_interval=settings.refresh_interval
    )
    return Exposition(fleet, states, live)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the exporter until SIGTERM or SIGINT, or ``check``; return the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["check"]:
        from exporter.check import main as check  # here: exporter.check imports this module

        return check(args[1:])
    try:
        settings = load_settings(args, os.environ)
        web_config = load_web_config(settings.web_config_file) if settings.web_config_file else None
    except ConfigError as exc:
        print(f"beenergised-exporter: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format)
    for warning in settings.warnings:
        LOG.warning(warning)

    simulator = None
    if settings.demo:
        settings, simulator = start_demo_api(settings)

    shutting_down = threading.Event()
    refreshers: list[MandantRefresher] = []

    def states() -> list[MandantState]:
        return [refresher.state for refresher in refreshers]

    exposition = build_exposition(states, settings)
    changelog = ChangeLog(settings.changes_max_entries)
    refreshers += [
        MandantRefresher(
            mandant,
            page_limit=settings.page_limit,
            concurrency=settings.concurrency,
            timeout=settings.refresh_timeout,
            interval=settings.refresh_interval,
            limits=Limits(settings.request_timeout, settings.max_response_size),
            cancel=shutting_down,
            on_publish=exposition.update,
            changelog=changelog,
        )
        for mandant in settings.mandants
    ]
    app = ExporterApp(
        exposition,
        states,
        changelog,
        telemetry_path=settings.telemetry_path,
        auth=BasicAuth(web_config.users) if web_config and web_config.users else None,
    )
    try:
        server, _ = serve(app, settings.listen_host, settings.listen_port, web_config)
    except OSError as exc:
        LOG.error(
            "cannot listen on %s:%d: %s", settings.listen_host, settings.listen_port, exc.strerror
        )
        return 1
    scheduler = start_scheduler(refreshers, settings.refresh_interval)
    host, port = server.server_address[:2]
    LOG.info(
        "beenergised-exporter %s listening on %s:%d, %d mandant(s), refresh every %gs",
        __version__,
        host,
        port,
        len(refreshers),
        settings.refresh_interval,
    )

    def on_signal(signum: int, _frame: object) -> None:
        LOG.info("received %s, shutting down", signal.Signals(signum).name)
        shutting_down.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    shutting_down.wait()
    server.shutdown()
    server.server_close()
    if simulator is not None:
        simulator.stop()
    # Backoff waits end at once; a request in flight may not, so wait for it a little only.
    stopper = threading.Thread(target=scheduler.shutdown, kwargs={"wait": True}, daemon=True)
    stopper.start()
    stopper.join(SHUTDOWN_GRACE)
    if stopper.is_alive():
        LOG.warning("a refresh is still waiting for the API; exiting without it")
        logging.shutdown()
        os._exit(0)
    LOG.info("stopped")
    return 0
