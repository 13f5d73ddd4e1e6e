"""A listing without end, end to end: the real exporter process reads two mandants, each from
its own simulator process, and the "hostile" one's listing turns endless (the simulator's
``endless`` fault: every page full of new stations, no total, never a last page).

Sent 10,000 rows a page whatever page[limit] asks, the refresh fails at the first page with
reason ``pagination``; with page[limit] kept, it fails once the refresh holds more than
--api.max-stations new stations, with reason ``too_large``. Either way the exporter's memory
stays flat, the hostile mandant keeps its last good fleet and the calm one is served as
before.
Settings are given as environment variables, so the same tests run against an exporter that
predates them (and fail there for the reason they test).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.helpers import ExporterProcess, SimulatorProcess, mandants_yaml, samples, wait_until

pytestmark = pytest.mark.e2e

HOSTILE, CALM = "hostile", "calm"
HOSTILE_STATIONS, CALM_STATIONS = 30, 4
PEAK_RSS_BOUND = 160 * 1024 * 1024
"""Peak RSS the exporter may reach under either attack: it starts at about 40 MiB, and a page
of 10,000 rows decodes to about 25 MiB; the exporter before the fix passed 300 MiB within
the 15 s these tests wait."""


def peak_rss(pid: int) -> int:
    """The process's peak resident set size (VmHWM) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


@dataclass
class Stack:
    hostile: SimulatorProcess
    calm: SimulatorProcess
    exporter: ExporterProcess

    def value(self, name: str, mandant: str = HOSTILE, **labels: str) -> float:
        """The mandant's sample, 0 when it is not exported."""
        metrics = samples(self.exporter.get("/metrics").text)
        return metrics.get((name, frozenset({"mandant": mandant, **labels}.items())), 0.0)

    def failures(self, reason: str) -> float:
        return self.value("beenergised_refresh_failures_total", reason=reason)

    def successes(self, mandant: str) -> float:
        return self.value("beenergised_last_refresh_success_timestamp_seconds", mandant)

    def fault(self, **spec: object) -> None:
        response = requests.post(self.hostile.url + "/_sim/faults", json=spec, timeout=5)
        assert response.status_code == 200, response.text

    def failure_lines(self, reason: str) -> list[str]:
        return [line for line in self.exporter.lines if f"{HOSTILE} failed ({reason})" in line]


@pytest.fixture(scope="module")
def simulators() -> Iterator[tuple[SimulatorProcess, SimulatorProcess]]:
    hostile = SimulatorProcess("--stations", str(HOSTILE_STATIONS), "--seed", "1")
    calm = SimulatorProcess("--stations", str(CALM_STATIONS), "--seed", "2")
    try:
        yield hostile, calm
    finally:
        hostile.stop()
        calm.stop()


@pytest.fixture
def stack(
    simulators: tuple[SimulatorProcess, SimulatorProcess],
    exporter_process: Callable[..., ExporterProcess],
    tmp_path: Path,
) -> Callable[..., Stack]:
    """Starts an exporter (with ``settings`` as environment variables) on both simulators
    and waits until it serves both fleets; the hostile simulator's faults are cleared."""
    hostile, calm = simulators
    requests.delete(hostile.url + "/_sim/faults", timeout=5).raise_for_status()
    config = tmp_path / "config.yml"
    config.write_text(
        "refresh_interval: 1s\n" + mandants_yaml({HOSTILE: hostile.url, CALM: calm.url})
    )

    def start(**settings: str) -> Stack:
        exporter = exporter_process([f"--config.file={config}"], settings)
        stack = Stack(hostile, calm, exporter)
        wait_until(
            lambda: (
                stack.value("beenergised_charging_stations") == HOSTILE_STATIONS
                and stack.value("beenergised_charging_stations", CALM) == CALM_STATIONS
            ),
            what="both fleets served",
        )
        return stack

    return start


def assert_contained(stack: Stack, reason: str, logged_from: int) -> None:
    """The attack (on since log line ``logged_from``) fails the hostile mandant's refreshes
    with ``reason``, again and again, in flat memory and one log line each; its last good
    fleet stays, and the calm mandant is refreshed as before."""
    before = stack.failures(reason)
    wait_until(lambda: stack.failures(reason) > before, what=f"a {reason} failure")
    assert stack.value("beenergised_up") == 0
    assert stack.value("beenergised_charging_stations") == HOSTILE_STATIONS
    assert stack.value("beenergised_charging_stations_added_total") == 0
    assert stack.value("beenergised_charging_stations_removed_total") == 0
    calm_seen = stack.successes(CALM)
    wait_until(lambda: stack.failures(reason) >= before + 3, what="two more failures")
    assert stack.successes(CALM) > calm_seen  # refreshed meanwhile
    assert stack.value("beenergised_up", CALM) == 1
    assert stack.value("beenergised_charging_stations", CALM) == CALM_STATIONS
    peak = peak_rss(stack.exporter.popen.pid)
    assert peak < PEAK_RSS_BOUND, f"peak RSS {peak / 2**20:.0f} MiB"
    failed = stack.failures(reason) - before
    host = stack.hostile.url.removeprefix("http://")
    logged = [
        line
        for line in stack.exporter.lines[logged_from:]
        if ("level=info" in line or "level=warn" in line) and (HOSTILE in line or host in line)
    ]
    assert all(f"{HOSTILE} failed ({reason})" in line for line in logged), logged
    assert failed - 1 <= len(logged) <= failed, (failed, logged)


def test_rows_beyond_page_limit_fail_the_refresh_at_the_first_page(stack):
    """The issue's attack at the default settings: 10,000 rows a page, never a last page."""
    stack = stack()
    logged_from = len(stack.exporter.lines)
    stack.fault(kind="endless", per_page=10_000)
    assert_contained(stack, "pagination", logged_from)
    [line, *_] = stack.failure_lines("pagination")
    assert "10000 rows at page[offset]=0, more than the page[limit]=100 asked for" in line


def test_a_listing_that_keeps_page_limit_but_never_ends_stops_at_max_stations(stack):
    """Every page full (100 rows), no total, never a last page: the read stops at the bound."""
    stack = stack(BEENERGISED_API_MAX_STATIONS="2000")
    logged_from = len(stack.exporter.lines)
    stack.fault(kind="endless")
    assert_contained(stack, "too_large", logged_from)
    [line, *_] = stack.failure_lines("too_large")
    assert (
        "more than 2000 stations in one refresh (2100 received that it did not hold before, "
        "the last at page[offset]=2000); raise --api.max-stations"
    ) in line
