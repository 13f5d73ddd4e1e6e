"""The web server's count of the requests and connections it refused, as a live metric family.

Recorded by basic auth and the web server's limits, read at each scrape.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector


class RefusedRequests(Collector):
    """Requests and connections the web server refused, by reason. A rising count is a scraper
    with a stale password, someone guessing, or more (or slower) clients than the limits let
    in; README.md's metrics table says what each reason means."""

    REASONS = (
        "unauthorized",  # 401: no, unknown or wrong credentials
        "too_many_logins",  # 429: its own check running or waiting, too many waiting, too long
        "recent_wrong_password",  # 429: the client sent a wrong password lately; others first
        "too_many_requests",  # 503: --web.max-requests answered, as many waiting, or too long
        "too_many_connections",  # closed while sending its head, to make room for a new one
        "header_timeout",  # TLS handshake and head not done within --web.read-header-timeout
        "header_too_large",  # 431: a request head over 32 KiB
        "bad_request",  # an answer of the HTTP parser: 400, 414, 431 (over 100 fields), 505
        "out_of_file_descriptors",  # 503 through the reserve descriptor: the open-file limit
    )

    def __init__(self) -> None:
        self._counts = dict.fromkeys(self.REASONS, 0)
        self._lock = threading.Lock()

    def record(self, reason: str) -> None:
        with self._lock:
            self._counts[reason] += 1

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "beenergised_web_requests_refused",
            "Requests refused by basic auth or the web server's limits, by reason: "
            + ", ".join(self.REASONS)
            + ".",
            labels=["reason"],
        )
        for reason in self.REASONS:
            family.add_metric([reason], self._counts[reason])
        yield family
