"""A be.ENERGISED CPO API double for the exporter's --demo mode, the tests and the benchmarks.

It serves the two documented endpoints (OAuth2 token, JSON:API charging stations) plus
unauthenticated ``/_sim/`` control endpoints, on loopback only, from the standard library alone.
Faults (error statuses, hangs, broken bodies, schema drift, token loss, pages that shift under
the client) can be switched on and off while it runs, through ``/_sim/faults`` or
``Simulator.add_fault``.

The modules, each with one job: ``inventory`` (the fleet), ``wire`` (requests, responses,
paths), ``httpd`` (the HTTP plumbing), ``server`` (the endpoints and the control API),
``faults`` (FAULT_KINDS, the table of fault kinds, and the ``Fault`` a test switches on),
``faultkinds`` (one small type per kind: what it does, where, with which parameters) and
``__main__`` (the command line). The fault names below load ``faults`` on first use, so a demo
loads only the inventory and the server.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from exporter.simulator.httpd import DRIP_BYTES
from exporter.simulator.inventory import FIRMWARE_MIX, HISTORY_LENGTH, Inventory, fingerprint
from exporter.simulator.server import RequestRecord, Simulator

if TYPE_CHECKING:
    from exporter.simulator.faultkinds import (
        CONTROL_LABEL_SUFFIX,
        HUGE_ERROR_LENGTH,
        LONG_LABEL_LENGTH,
        OVERSIZED_BYTES,
    )
    from exporter.simulator.faults import FAULT_KINDS, Fault

_FAULT_NAMES = {
    "CONTROL_LABEL_SUFFIX": "exporter.simulator.faultkinds",
    "FAULT_KINDS": "exporter.simulator.faults",
    "HUGE_ERROR_LENGTH": "exporter.simulator.faultkinds",
    "LONG_LABEL_LENGTH": "exporter.simulator.faultkinds",
    "OVERSIZED_BYTES": "exporter.simulator.faultkinds",
    "Fault": "exporter.simulator.faults",
}

__all__ = [
    "CONTROL_LABEL_SUFFIX",
    "DRIP_BYTES",
    "FAULT_KINDS",
    "FIRMWARE_MIX",
    "HISTORY_LENGTH",
    "HUGE_ERROR_LENGTH",
    "LONG_LABEL_LENGTH",
    "OVERSIZED_BYTES",
    "Fault",
    "Inventory",
    "RequestRecord",
    "Simulator",
    "fingerprint",
]


def __getattr__(name: str) -> object:
    """Load the fault modules when one of their names is first asked for."""
    if name in _FAULT_NAMES:
        return getattr(importlib.import_module(_FAULT_NAMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
