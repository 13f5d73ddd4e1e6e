"""Fixture mandant states: two mandants, one healthy with tricky station labels and one
failing, from which the golden exposition and the dashboard checks are rendered."""

from __future__ import annotations

from types import MappingProxyType

from exporter.model import FirmwareTarget, MandantState, Snapshot, Station


def fixture_states() -> list[MandantState]:
    """A new list each call: tests may replace its items."""
    stations = [
        Station("id-1", "Station 1", "cp_1", "2.4.1", "SN1"),
        Station("id-2", 'Hof "Süd" \\ Tor\nrechts', "cp_2", "2.4.1", "", has_sim_data=False),
        Station("id-3", "Station 3", "cp_2", "", "SN3"),
    ]
    north = MandantState(
        name="north",
        snapshot=Snapshot.build(stations, taken_at=1_700_000_000.0),
        up=True,
        last_success=1_700_000_000.0,
        last_duration=0.25,
        added_total=4,
        removed_total=1,
        firmware_changes_total=2,
        failures=MappingProxyType(
            {"auth": 0, "http": 1, "timeout": 0, "connection": 2, "parse": 0}
        ),
        api_requests=MappingProxyType(
            {("token", "200"): 1, ("charging_stations", "200"): 9, ("charging_stations", "502"): 1}
        ),
        token_expiry=1_700_086_400.0,
        firmware_target=FirmwareTarget.parse(r"/2\.4\..*/"),
    )
    south = MandantState(
        name="south",
        last_duration=0.5,
        last_error="connection refused",
        failures=MappingProxyType(
            {"auth": 0, "http": 0, "timeout": 0, "connection": 1, "parse": 0}
        ),
    )
    return [north, south]
