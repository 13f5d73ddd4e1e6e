"""Mandant states -> Prometheus metric families (the client library's custom collector pattern).

Metrics are built fresh from the latest immutable states on every collect, so a station that
left the fleet leaves ``/metrics`` too. The fleet metrics are cached: they show the last
successful background refresh, not a live API call (see the HELP texts).
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.refresh import FAILURE_REASONS, MandantState

CACHED = " (from the last successful refresh of the API)"


class FleetCollector(Collector):
    """Yields every ``beenergised_*`` metric from the states handed over by ``states()``."""

    def __init__(
        self,
        states: Callable[[], Sequence[MandantState]],
        *,
        station_info: bool = True,
        refresh_interval: float = 300.0,
    ) -> None:
        self._states = states
        self._station_info = station_info
        self._refresh_interval = refresh_interval

    def describe(self) -> list[Metric]:
        # An empty description keeps registration from running collect() at start-up.
        return []

    def collect(self) -> Iterator[Metric]:
        states = list(self._states())
        yield from self._fleet(states)
        yield from self._changes(states)
        yield from self._health(states)
        build = GaugeMetricFamily(
            "beenergised_exporter_build_info",
            "Version of the exporter and of Python it runs on; value 1.",
            labels=["version", "python_version"],
        )
        build.add_metric([__version__, platform.python_version()], 1)
        yield build
        yield GaugeMetricFamily(
            "beenergised_refresh_interval_seconds",
            "Configured time between two refreshes of a mandant (alerts scale staleness by it).",
            value=self._refresh_interval,
        )

    def _fleet(self, states: list[MandantState]) -> Iterator[Metric]:
        stations = GaugeMetricFamily(
            "beenergised_charging_stations",
            "Charging stations of the mandant" + CACHED + ".",
            labels=["mandant"],
        )
        by_firmware = GaugeMetricFamily(
            "beenergised_charging_stations_by_firmware",
            "Charging stations per firmware version; 'unknown' when the API gives none"
            + CACHED
            + ".",
            labels=["mandant", "firmware_version"],
        )
        info = GaugeMetricFamily(
            "beenergised_charging_station_info",
            "One series per charging station with its identifying labels; value 1" + CACHED + ".",
            labels=[
                "mandant",
                "station_id",
                "label",
                "charge_box_identity",
                "firmware_version",
                "serial_number",
            ],
        )
        for state in states:
            snapshot = state.snapshot
            if snapshot is None:  # no successful refresh yet: no data, rather than a false 0
                continue
            stations.add_metric([state.name], len(snapshot))
            for firmware, count in sorted(snapshot.by_firmware.items()):
                by_firmware.add_metric([state.name, firmware], count)
            if self._station_info:
                for station in snapshot.stations.values():
                    info.add_metric(
                        [
                            state.name,
                            station.id,
                            station.label,
                            station.charge_box_identity,
                            station.firmware_label,
                            station.serial_number,
                        ],
                        1,
                    )
        yield stations
        yield by_firmware
        if self._station_info:
            yield info

    def _changes(self, states: list[MandantState]) -> Iterator[Metric]:
        families = [
            (
                "beenergised_charging_stations_added",
                "Stations that appeared between two successful refreshes; the first is the "
                "baseline.",
                "added_total",
            ),
            (
                "beenergised_charging_stations_removed",
                "Stations that disappeared between two successful refreshes.",
                "removed_total",
            ),
            (
                "beenergised_firmware_changes",
                "Stations whose firmware version changed between two successful refreshes.",
                "firmware_changes_total",
            ),
        ]
        for name, documentation, attribute in families:
            family = CounterMetricFamily(name, documentation, labels=["mandant"])
            for state in states:
                family.add_metric([state.name], getattr(state, attribute))
            yield family

    def _health(self, states: list[MandantState]) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "beenergised_up",
            "1 if the last refresh of the mandant succeeded, else 0.",
            labels=["mandant"],
        )
        last_success = GaugeMetricFamily(
            "beenergised_last_refresh_success_timestamp_seconds",
            "Unix time of the last successful refresh of the mandant.",
            labels=["mandant"],
        )
        duration = GaugeMetricFamily(
            "beenergised_last_refresh_duration_seconds",
            "Wall time of the last refresh of the mandant, successful or not.",
            labels=["mandant"],
        )
        failures = CounterMetricFamily(
            "beenergised_refresh_failures",
            "Failed refreshes by reason (auth, http, timeout, connection, parse, pagination).",
            labels=["mandant", "reason"],
        )
        requests = CounterMetricFamily(
            "beenergised_api_requests",
            "HTTP requests to the API by endpoint and status code ('error': no answer).",
            labels=["mandant", "endpoint", "code"],
        )
        token_expiry = GaugeMetricFamily(
            "beenergised_token_expiry_timestamp_seconds",
            "Unix time at which the cached access token of the mandant expires.",
            labels=["mandant"],
        )
        for state in states:
            up.add_metric([state.name], 1 if state.up else 0)
            if state.last_success is not None:
                last_success.add_metric([state.name], state.last_success)
            if state.last_duration is not None:
                duration.add_metric([state.name], state.last_duration)
            for reason in FAILURE_REASONS:
                failures.add_metric([state.name, reason], state.failures.get(reason, 0))
            for (endpoint, code), count in sorted(state.api_requests.items()):
                requests.add_metric([state.name, endpoint, code], count)
            if state.token_expiry is not None:
                token_expiry.add_metric([state.name], state.token_expiry)
        yield from (up, last_success, duration, failures, requests, token_expiry)
