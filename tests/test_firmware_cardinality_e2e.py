"""An API that gives its stations thousands of firmware versions, end to end: one exporter
process reads a "hostile" mandant whose 6,000 stations have 5,000 distinct versions and a
"calm" one beside it. The hostile mandant's firmware series stay at the bound and still add up
to its fleet, the rest is counted as a data issue, and the calm mandant is served as before."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    ExporterProcess,
    SimulatorProcess,
    mandants_yaml,
    matching,
    scrape,
    value,
    wait_until,
)

pytestmark = pytest.mark.e2e

HOSTILE, CALM = "hostile", "calm"
# --firmware.max-versions' default and the folded label, as documented
BOUND, FOLDED = 100, "(other)"
VERSIONS = 5_000
STATIONS = 6_000  # the first 1,000 versions on two stations each, the others on one
TARGET = f"7.0.{VERSIONS - 1}"  # one station: the rarest, and the last by name among its peers
BY_FIRMWARE = "beenergised_charging_stations_by_firmware"
FOLDED_ISSUE = "firmware_version_folded"


def hostile_rows() -> list[dict]:
    return [
        {
            "attributes": {
                "label": f"Station {i}",
                "chargeBoxIdentity": f"cp_{i}",
                "firmwareVersion": f"7.0.{i % VERSIONS}",
                "serialnumber": f"SN{i}",
                "iccid": f"8949{i:015d}",
                "imsi": f"26201{i:010d}",
            }
        }
        for i in range(STATIONS)
    ]


def firmware(metrics: dict, mandant: str) -> dict[str, float]:
    """The mandant's by_firmware series, by version."""
    return {
        dict(labels)["firmware_version"]: count
        for labels, count in matching(metrics, BY_FIRMWARE).items()
        if dict(labels)["mandant"] == mandant
    }


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[ExporterProcess, SimulatorProcess]]:
    """The exporter reading both mandants, and the calm mandant's simulator."""
    hostile = SimulatorProcess("--stations", "0", "--max-page-limit", "1000")
    calm = SimulatorProcess("--stations", "30", "--seed", "2")
    try:
        hostile.change(stations=hostile_rows())
        assert hostile.state()["stations"] == STATIONS
        config = tmp_path / "config.yml"
        config.write_text(
            "refresh_interval: 1s\npage_limit: 1000\n"
            + mandants_yaml(
                {HOSTILE: hostile.url, CALM: calm.url},
                {HOSTILE: f"    target_firmware: {TARGET}\n"},
            )
        )
        exporter = ExporterProcess([f"--config.file={config}"], {})
        try:
            yield exporter, calm
        finally:
            exporter.stop()
    finally:
        hostile.stop()
        calm.stop()


def successes(exporter: ExporterProcess, mandant: str) -> float:
    name = "beenergised_last_refresh_success_timestamp_seconds"
    return value(scrape(exporter), name, mandant=mandant) or 0.0


def test_thousands_of_firmware_versions_stay_at_the_bound_and_add_up(stack):
    exporter, calm = stack
    wait_until(lambda: successes(exporter, HOSTILE), 30, "the hostile mandant's first refresh")
    first = successes(exporter, HOSTILE)
    wait_until(lambda: successes(exporter, HOSTILE) > first + 1, 30, "two more refreshes")
    metrics = scrape(exporter)

    shown = firmware(metrics, HOSTILE)
    assert len(shown) == BOUND + 1  # the versions kept, and (other)
    assert sum(shown.values()) == value(metrics, "beenergised_charging_stations", mandant=HOSTILE)
    assert sum(shown.values()) == STATIONS
    folded = shown.pop(FOLDED)
    issue = value(metrics, "beenergised_charging_stations_data_issues", mandant=HOSTILE,
                  issue=FOLDED_ISSUE)  # fmt: skip
    assert issue == folded == STATIONS - sum(shown.values())
    # the target keeps its series though it is the rarest; the others are the most common
    assert shown.pop(TARGET) == 1
    assert set(shown.values()) == {2}
    on_target = "beenergised_charging_stations_firmware_target"
    assert value(metrics, on_target, mandant=HOSTILE, target=TARGET) == 1
    # the per-station info keeps every station's own version
    info = matching(metrics, "beenergised_charging_station_info")
    versions = Counter(dict(k)["firmware_version"] for k in info if dict(k)["mandant"] == HOSTILE)
    assert len(versions) == VERSIONS and versions.total() == STATIONS
    # one warning per fleet that was folded, not one per refresh
    warnings = [line for line in exporter.lines if f"--firmware.max-versions={BOUND}" in line]
    assert len(warnings) == 1 and "level=warn" in warnings[0]
    assert f"mandant {HOSTILE}: {VERSIONS - BOUND} of {VERSIONS} firmware versions" in warnings[0]

    # the calm mandant in the same process is served exactly, with nothing folded
    calm_versions = {v or "unknown": n for v, n in calm.state()["firmware"].items()}
    assert firmware(metrics, CALM) == calm_versions
    assert value(metrics, "beenergised_up", mandant=CALM) == 1
    assert value(metrics, "beenergised_charging_stations", mandant=CALM) == 30
    assert value(metrics, "beenergised_charging_stations_data_issues", mandant=CALM,
                 issue=FOLDED_ISSUE) == 0  # fmt: skip
