"""Soak: churn plus random faults for a while; the exporter must stay correct and bounded.

About a minute by default (CI); set BEENERGISED_SOAK_SECONDS for a longer run.
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from exporter.simulator import fingerprint
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e

SECONDS = float(os.environ.get("BEENERGISED_SOAK_SECONDS", "60"))
WARM_UP = min(10.0, SECONDS / 4)
FAULTS = [
    {"kind": "status", "status": 503},
    {"kind": "status", "status": 500},
    {"kind": "status", "status": 429, "times": 1},
    {"kind": "html"},
    {"kind": "truncated"},
    {"kind": "disconnect"},
    {"kind": "latency", "seconds": 2},
    {"kind": "hang", "seconds": 5},
    {"kind": "revoke_token", "times": 1, "after": 1},
    {"kind": "insert_rows", "after": 1, "times": 2},
    {"kind": "delete_rows", "after": 1, "times": 2},
    {"kind": "duplicate_rows"},
    {"kind": "status", "status": 503, "endpoint": "token"},
]


def process_status(pid: int) -> tuple[int, int]:
    """(threads, resident KiB) of a process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    threads = int(re.search(r"^Threads:\s+(\d+)", status, re.M).group(1))
    rss = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))
    return threads, rss


def published_fingerprint(text: str) -> str | None:
    for family in text_string_to_metric_families(text):
        # Without samples (no refresh has succeeded yet) there is no fleet to fingerprint.
        if family.name == "beenergised_charging_station_info" and family.samples:
            return fingerprint(
                (s.labels["station_id"], s.labels["firmware_version"]) for s in family.samples
            )
    return None


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_soak_with_churn_and_random_faults(simulator_process, exporter_process):
    simulator = simulator_process(
        "--stations", "80", "--max-page-limit", "20", "--churn-interval", "0.7", "--seed", "11",
    )  # fmt: skip
    exporter = exporter_process(
        ["--refresh.interval=1s", "--api.page-limit=20", "--log.level=debug"],
        {
            "BEENERGISED_API_URL": simulator.url,
            "BEENERGISED_TOKEN_URL": simulator.url + "/oauth2/token",
            "BEENERGISED_CLIENT_ID": "demo-client",
            "BEENERGISED_CLIENT_SECRET": "demo-secret",
        },
    )
    wait_until(lambda: published_fingerprint(exporter.get("/metrics").text), what="first fleet")
    pid = exporter.popen.pid
    rng = random.Random(5)
    stop = threading.Event()

    def inject_faults() -> None:
        while not stop.wait(rng.uniform(0.5, 2.0)):
            spec = rng.choice(FAULTS)
            requests.post(simulator.url + "/_sim/faults", json=spec, timeout=5)
            stop.wait(rng.uniform(0.5, 3.0))
            requests.delete(simulator.url + "/_sim/faults", timeout=5)

    injector = threading.Thread(target=inject_faults, daemon=True)
    injector.start()
    seen: set[str] = set()
    samples: list[tuple[float, int, int]] = []
    started = time.monotonic()
    try:
        while (elapsed := time.monotonic() - started) < SECONDS:
            assert exporter.popen.poll() is None, exporter.output
            print_ = published_fingerprint(exporter.get("/metrics").text)
            assert print_ is not None
            seen.add(print_)
            threads, rss = process_status(pid)
            samples.append((elapsed, threads, rss))
            time.sleep(0.25)  # the scrape rhythm of this test, not a synchronisation
    finally:
        stop.set()
        injector.join(10)
        requests.delete(simulator.url + "/_sim/faults", timeout=5)

    history = set(requests.get(simulator.url + "/_sim/history", timeout=5).json()["fingerprints"])
    assert len(seen) > 3, "the fleet should have changed during the soak"
    assert seen <= history, "a published fleet never existed in the simulator"

    steady = [(threads, rss) for elapsed, threads, rss in samples if elapsed >= WARM_UP]
    threads = [t for t, _ in steady]
    rss = [r for _, r in steady]
    assert max(threads) - min(threads) <= 4, threads
    assert rss[-1] - rss[0] < 20 * 1024, f"RSS grew from {rss[0]} to {rss[-1]} KiB"

    failures = sum(
        s.value
        for family in text_string_to_metric_families(exporter.get("/metrics").text)
        if family.name == "beenergised_refresh_failures"
        for s in family.samples
    )
    assert failures > 0, "the faults should have failed some refreshes"
    assert exporter.stop() == 0
    assert "Traceback" not in exporter.output
    assert "unexpectedly" not in exporter.output
    print(
        f"\nsoak {SECONDS:.0f}s: {len(seen)} distinct fleets published, {failures:.0f} failed "
        f"refreshes, threads {min(threads)}-{max(threads)}, RSS {rss[0]}->{rss[-1]} KiB"
    )
