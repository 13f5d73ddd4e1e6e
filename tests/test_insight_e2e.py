"""End to end: the station changes, /changes, the rollout gauge and the data-quality metric of the
real exporter process, checked against what the standalone simulator process really changed.

The truth comes from the simulator itself: its own API, read with its credentials, before and
after each change; the exporter's answers are compared with that, never with themselves.
"""

from __future__ import annotations

import re

import pytest
import requests

from exporter.demo import DEMO_LAN_STATIONS, DEMO_TARGET_FIRMWARE
from tests.helpers import (
    E2E_CLIENT,
    ExporterProcess,
    SimulatorProcess,
    env_for,
    matching,
    scrape,
    value,
    wait_until,
)

pytestmark = pytest.mark.e2e

MANDANT = "127.0.0.1"


def start_simulator(simulator_process, stations: int) -> SimulatorProcess:
    return simulator_process(
        "--stations", str(stations), "--seed", "11", "--max-page-limit", "1000",
        "--client-id", E2E_CLIENT[0], "--client-secret", E2E_CLIENT[1],
    )  # fmt: skip


def api_fleet(simulator: SimulatorProcess) -> dict[str, dict]:
    """Every station as the simulator's own API lists it: id -> attributes."""
    token = requests.post(
        simulator.url + "/oauth2/token",
        data={"grant_type": "client_credentials"},
        auth=E2E_CLIENT,
        timeout=5,
    ).json()["access_token"]
    answer = requests.get(
        simulator.url + "/api/cpoapi/v1/charging_stations/",
        params={"page[limit]": 1000, "page[offset]": 0},
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
    ).json()
    assert answer["meta"]["pagination"]["lastPage"] is True
    return {row["id"]: row["attributes"] for row in answer["data"]}


KEYS = ("kind", "station_id", "label", "charge_box_identity", "firmware_from", "firmware_to")


def expected_changes(before: dict[str, dict], after: dict[str, dict]) -> set[tuple]:
    """Every change from ``before`` to ``after`` as a tuple of the KEYS of a /changes entry."""

    def change(kind: str, sid: str, attrs: dict, old: str, new: str) -> tuple:
        return (kind, sid, attrs["label"], attrs["chargeBoxIdentity"], old, new)

    changes = set()
    for sid, attrs in after.items():
        if sid not in before:
            changes.add(change("added", sid, attrs, "", attrs["firmwareVersion"]))
        elif before[sid]["firmwareVersion"] != attrs["firmwareVersion"]:
            old = before[sid]["firmwareVersion"]
            changes.add(change("firmware_changed", sid, attrs, old, attrs["firmwareVersion"]))
    for sid, attrs in before.items():
        if sid not in after:
            changes.add(change("removed", sid, attrs, attrs["firmwareVersion"], ""))
    return changes


def as_tuples(entries: list[dict]) -> list[tuple]:
    return [tuple(entry[key] for key in KEYS) for entry in entries]


def logfmt(text: str) -> str:
    """A pattern for ``text`` as a logfmt value (the empty string is written "")."""
    return re.escape(text) if text else '""'


def changes(exporter: ExporterProcess, **params: str) -> list[dict]:
    response = exporter.get("/changes", params=params)
    assert response.status_code == 200, response.text
    return response.json()["changes"]


def published(exporter: ExporterProcess, fleet: dict[str, dict]) -> bool:
    """Whether /metrics shows exactly the station ids of ``fleet``."""
    info = matching(scrape(exporter), "beenergised_charging_station_info")
    return {dict(labels)["station_id"] for labels in info} == set(fleet)


def test_the_change_log_matches_the_simulators_changes_exactly(simulator_process, exporter_process):
    simulator = start_simulator(simulator_process, 30)
    exporter = exporter_process(["--refresh.interval=1s"], env_for(simulator))
    fleet = api_fleet(simulator)
    wait_until(lambda: published(exporter, fleet), what="the first fleet on /metrics")
    assert changes(exporter) == []  # the first fleet is the baseline

    expected: set[tuple] = set()
    steps = [
        {"add": 3, "remove": 2},
        {"rollout": {"to": "3.1.0", "count": 4}},
        {"add": 1, "remove": 1, "rollout": {"to": "3.1.1", "count": 2, "from": "3.1.0"}},
    ]
    for step in steps:
        simulator.change(**step)
        after = api_fleet(simulator)
        expected |= expected_changes(fleet, after)
        fleet = after
        count = len(expected)
        wait_until(
            lambda count=count: len(changes(exporter, limit="1000")) == count,
            what=f"{count} entries on /changes",
        )
    entries = changes(exporter, limit="1000")
    assert len(as_tuples(entries)) == len(set(as_tuples(entries)))  # nothing twice
    assert set(as_tuples(entries)) == expected
    assert {e["kind"] for e in entries} == {"added", "removed", "firmware_changed"}
    ids = [e["id"] for e in entries]
    assert ids == sorted(ids, reverse=True)  # newest first
    assert {e["mandant"] for e in entries} == {MANDANT}

    # one structured log line per change, with the same fields
    for kind, sid, _, identity, before, after in expected:
        message = {"added": "station added", "removed": "station removed"}.get(
            kind, "station firmware changed"
        )
        exporter.wait_for_line(
            rf'msg="{message}" id=\d+ mandant={re.escape(MANDANT)} kind={kind} '
            rf"station_id={re.escape(sid)} .*charge_box_identity={re.escape(identity)} "
            rf"firmware_from={logfmt(before)} firmware_to={logfmt(after)}$"
        )

    # filters and limit on the real endpoint
    removed = changes(exporter, kind="removed", mandant=MANDANT)
    assert {e["station_id"] for e in removed} == {c[1] for c in expected if c[0] == "removed"}
    assert changes(exporter, limit="2") == entries[:2]
    assert exporter.get("/changes", params={"mandant": "elsewhere"}).status_code == 400
    page = exporter.get("/").text
    assert f"<td>{entries[0]['label']}</td>" in page  # the landing page's table, newest first


