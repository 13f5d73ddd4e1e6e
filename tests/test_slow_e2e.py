"""Slow and oversized answers end to end: the real exporter against the standalone simulator.

A server that trickles its answer (headers or body, API or token endpoint) fails the refresh
with reason ``timeout`` at the request bound, not minutes later; a 50 MB page is refused with
reason ``too_large`` without the exporter's memory growing by it; a fleet whose read takes
several refresh intervals is published all the same, and the overrun is counted. Settings
are given as environment variables, so the same tests run against an exporter that predates
them (and fail there for the reason they test).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.helpers import ExporterProcess, FaultStack, SimulatorProcess, env_for, wait_until

pytestmark = pytest.mark.e2e

SECRET = "slow-Secret-4d2a9"
STATIONS = 60
REQUEST_TIMEOUT = 2.0  # seconds: --api.request-timeout of these exporters
SLACK = 1.5  # seconds a refresh may take beyond the bound on a busy machine


class Stack(FaultStack):
    def failures(self, reason: str) -> float:
        return self.value("beenergised_refresh_failures_total", reason=reason)

    def wait_failure(self, reason: str, before: float, timeout: float = 15.0) -> None:
        wait_until(lambda: self.failures(reason) > before, timeout, f"a {reason} failure")


def peak_rss(pid: int) -> int:
    """The process's peak resident set size (VmHWM) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def environment(simulator: SimulatorProcess, **settings: str) -> dict[str, str]:
    return env_for(simulator, ("demo-client", SECRET), **settings)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    simulator = SimulatorProcess(
        "--stations", str(STATIONS), "--max-page-limit", "20", "--client-secret", SECRET
    )
    exporter = ExporterProcess(
        ["--refresh.interval=1s", "--api.page-limit=20"],
        environment(simulator, BEENERGISED_API_REQUEST_TIMEOUT=f"{REQUEST_TIMEOUT:g}s"),
    )
    stack = Stack(simulator, exporter)
    try:
        stack.wait_healthy()
        yield stack
    finally:
        exporter.stop()
        simulator.stop()


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "drip", "seconds": 0.2},
        {"kind": "drip", "seconds": 0.2, "part": "headers"},
        {"kind": "drip", "seconds": 0.2, "part": "headers", "endpoint": "token"},
    ],
    ids=["stations body", "stations headers", "token endpoint"],
)
def test_a_dripping_server_fails_the_refresh_at_the_request_bound(stack: Stack, spec: dict):
    stack.wait_healthy()
    timeouts, connections = stack.failures("timeout"), stack.failures("connection")
    log_lines = len(stack.exporter.lines)

    stack.fault(**spec)
    if spec.get("endpoint") == "token":  # the exporter needs a new token
        requests.post(stack.simulator.url + "/_sim/revoke_tokens", timeout=5).raise_for_status()
    try:
        stack.wait_failure("timeout", timeouts)
        duration = stack.value("beenergised_last_refresh_duration_seconds")
        assert duration is not None
        assert REQUEST_TIMEOUT - 0.1 <= duration <= REQUEST_TIMEOUT + SLACK
        assert stack.value("beenergised_up") == 0
        assert stack.value("beenergised_charging_stations") == STATIONS  # the last good fleet
        assert stack.failures("connection") == connections
    finally:
        stack.clear()
    stack.wait_healthy()
    failed = [line for line in stack.exporter.lines[log_lines:] if "failed (timeout)" in line]
    assert failed and "--api.request-timeout" in failed[0], failed
    assert SECRET not in stack.exporter.output


def test_a_50_mb_page_is_refused_without_the_memory_growing_by_it(stack: Stack):
    stack.wait_healthy()
    pid = stack.exporter.popen.pid
    rss_before = peak_rss(pid)
    refused = stack.failures("too_large")

    stack.fault(kind="oversized")  # 50 MB of valid JSON, the default size
    try:
        stack.wait_failure("too_large", refused)
        growth = peak_rss(pid) - rss_before
        assert growth < 10 * 1024 * 1024, f"peak RSS grew by {growth} bytes"
        metrics = stack.exporter.get("/metrics")
        assert len(metrics.content) < 100_000
        assert stack.value("beenergised_up") == 0
        assert stack.value("beenergised_charging_stations") == STATIONS
        assert stack.value(
            "beenergised_api_requests_total", endpoint="charging_stations", code="200"
        )
    finally:
        stack.clear()
    stack.wait_healthy()
    assert any("larger than 8 MiB" in line for line in stack.exporter.lines)


def test_a_fleet_that_takes_several_intervals_to_read_is_published(
    simulator_process, exporter_process
):
    # 40 stations in pages of 10 at 0.4 s a request: one read takes 1.6 s, the first refresh
    # (token and two reads, to confirm a new fleet) about 3.6 s, against an interval of 1 s.
    simulator = simulator_process(
        "--stations", "40", "--max-page-limit", "10", "--latency", "0.4", "--client-secret", SECRET
    )
    exporter = exporter_process(
        ["--refresh.interval=1s", "--api.page-limit=10", "--api.concurrency=1"],
        environment(simulator),
    )
    stack = Stack(simulator, exporter)
    # Before: nothing yet, and no failure either.
    assert stack.sample("beenergised_charging_stations") is None
    wait_until(lambda: stack.value("beenergised_charging_stations") == 40, what="the fleet")
    assert stack.value("beenergised_up") == 1
    first = stack.value("beenergised_last_refresh_duration_seconds")
    assert first is not None and first > 1.0
    assert (stack.value("beenergised_refresh_overruns_total") or 0) >= 1
    assert stack.failures("timeout") == 0
    # After: the next refreshes start late but publish too, and every overrun is counted.
    overruns = stack.value("beenergised_refresh_overruns_total") or 0
    stack.wait_healthy()
    wait_until(
        lambda: (stack.value("beenergised_refresh_overruns_total") or 0) > overruns,
        what="another overrun",
    )
    assert stack.failures("timeout") == 0
    assert any("longer than the refresh interval" in line for line in exporter.lines)
