"""A stepped wall clock end to end: the real exporter under libfaketime against the simulator.

Only the exporter's wall clock steps (its monotonic clock stays real, as in an NTP step); the
simulator, like a real API, keeps the real time. After every step, refreshes go on at their
interval: none may wait for the hour (or the decades) the wall clock jumped.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    E2E_CLIENT,
    ExporterProcess,
    SimulatorProcess,
    SteppedClock,
    env_for,
    wait_until,
)

pytestmark = pytest.mark.e2e

INTERVAL = 1.0  # --refresh.interval of the exporter under test
JITTER = 0.1 * INTERVAL  # the scheduler's jitter at that interval
LOOK = 1.0  # the scheduler notices a step within a second
SLACK = 2.0  # seconds a refresh may come late on a busy machine
BOUND = INTERVAL + JITTER + LOOK + SLACK
"""Seconds from a step (or a refresh) to the end of the next refresh, at most."""
HOLD = 5.0  # seconds a step stays before it is corrected
HOUR = 3600
DECADES = 30 * 365 * 86400

REFRESHED = re.compile(r"mandant \S+ refreshed in")


class Refreshes:
    """Counts the exporter's completed refreshes in its log and waits for the next one."""

    def __init__(self, exporter: ExporterProcess) -> None:
        self.exporter = exporter

    def count(self) -> int:
        return sum(1 for line in list(self.exporter.lines) if REFRESHED.search(line))

    def wait_next(self, what: str) -> None:
        seen = self.count()
        wait_until(lambda: self.count() > seen, BOUND, f"a refresh within {BOUND:g}s {what}")


@pytest.fixture
def stepped(tmp_path: Path) -> Iterator[Callable[[], tuple[SteppedClock, Refreshes]]]:
    """Starts a simulator and an exporter whose wall clock can step, refreshing every second
    and done with its first refresh."""
    processes: list[SimulatorProcess | ExporterProcess] = []

    def start() -> tuple[SteppedClock, Refreshes]:
        clock = SteppedClock(tmp_path)
        simulator = SimulatorProcess(
            "--stations", "10", "--client-id", E2E_CLIENT[0], "--client-secret", E2E_CLIENT[1]
        )
        processes.append(simulator)
        exporter = ExporterProcess(
            [f"--refresh.interval={INTERVAL:g}s"], env_for(simulator, **clock.environment())
        )
        processes.append(exporter)
        refreshes = Refreshes(exporter)
        wait_until(refreshes.count, 15.0, "the first refresh")
        return clock, refreshes

    yield start
    for process in reversed(processes):
        process.stop()


@pytest.mark.parametrize("offset", [-HOUR, HOUR], ids=["back", "forward"])
def test_refreshes_go_on_through_a_step_of_an_hour_and_its_correction(stepped, offset):
    clock, refreshes = stepped()
    refreshes.wait_next("before the step")
    clock.set(offset)
    stepped_at = time.monotonic()
    while time.monotonic() - stepped_at < HOLD:
        refreshes.wait_next(f"after the wall clock stepped by {offset:+d}s")
    clock.set(0)
    refreshes.wait_next("after the step was corrected")
    refreshes.wait_next("after the step was corrected")
    direction, back = ("back", "forward") if offset < 0 else ("forward", "back")
    log = refreshes.exporter.output
    assert f"the wall clock stepped {direction} by {HOUR:.1f}s" in log
    assert f"the wall clock stepped {back} by {HOUR:.1f}s" in log


def test_refreshes_go_on_after_the_clock_jumps_decades_ahead(stepped):
    """Before, the scheduler listed every run it had missed (946 million dates at 1 s) before
    running the next: no refresh, and the memory growing, for as long as that took."""
    clock, refreshes = stepped()
    refreshes.wait_next("before the step")
    clock.set(DECADES)
    for _ in range(3):
        refreshes.wait_next(f"after the wall clock stepped by {DECADES:+d}s")
    assert f"the wall clock stepped forward by {DECADES:.1f}s" in refreshes.exporter.output
