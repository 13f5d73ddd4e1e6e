"""The whole exposition for a fixture, pinned by a golden file.

Regenerate after an intended change with:
    BEENERGISED_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_metrics.py
"""

import gzip
import os
import platform
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from exporter import __version__
from exporter.exposition import Exposition
from exporter.metrics import FleetCollector, RefreshAge
from exporter.model import MandantState, Snapshot
from tests.helpers import require_tool
from tests.reference import library_text
from tests.states import fixture_states

GOLDEN = Path(__file__).parent / "golden" / "metrics.txt"


def render(states, station_info=True, openmetrics=False) -> str:
    """The body of /metrics without live metrics (an OpenMetrics body ends with its EOF)."""
    exposition = Exposition(
        FleetCollector(station_info=station_info), lambda: states, CollectorRegistry()
    )
    return b"".join(exposition.body(openmetrics=openmetrics)).decode()


def normalised(text: str) -> str:
    """The build info with fixed values, so the golden file does not depend on the release."""
    return text.replace(
        f'python_version="{platform.python_version()}"', 'python_version="X"'
    ).replace(f'version="{__version__}"', 'version="X"')


def test_exposition_matches_the_golden_file():
    text = normalised(render(fixture_states()))
    if os.environ.get("BEENERGISED_UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_label_values_round_trip_through_the_parser():
    families = {f.name: f for f in text_string_to_metric_families(render(fixture_states()))}
    labels = {s.labels["label"] for s in families["beenergised_charging_station_info"].samples}
    assert labels == {"Station 1", 'Hof "Süd" \\ Tor\nrechts', "Station 3"}


def test_mandant_without_a_successful_refresh_shows_no_fleet_numbers():
    families = {f.name: f for f in text_string_to_metric_families(render(fixture_states()))}
    mandants = {s.labels["mandant"] for s in families["beenergised_charging_stations"].samples}
    assert mandants == {"north"}
    up = {s.labels["mandant"]: s.value for s in families["beenergised_up"].samples}
    assert up == {"north": 1.0, "south": 0.0}


def test_a_station_that_disappears_leaves_the_exposition():
    states = fixture_states()
    assert 'station_id="id-3"' in render(states)
    north = states[0]
    remaining = [s for s in north.snapshot.stations.values() if s.id != "id-3"]
    states[0] = MandantState(name="north", snapshot=Snapshot.build(remaining, 0.0), up=True)
    text = render(states)
    assert 'station_id="id-3"' not in text
    assert 'firmware_version="unknown"' not in text


def test_station_info_can_be_turned_off():
    text = render(fixture_states(), station_info=False)
    assert "beenergised_charging_station_info" not in text
    assert "beenergised_charging_stations_by_firmware" in text


def test_openmetrics_output_has_counters_with_total_and_eof():
    text = render(fixture_states(), openmetrics=True)
    assert "# TYPE beenergised_charging_stations_added counter" in text
    assert 'beenergised_charging_stations_added_total{mandant="north"} 4.0' in text
    assert text.endswith("# EOF\n")


@pytest.mark.e2e
def test_promtool_accepts_the_exposition():
    promtool = require_tool("promtool")
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=render(fixture_states()),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


class CountingCollector(FleetCollector):
    def __init__(self, station_info: bool = True) -> None:
        super().__init__(station_info=station_info)
        self.renders = 0

    def stations_family(self, states):
        self.renders += 1
        return super().stations_family(states)


class Box:
    def __init__(self, value) -> None:
        self.value = value


def exposition_for(box: Box, station_info: bool = True) -> tuple[Exposition, CountingCollector]:
    live = CollectorRegistry()
    ProcessCollector(registry=live)
    collector = CountingCollector(station_info)
    return Exposition(collector, lambda: box.value, live), collector


def whole(exposition: Exposition, **variant: bool) -> bytes:
    return b"".join(exposition.body(**variant))


@pytest.mark.parametrize("station_info", [True, False])
def test_the_streamed_rendering_equals_the_client_librarys_rendering(station_info):
    box = Box(fixture_states())
    exposition, _ = exposition_for(box, station_info)
    for openmetrics in (False, True):
        library = library_text(box.value, station_info=station_info, openmetrics=openmetrics)
        streamed = whole(exposition, openmetrics=openmetrics).split(b"# HELP process_")[0]
        assert streamed == library


def test_the_fleet_is_rendered_once_per_change_not_per_scrape():
    box = Box(fixture_states())
    exposition, collector = exposition_for(box)
    for _ in range(5):
        exposition.body()
    assert collector.renders == 1
    box.value = [*box.value[:1], MandantState(name="south")]
    exposition.body()
    exposition.body()
    assert collector.renders == 2


def test_every_variant_carries_the_same_fleet_and_live_process_metrics():
    exposition, collector = exposition_for(Box(fixture_states()))
    plain = whole(exposition).decode()
    assert normalised(plain).startswith(GOLDEN.read_text())
    assert "process_cpu_seconds_total" in plain
    assert (
        gzip.decompress(whole(exposition, gzipped=True))
        .decode()
        .startswith(plain.split("# HELP process_")[0])
    )
    openmetrics = whole(exposition, openmetrics=True).decode()
    assert openmetrics.count("# EOF") == 1 and openmetrics.endswith("# EOF\n")
    names = {f.name for f in openmetrics_families(openmetrics)}
    assert {"beenergised_charging_station_info", "process_cpu_seconds"} <= names
    om_gzip = gzip.decompress(whole(exposition, openmetrics=True, gzipped=True)).decode()
    assert om_gzip.endswith("# EOF\n") and "beenergised_up" in om_gzip
    assert collector.renders == 2  # the plain text, then the OpenMetrics text; gzip reuses them


def test_refresh_age_counts_on_the_monotonic_clock_from_the_last_success_only():
    """The fleet alerts date each replica's data by this age: it must not jump with the wall
    clock, and a mandant without a successful refresh has no data to date."""
    now = [1000.0]
    states = [
        MandantState(name="north", last_success=5.0e9, last_success_monotonic=990.0),
        MandantState(name="south"),  # never refreshed successfully
    ]
    age = RefreshAge(lambda: states, clock=lambda: now[0])

    def samples() -> dict[str, float]:
        (family,) = age.collect()
        assert family.name == "beenergised_last_refresh_success_age_seconds"
        return {sample.labels["mandant"]: sample.value for sample in family.samples}

    assert samples() == {"north": 10.0}
    now[0] = 1002.5
    assert samples() == {"north": 12.5}  # last_success (wall clock) plays no part
