"""Mandant states -> the fleet's Prometheus metric families.

Metrics are built fresh from the latest immutable states (the client library's custom
collector pattern), so a station that left the fleet leaves ``/metrics`` too. The fleet
metrics show the last successful background refresh, not a live API call (see the HELP
texts). :mod:`exporter.exposition` renders these families, and writes the per-station info
family (``INFO_NAME``) itself: a family object of a large fleet would cost several times its
text.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.errors import FAILURE_REASONS
from exporter.model import (
    DATA_ISSUES,
    FOLDED_FIRMWARE,
    MAX_TEXT_LENGTH,
    FirmwareLabels,
    MandantState,
)

CACHED = " (from the last successful refresh of the API)"
INFO_NAME = "beenergised_charging_station_info"
INFO_HELP = "One series per charging station with its identifying labels; value 1" + CACHED + "."


def firmware_family(fleets: Iterable[tuple[str, FirmwareLabels]] = ()) -> Metric:
    """Stations per firmware label of each (mandant, labels); without any, the family's HELP
    and TYPE."""
    family = GaugeMetricFamily(
        "beenergised_charging_stations_by_firmware",
        "Charging stations per firmware version; 'unknown' when the API gives none, "
        f"'{FOLDED_FIRMWARE}' for the versions beyond --firmware.max-versions" + CACHED + ".",
        labels=["mandant", "firmware_version"],
    )
    for mandant, labels in fleets:
        for firmware, count in sorted(labels.counts.items()):
            family.add_metric([mandant, firmware], count)
    return family


class FleetCollector:
    """The ``beenergised_*`` families of the fleet for a list of mandant states, but for the
    per-station info lines, which the exposition writes itself (``station_info`` says whether
    it does)."""

    def __init__(self, *, station_info: bool = True, refresh_interval: float = 300.0) -> None:
        self._station_info = station_info
        self._refresh_interval = refresh_interval

    def stations_family(self, states: list[MandantState]) -> Metric:
        stations = GaugeMetricFamily(
            "beenergised_charging_stations",
            "Charging stations of the mandant" + CACHED + ".",
            labels=["mandant"],
        )
        for state in states:
            if state.snapshot is not None:  # no successful refresh yet: no data, not a false 0
                stations.add_metric([state.name], len(state.snapshot))
        return stations

    def target_and_issue_families(self, states: list[MandantState]) -> Iterator[Metric]:
        on_target = GaugeMetricFamily(
            "beenergised_charging_stations_firmware_target",
            "Charging stations on the mandant's target firmware (exact version or /regex/, as "
            "the target label shows); only for mandants with a target" + CACHED + ".",
            labels=["mandant", "target"],
        )
        issues = GaugeMetricFamily(
            "beenergised_charging_stations_data_issues",
            "Charging stations with a data issue: no_firmware_version, no_sim_data (iccid or "
            "imsi empty), duplicate_charge_box_identity (every station sharing one), "
            "invalid_text (control characters or text not in UTF-8, shown as U+FFFD), "
            f"text_too_long (cut to {MAX_TEXT_LENGTH} characters), duplicate_station_id (listed "
            "more than once, shown once), firmware_version_folded (firmware shown as "
            f"'{FOLDED_FIRMWARE}')" + CACHED + ".",
            labels=["mandant", "issue"],
        )
        for state in states:
            snapshot = state.snapshot
            if snapshot is None:
                continue
            target = state.firmware_target
            if target is not None:
                on_target.add_metric([state.name, target.text], target.stations_on_target(snapshot))
            for issue in DATA_ISSUES:
                issues.add_metric([state.name, issue], snapshot.data_issues[issue])
        yield from (on_target, issues)

    def other_families(self, states: list[MandantState]) -> Iterator[Metric]:
        """The change counters, the exporter's health and its build info."""
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

    @property
    def station_info(self) -> bool:
        return self._station_info

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
            "Failed refreshes by reason (auth, http, timeout, connection, parse, pagination, "
            "tls, too_large).",
            labels=["mandant", "reason"],
        )
        requests = CounterMetricFamily(
            "beenergised_api_requests",
            "HTTP requests to the API by endpoint and status code ('error': no answer).",
            labels=["mandant", "endpoint", "code"],
        )
        overruns = CounterMetricFamily(
            "beenergised_refresh_overruns",
            "Refreshes that took longer than the refresh interval, so that the next one started "
            "late.",
            labels=["mandant"],
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
            overruns.add_metric([state.name], state.overruns)
            for (endpoint, code), count in sorted(state.api_requests.items()):
                requests.add_metric([state.name, endpoint, code], count)
            if state.token_expiry is not None:
                token_expiry.add_metric([state.name], state.token_expiry)
        yield from (up, last_success, duration, failures, overruns, requests, token_expiry)


class RefreshAge(Collector):
    """Seconds since each mandant's last successful refresh, on the monotonic clock, at the
    moment of the scrape: a step of the exporter's wall clock does not move it. The fleet
    alerts subtract it from the scrape's time to tell which replica holds the newest data
    (docs/runbooks.md, "How the fleet alerts work")."""

    def __init__(
        self,
        states: Callable[[], Sequence[MandantState]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._states = states
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        now = self._clock()
        family = GaugeMetricFamily(
            "beenergised_last_refresh_success_age_seconds",
            "Seconds since the last successful refresh of the mandant, on the exporter's "
            "monotonic clock (a step of the wall clock does not move it).",
            labels=["mandant"],
        )
        for state in self._states():
            if state.last_success_monotonic is not None:
                family.add_metric([state.name], max(0.0, now - state.last_success_monotonic))
        yield family
