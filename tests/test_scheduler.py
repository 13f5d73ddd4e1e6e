"""The scheduler on the monotonic clock: steps of the wall clock, given by injected clocks."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from apscheduler.jobstores.base import JobLookupError

from exporter import scheduler as steady
from exporter.scheduler import SteadyInterval, SteadyScheduler
from tests.helpers import wait_until

HOUR = 3600.0


class Clock:
    """A clock that moves only when told to."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Clocks:
    """A wall clock and a monotonic clock: ``advance`` moves both, ``step`` the wall clock."""

    def __init__(self) -> None:
        self.wall = Clock(1_700_000_000.0)
        self.monotonic = Clock(5_000.0)

    def advance(self, seconds: float) -> None:
        self.wall.now += seconds
        self.monotonic.now += seconds

    def step(self, seconds: float) -> None:
        self.wall.now += seconds

    def date(self, seconds_from_now: float = 0.0) -> datetime:
        return datetime.fromtimestamp(self.wall.now + seconds_from_now, UTC)


def nothing() -> None:
    """A job that does nothing; these schedulers never run one."""


def scheduler_with_jobs(
    clocks: Clocks, *plans: float | None, wall: Callable[[], float] | None = None
) -> SteadyScheduler:
    """A scheduler (not started: it runs nothing) with one job per plan: the seconds until its
    next run as its trigger planned it, or None for a job added but never planned."""
    scheduler = SteadyScheduler(wall=wall or clocks.wall, monotonic=clocks.monotonic)
    for number, plan in enumerate(plans):
        trigger = SteadyInterval(60.0, monotonic=clocks.monotonic)
        if plan is not None:
            trigger.due = clocks.monotonic.now + plan
        next_run = clocks.date(plan or 0.0)
        scheduler.add_job(nothing, trigger, id=f"job-{number}", next_run_time=next_run)
    return scheduler


def next_runs(scheduler: SteadyScheduler) -> list[float]:
    """The Unix times of the jobs' next runs, earliest first."""
    return sorted(job.next_run_time.timestamp() for job in scheduler.get_jobs())


def test_the_next_run_is_one_interval_and_some_jitter_after_now():
    clocks = Clocks()
    trigger = SteadyInterval(300.0, jitter=30.0, monotonic=clocks.monotonic)
    now = clocks.date()
    fire = trigger.get_next_fire_time(now - timedelta(seconds=300), now)
    delay = (fire - now).total_seconds()
    assert 300.0 <= delay <= 330.0
    assert trigger.due == pytest.approx(clocks.monotonic.now + delay)


def test_after_a_forward_step_of_decades_the_next_run_is_after_now():
    """APScheduler lists the missed runs by asking for the next one until it passes now: with
    the previous run as the start, 30 years at 1 s meant 946 million dates in one list."""
    clocks = Clocks()
    trigger = SteadyInterval(1.0, monotonic=clocks.monotonic)
    previous = clocks.date()
    later = previous + timedelta(days=365 * 30)
    assert trigger.get_next_fire_time(previous, later) == later + timedelta(seconds=1)


@pytest.mark.parametrize("step", [-HOUR, HOUR, -30.0, 86400.0 * 365 * 30])
def test_a_step_puts_every_job_back_on_its_monotonic_plan(step, caplog):
    clocks = Clocks()
    scheduler = scheduler_with_jobs(clocks, 20.0, 50.0, None)
    clocks.advance(5.0)
    clocks.step(step)
    with caplog.at_level(logging.WARNING, "exporter.scheduler"):
        scheduler.look()
    # Due as planned: 15 s and 45 s from now by either clock; the unplanned job at once.
    assert next_runs(scheduler) == [clocks.wall.now, clocks.wall.now + 15.0, clocks.wall.now + 45.0]
    direction = "back" if step < 0 else "forward"
    assert caplog.messages == [
        f"the wall clock stepped {direction} by {abs(step):.1f}s; 3 refresh job(s) put back on "
        "the monotonic clock, the next refresh in 0.0s"
    ]


