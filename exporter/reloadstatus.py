"""The status of the last reload of the configuration, as a live metric family.

Recorded by the reload (SIGHUP or ``POST /-/reload``), read at each scrape.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class ReloadStatus(Collector):
    """Whether the last reload of the configuration (SIGHUP or POST /-/reload) worked, as
    Prometheus reports its own; the start counts as a successful load."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._successful = True
        self._success_time = clock()

    def record(self, successful: bool) -> None:
        self._successful = successful
        if successful:
            self._success_time = self._clock()

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "beenergised_config_last_reload_successful",
            "1 if the last reload of the configuration (SIGHUP or /-/reload) succeeded, else 0.",
            value=1 if self._successful else 0,
        )
        yield GaugeMetricFamily(
            "beenergised_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful load of the configuration (start or reload).",
            value=self._success_time,
        )
