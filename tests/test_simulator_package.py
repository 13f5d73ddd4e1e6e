"""The shape of the exporter.simulator package: what a demo loads, and the names it exports."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import exporter.simulator
from exporter.simulator.faultkinds import FAULT_ENDPOINTS
from exporter.simulator.faults import FAULT_KINDS
from tests.helpers import ROOT

# A demo in a fresh interpreter: the two modules the brief names, one token, one page, the
# control API's state; then which modules of ours are loaded.
DEMO = """
import json, sys, urllib.request
import exporter.simulator.inventory, exporter.simulator.server

sim = exporter.simulator.server.Simulator(exporter.simulator.inventory.Inventory(size=3))
with sim:
    request = urllib.request.Request(
        sim.token_url, data=b"grant_type=client_credentials&client_id=demo-client"
        b"&client_secret=demo-secret", method="POST")
    with urllib.request.urlopen(request, timeout=10) as answer:
        token = json.load(answer)["access_token"]
    request = urllib.request.Request(
        sim.api_url + "/api/cpoapi/v1/charging_stations/",
        headers={"Authorization": "Bearer " + token})
    with urllib.request.urlopen(request, timeout=10) as answer:
        stations = len(json.load(answer)["data"])
    with urllib.request.urlopen(sim.api_url + "/_sim/state", timeout=10) as answer:
        state = json.load(answer)
print(json.dumps({
    "stations": stations,
    "state": state["stations"],
    "modules": sorted(name for name in sys.modules if name.split(".")[0] == "exporter"),
}))
"""


def run_python(code: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.e2e  # starts a Python interpreter
def test_a_demo_needs_only_the_inventory_and_the_server() -> None:
    demo = run_python(DEMO)
    assert demo["stations"] == 3 and demo["state"] == 3
    assert demo["modules"] == [
        "exporter",
        "exporter.simulator",
        "exporter.simulator.httpd",
        "exporter.simulator.inventory",
        "exporter.simulator.server",
        "exporter.simulator.wire",
    ]


@pytest.mark.e2e  # starts a Python interpreter
def test_the_fault_names_load_the_fault_module_on_first_use() -> None:
    code = """
import json, sys
from exporter.simulator import Inventory, Simulator
before = "exporter.simulator.faults" in sys.modules
from exporter.simulator import FAULT_KINDS, Fault
print(json.dumps({"before": before, "after": "exporter.simulator.faults" in sys.modules,
                  "kind": Fault("status", status=503).kind, "kinds": len(FAULT_KINDS)}))
"""
    loaded = run_python(code)
    assert loaded == {"before": False, "after": True, "kind": "status", "kinds": len(FAULT_KINDS)}


def imported_names() -> set[str]:
    """Every name a module of the project imports from exporter.simulator."""
    names: set[str] = set()
    for path in [*ROOT.glob("exporter/*.py"), *ROOT.glob("tests/*.py"), *ROOT.glob("bench/*.py")]:
        for node in ast.walk(ast.parse(Path(path).read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "exporter.simulator":
                names.update(alias.name for alias in node.names)
    return names


def test_every_name_the_project_imports_is_exported() -> None:
    names = imported_names()
    assert {"Simulator", "Inventory", "Fault", "FAULT_KINDS"} <= names
    assert names <= set(exporter.simulator.__all__)
    for name in exporter.simulator.__all__:
        assert getattr(exporter.simulator, name) is not None


def test_every_fault_kind_is_described_for_known_endpoints_and_in_the_docs() -> None:
    docs = (ROOT / "README.md").read_text(encoding="utf-8") + "".join(
        path.read_text(encoding="utf-8") for path in ROOT.glob("docs/**/*.md")
    )
    for kind, spec in FAULT_KINDS.items():
        assert spec.does.strip(), kind
        assert spec.endpoints and set(spec.endpoints) <= set(FAULT_ENDPOINTS), kind
        assert f"`{kind}`" in docs, f"fault kind {kind} is not documented"
