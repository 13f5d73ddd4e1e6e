"""Demo mode: the simulated CPO API in this process, and settings that point at it."""

from __future__ import annotations

import logging
import os
from dataclasses import replace

from exporter.config import Settings
from exporter.model import FirmwareTarget, Mandant, Secret
from exporter.simulator import Inventory, Simulator

LOG = logging.getLogger("exporter")

DEMO_STATIONS = 40
DEMO_CHURN_INTERVAL = 20.0
DEMO_LAN_STATIONS = 2
"""Demo stations on a wired network, with no SIM data: the data-quality metric shows them."""
DEMO_TARGET_FIRMWARE = r"/2\.5\..*|3\..*/"
"""The demo's rollout target: 2.5 or newer, which the simulator's churn rolls stations to."""


def start_demo_api(settings: Settings) -> tuple[Settings, Simulator]:
    """Start the in-process simulated CPO API and point the settings at it."""
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
