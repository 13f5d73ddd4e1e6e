"""The client library's own rendering of the fleet metrics: the reference that the exposition
(exporter/exposition.py, the one renderer of the product) must equal byte for byte.

Every family comes from ``FleetCollector`` but the per-station info family, which the
exposition writes by hand and which this module builds as the client library's
``GaugeMetricFamily``, in the order ``/metrics`` shows the families.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from exporter.metrics import INFO_HELP, INFO_NAME, FleetCollector, firmware_family
from exporter.model import MandantState

INFO_LABELS = (
    "mandant",
    "station_id",
    "label",
    "charge_box_identity",
    "firmware_version",
    "serial_number",
)


def info_family(states: Sequence[MandantState]) -> Metric:
    info = GaugeMetricFamily(INFO_NAME, INFO_HELP, labels=list(INFO_LABELS))
    for state in states:
        if state.snapshot is None:
            continue
        for station in state.snapshot.stations.values():
            values = (station.id, station.label, station.charge_box_identity)
            info.add_metric([state.name, *values, station.firmware_label, station.serial_number], 1)
    return info


class _Fleet:
    """Every fleet family for exactly these states, as the client library's registry gives
    them to its text formats."""

    def __init__(self, states: Sequence[MandantState], station_info: bool) -> None:
        self._states = list(states)
        self._collector = FleetCollector(station_info=station_info)

    def collect(self) -> Iterator[Metric]:
        states, collector = self._states, self._collector
        yield collector.stations_family(states)
        fleets = [(s.name, s.snapshot.firmware) for s in states if s.snapshot is not None]
        yield firmware_family(fleets)
        yield from collector.target_and_issue_families(states)
        if collector.station_info:
            yield info_family(states)
        yield from collector.other_families(states)


def library_text(
    states: Sequence[MandantState], *, station_info: bool = True, openmetrics: bool = False
) -> bytes:
    """The fleet metrics of ``states`` as the client library renders them, without the EOF
    line of OpenMetrics (the live part follows them in a body)."""
    generate = generate_openmetrics if openmetrics else generate_latest
    return generate(_Fleet(states, station_info)).removesuffix(b"# EOF\n")
