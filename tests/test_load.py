"""/metrics under 50 concurrent scrapers: every answer complete and correct.

Latency percentiles are printed (run with ``-s`` to see them); they are figures for the notes,
not assertions: timing is for benchmarks, never for tests.
"""

from __future__ import annotations

import statistics
import threading
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import wait_until

pytestmark = pytest.mark.e2e

SCRAPERS = 50
DURATION = 4.0
STATIONS = 2000


def test_fifty_concurrent_scrapers_all_get_the_whole_exposition(
    simulator_process, exporter_process
):
    simulator = simulator_process("--stations", str(STATIONS), "--max-page-limit", "100")
    exporter = exporter_process(
        # A worker per scraper: more would wait in the queue, and a second there is a 503 by
        # design (tests/test_webserver.py proves that bound); this test is about the answers.
        ["--refresh.interval=30s", "--log.level=info", f"--web.max-requests={SCRAPERS}"],
        {
            "BEENERGISED_API_URL": simulator.url,
            "BEENERGISED_TOKEN_URL": simulator.url + "/oauth2/token",
            "BEENERGISED_CLIENT_ID": "demo-client",
            "BEENERGISED_CLIENT_SECRET": "demo-secret",
        },
    )
    expected_line = f'beenergised_charging_stations{{mandant="127.0.0.1"}} {STATIONS:.1f}'
    wait_until(lambda: expected_line in exporter.get("/metrics").text, what="the fleet")

    latencies: list[float] = []
    problems: list[str] = []
    bodies: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + DURATION

    def scrape() -> None:
        with requests.Session() as session:
            while time.monotonic() < stop_at:
                started = time.perf_counter()
                try:
                    response = session.get(exporter.url + "/metrics", timeout=30)
                except requests.RequestException as exc:
                    with lock:
                        problems.append(type(exc).__name__)
                    continue
                elapsed = time.perf_counter() - started
                ok = response.status_code == 200 and expected_line in response.text
                with lock:
                    latencies.append(elapsed)
                    if not ok:
                        problems.append(f"HTTP {response.status_code}")
                    elif len(bodies) < 3:
                        bodies.append(response.text)

    threads = [threading.Thread(target=scrape) for _ in range(SCRAPERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DURATION + 60)
    assert not any(thread.is_alive() for thread in threads)

    assert problems == []
    assert len(latencies) >= SCRAPERS
    for body in bodies:
        families = {f.name: f for f in text_string_to_metric_families(body)}
        assert len(families["beenergised_charging_station_info"].samples) == STATIONS
    cuts = statistics.quantiles(latencies, n=100)
    print(
        f"\n/metrics with {STATIONS} stations, {SCRAPERS} concurrent scrapers, {DURATION:.0f}s: "
        f"{len(latencies)} scrapes, p50 {cuts[49] * 1000:.0f} ms, p90 {cuts[89] * 1000:.0f} ms, "
        f"p99 {cuts[98] * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms"
    )
    assert exporter.get("/healthz").status_code == 200