def test_the_rollout_gauge_follows_a_rollout(simulator_process, exporter_process):
    simulator = start_simulator(simulator_process, 40)
    exporter = exporter_process(
        ["--refresh.interval=1s", r"--firmware.target=/3\.1\.\d+/"], env_for(simulator)
    )
    target = r"/3\.1\.\d+/"

    def on_target() -> float | None:
        return value(scrape(exporter), "beenergised_charging_stations_firmware_target",
                     mandant=MANDANT, target=target)  # fmt: skip

    wait_until(lambda: on_target() == 0, what="0 stations on target")
    for version, count in (("3.1.0", 10), ("3.1.1", 15), ("3.2.0", 5), ("3.1.1", 40)):
        simulator.change(rollout={"to": version, "count": count})
        truth = sum(
            1
            for attrs in api_fleet(simulator).values()
            if re.fullmatch(r"3\.1\.\d+", attrs["firmwareVersion"])
        )
        wait_until(lambda truth=truth: on_target() == truth, what=f"{truth} stations on target")
    assert truth == 40


def test_data_issue_counts_match_a_fleet_with_known_problems(simulator_process, exporter_process):
    simulator = start_simulator(simulator_process, 12)  # clean: cp_1 .. cp_12, all with SIM data

    def station(identity: str, firmware: object = "2.4.1", **sim: object) -> dict:
        attributes = {"label": f"fixture {identity}", "chargeBoxIdentity": identity,
                      "iccid": "8949", "imsi": "26201", "serialnumber": "SN",
                      "firmwareVersion": firmware}  # fmt: skip
        return {"attributes": attributes | sim}

    simulator.change(
        stations=[
            station("fx-1", firmware=""),
            station("fx-2", firmware=None),
            station("fx-3", iccid=""),
            station("fx-4", imsi=None),
            station("fx-5", firmware="", iccid="", imsi=""),  # two issues, counted in both
            station("cp_1"),  # shares its identity with the simulator's own cp_1
            station("dup"),
            station("dup"),
            station("dup"),
            station(""),  # no identity is not a duplicate identity
            station(""),
        ]
    )
    exporter = exporter_process(["--refresh.interval=1s"], env_for(simulator))
    wait_until(
        lambda: value(scrape(exporter), "beenergised_charging_stations", mandant=MANDANT) == 23,
        what="23 stations on /metrics",
    )
    issues = {
        dict(labels)["issue"]: v
        for labels, v in matching(
            scrape(exporter), "beenergised_charging_stations_data_issues"
        ).items()
    }
    assert issues == {
        "no_firmware_version": 3,
        "no_sim_data": 3,
        "duplicate_charge_box_identity": 5,  # cp_1 twice, dup three times
        "invalid_text": 0,
        "text_too_long": 0,
        "duplicate_station_id": 0,
        "firmware_version_folded": 0,
    }


def test_demo_mode_shows_a_rollout_target_and_stations_without_sim_data(exporter_process):
    exporter = exporter_process(["--demo"], {})
    metrics = wait_until(
        lambda: (m := scrape(exporter)) and value(m, "beenergised_up", mandant="demo") and m,
        what="the demo fleet on /metrics",
    )
    issues = matching(metrics, "beenergised_charging_stations_data_issues")
    assert {dict(labels)["issue"]: v for labels, v in issues.items()}["no_sim_data"] == (
        DEMO_LAN_STATIONS
    )
    by_firmware = matching(metrics, "beenergised_charging_stations_by_firmware")
    pattern = DEMO_TARGET_FIRMWARE.strip("/")
    on_target = sum(
        v
        for labels, v in by_firmware.items()
        if re.fullmatch(pattern, dict(labels)["firmware_version"])
    )
    assert on_target >= DEMO_LAN_STATIONS  # the LAN stations run 2.5.0
    assert (
        value(
            metrics,
            "beenergised_charging_stations_firmware_target",
            mandant="demo",
            target=DEMO_TARGET_FIRMWARE,
        )
        == on_target
    )