def test_a_job_whose_plan_passed_while_the_step_went_unnoticed_runs_at_once():
    clocks = Clocks()
    scheduler = scheduler_with_jobs(clocks, 0.5)
    clocks.step(-HOUR)
    clocks.advance(0.9)  # the scheduler looks at least once a second
    scheduler.look()
    assert next_runs(scheduler) == [clocks.wall.now]


@pytest.mark.parametrize("move", [0.0, 0.9, -0.9])
def test_the_clocks_moving_together_or_within_the_tolerance_change_nothing(move, caplog):
    clocks = Clocks()
    scheduler = scheduler_with_jobs(clocks, 20.0)
    before = next_runs(scheduler)
    clocks.advance(1.0)
    clocks.step(move)
    with caplog.at_level(logging.WARNING, "exporter.scheduler"):
        scheduler.look()
    assert next_runs(scheduler) == before
    assert caplog.messages == []


def test_a_job_a_reload_removed_during_the_replan_is_left_out(monkeypatch, caplog):
    clocks = Clocks()
    scheduler = scheduler_with_jobs(clocks, 20.0, 30.0)
    modify = scheduler.modify_job

    def removed_first(job_id, *args, **changes):
        if job_id == "job-0":
            raise JobLookupError(job_id)
        return modify(job_id, *args, **changes)

    monkeypatch.setattr(scheduler, "modify_job", removed_first)
    clocks.step(-HOUR)
    with caplog.at_level(logging.WARNING, "exporter.scheduler"):
        scheduler.look()
    assert scheduler.get_job("job-1").next_run_time.timestamp() == clocks.wall.now + 30.0
    assert "1 refresh job(s) put back on the monotonic clock, the next refresh in 30.0s" in (
        caplog.text
    )


def test_a_clock_that_keeps_stepping_is_summed_up_in_a_few_lines(caplog):
    clocks = Clocks()
    scheduler = scheduler_with_jobs(clocks, 100.0)
    steps = [-5.0, 5.0] * 10
    with caplog.at_level(logging.WARNING, "exporter.scheduler"):
        for step in steps:
            clocks.advance(1.0)
            clocks.step(step)
            scheduler.look()
        assert len(caplog.messages) == steady.REPORT_LINES
        # Every step was acted on, reported or not: the job is still on its plan.
        assert next_runs(scheduler) == [clocks.wall.now + 100.0 - len(steps)]
        clocks.advance(steady.REPORT_PERIOD)
        scheduler.look()
    assert len(caplog.messages) == steady.REPORT_LINES + 1
    assert caplog.messages[-1] == (
        f"the wall clock stepped {len(steps) - steady.REPORT_LINES} more times (net forward by "
        "5.0s, the largest step 5.0s); each time the refresh jobs were put back on the "
        "monotonic clock"
    )


def test_the_running_scheduler_looks_at_the_clocks_at_least_once_a_second():
    looks = 0

    def wall() -> float:
        nonlocal looks
        looks += 1
        return time.time()

    scheduler = SteadyScheduler(wall=wall)
    hour_later = datetime.now(UTC) + timedelta(hours=1)
    scheduler.add_job(nothing, SteadyInterval(HOUR), next_run_time=hour_later)
    scheduler.start()
    try:
        before = looks
        # The only job is an hour away; still, three looks within about three seconds.
        wait_until(lambda: looks >= before + 3, 3 * steady.LOOK_PERIOD + 3.0, "three looks")
    finally:
        scheduler.shutdown()


def test_a_clock_that_steps_at_every_reading_costs_one_look_a_second(caplog):
    """Each re-plan wakes the scheduler for another round: without a limit, a clock that
    steps at every reading would keep it re-planning without pause."""
    clocks = Clocks()
    readings = 0

    def wall() -> float:
        nonlocal readings
        readings += 1
        return clocks.wall.now + 10.0 * readings

    scheduler = scheduler_with_jobs(clocks, 20.0, wall=wall)
    before = readings
    with caplog.at_level(logging.WARNING, "exporter.scheduler"):
        for _ in range(100):
            scheduler._process_jobs()  # the rounds of one second
        assert readings - before == 2  # one look and its re-plan
        clocks.advance(steady.LOOK_PERIOD)
        scheduler._process_jobs()
    assert readings - before == 4
    assert len(caplog.messages) == 2
