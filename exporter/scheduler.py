"""APScheduler kept on the monotonic clock: refreshes keep their rhythm when the wall clock steps.

APScheduler 3 plans on wall time: it keeps each job's next run as a date and, after each round,
waits (on the monotonic clock) until the earliest one is due by the wall clock. A wall clock
stepped back an hour makes it wait an hour. One stepped forward by years makes it list every
run missed in between, one date each, before coalescing them into one: minutes of CPU and
gigabytes at a short interval. Two pieces keep it on time:

- ``SteadyInterval`` plans the next run from the round that starts a run, never from missed
  dates, and notes when that run is due on the monotonic clock;
- ``SteadyScheduler`` looks at both clocks before every round, at least once a second. When the
  wall clock moved against the monotonic clock (a step: NTP, an operator, a resumed VM), it puts
  every job back on its monotonic plan and logs one line about it.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger

LOG = logging.getLogger(__name__)

LOOK_PERIOD = 1.0
"""Seconds between two looks at the clocks, at most: a step is noticed within this time."""

STEP_TOLERANCE = 1.0
"""Seconds the wall clock may move against the monotonic clock between two looks without
counting as a step. Both clocks run at the same rate (NTP slews them alike); only a step, or a
thread paused between reading the two, moves one against the other."""

REPORT_LINES = 3
REPORT_PERIOD = 60.0
"""At most REPORT_LINES log lines about steps in REPORT_PERIOD seconds; further steps in that
time are counted and summed up in one line when the period allows it again."""

Clock = Callable[[], float]


class SteadyInterval(BaseTrigger):  # type: ignore[misc]  # APScheduler has no type hints
    """Every ``interval`` seconds plus a random delay of up to ``jitter``, counted from the
    scheduler round that started the last run. ``due`` is the next run on the monotonic clock
    (None until the first run is planned)."""

    def __init__(self, interval: float, jitter: float = 0.0, monotonic: Clock = time.monotonic):
        self.interval = interval
        self.jitter = jitter
        self.due: float | None = None
        self._monotonic = monotonic

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime:
        # From now, not from the previous run: APScheduler asks for one run after another
        # until it passes now, so this ends that at the first.
        delay = self.interval + random.uniform(0.0, self.jitter)
        self.due = self._monotonic() + delay
        return now + timedelta(seconds=delay)

    def __str__(self) -> str:
        return f"every {self.interval:g}s + up to {self.jitter:g}s (monotonic)"


class SteadyScheduler(BackgroundScheduler):  # type: ignore[misc]  # APScheduler has no type hints
    """A BackgroundScheduler whose ``SteadyInterval`` jobs stay on their monotonic plan when
    the wall clock steps."""

    def __init__(
        self, *, wall: Clock = time.time, monotonic: Clock = time.monotonic, **options: Any
    ):
        self._wall = wall
        self._monotonic = monotonic
        self._offset = wall() - monotonic()
        self._next_look = monotonic()
        self._lines: deque[float] = deque(maxlen=REPORT_LINES)  # when the last lines were logged
        self._unreported: list[float] = []  # steps since then that no line told of
        super().__init__(**options)

    def _process_jobs(self) -> float:
        """APScheduler's round (run what is due, return the seconds until the next is), after a
        look at the clocks once LOOK_PERIOD has passed since the last: a round comes then at
        the latest, and a clock that steps at every reading costs one look a period."""
        if self._monotonic() >= self._next_look:
            self._next_look = self._monotonic() + LOOK_PERIOD
            self.look()
        wait: float | None = super()._process_jobs()
        until_look = max(0.0, self._next_look - self._monotonic())
        return until_look if wait is None else min(wait, until_look)

    def look(self) -> None:
        """Compare the clocks (the scheduler thread does before each round); after a step of
        the wall clock, put every job back on its monotonic plan."""
        offset = self._wall() - self._monotonic()
        step, self._offset = offset - self._offset, offset
        if abs(step) <= STEP_TOLERANCE:
            self._report()
            return
        self._unreported.append(step)
        self._report(self._replan())

    def _replan(self) -> list[float]:
        """Set each job's next run to its monotonic plan (now, if that has passed or it has
        none yet); the seconds until each job's next run."""
        wall, monotonic = self._wall(), self._monotonic()
        delays = []
        for job in self.get_jobs():
            if not isinstance(job.trigger, SteadyInterval) or job.next_run_time is None:
                continue
            due = job.trigger.due
            delay = 0.0 if due is None else max(0.0, due - monotonic)
            try:
                self.modify_job(job.id, next_run_time=datetime.fromtimestamp(wall + delay, UTC))
            except JobLookupError:  # a reload removed it meanwhile
                continue
            delays.append(delay)
        return delays

    def _report(self, delays: list[float] | None = None) -> None:
        """Log the steps no line told of yet, unless REPORT_LINES lines were logged in the last
        REPORT_PERIOD; ``delays`` (of the re-plan after a step just now) say what was done."""
        now = self._monotonic()
        if not self._unreported or (
            len(self._lines) == REPORT_LINES and now - self._lines[0] < REPORT_PERIOD
        ):
            return
        self._lines.append(now)
        steps, self._unreported = self._unreported, []
        if delays is not None and len(steps) == 1:
            LOG.warning(
                "the wall clock stepped %s by %.1fs; %d refresh job(s) put back on the "
                "monotonic clock, the next refresh in %.1fs",
                _direction(steps[0]),
                abs(steps[0]),
                len(delays),
                min(delays, default=0.0),
            )
            return
        LOG.warning(
            "the wall clock stepped %d more times (net %s by %.1fs, the largest step %.1fs); "
            "each time the refresh jobs were put back on the monotonic clock",
            len(steps),
            _direction(sum(steps)),
            abs(sum(steps)),
            max(abs(step) for step in steps),
        )


def _direction(step: float) -> str:
    return "back" if step < 0 else "forward"
