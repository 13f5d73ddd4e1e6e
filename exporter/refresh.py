"""One refresh of one mandant -> a new Snapshot or a recorded failure; the scheduler wiring.

Every refresh ends by swapping in one new immutable ``MandantState``: readers (the metrics and
the web pages) take a reference and never see half a refresh.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from types import MappingProxyType

from apscheduler.executors.pool import ThreadPoolExecutor

from exporter.api import MAX_STATIONS, CpoClient, connect
from exporter.auth import TokenSource
from exporter.authheader import HeaderForm
from exporter.errors import PaginationError, RefreshError
from exporter.http import DEFAULT_LIMITS, Deadline, Limits, RequestCounter
from exporter.model import FOLDED_FIRMWARE, Mandant, MandantState, Snapshot, diff
from exporter.scheduler import SteadyInterval, SteadyScheduler
from exporter.stationchanges import StationChanges

LOG = logging.getLogger(__name__)

MAX_READS = 3
"""Reads of the listing per refresh when the fleet changed: until two in a row agree."""

MAX_REFRESH_THREADS = 32
"""Mandants refreshed at the same time, at most."""


class MandantRefresher:
    """Refreshes one mandant; ``state`` always holds the latest complete result."""

    def __init__(
        self,
        mandant: Mandant,
        *,
        page_limit: int,
        timeout: float,
        concurrency: int = 1,
        max_stations: int = MAX_STATIONS,
        interval: float | None = None,
        limits: Limits = DEFAULT_LIMITS,
        cancel: threading.Event | None = None,
        on_publish: Callable[[], object] | None = None,
        station_changes: StationChanges | None = None,
        clock: Callable[[], float] = time.time,
        serial_numbers: bool = True,
    ) -> None:
        self.mandant = mandant
        self._on_publish = on_publish or (lambda: None)
        self._station_changes = station_changes
        self._timeout = timeout
        self._interval = interval
        self._cancel = cancel or threading.Event()
        self._clock = clock
        self._requests = RequestCounter()
        self._serial_numbers = serial_numbers  # only the info metric shows them
        self._max_stations = max_stations  # what one refresh may hold of the listing
        self._connection = self._connect(mandant, page_limit, concurrency, limits)
        self.state = MandantState(name=mandant.name, firmware_target=mandant.target_firmware)

    def _connect(
        self,
        mandant: Mandant,
        page_limit: int,
        concurrency: int,
        limits: Limits,
        header: HeaderForm | None = None,
    ) -> tuple[TokenSource, CpoClient]:
        return connect(
            mandant,
            page_limit,
            concurrency,
            self._requests,
            clock=self._clock,
            limits=limits,
            serial_numbers=self._serial_numbers,
            max_stations=self._max_stations,
            header=header,
        )

    def reconnect(
        self,
        mandant: Mandant,
        *,
        page_limit: int,
        concurrency: int,
        timeout: float,
        limits: Limits,
        max_stations: int = MAX_STATIONS,
    ) -> None:
        """Use changed settings of the same mandant (a reload): a new HTTP session and token
        source from the next refresh on; the published state and its counters stay, and so does
        the form of the Authorization header while the API and the setting stay."""
        self._max_stations = max_stations
        header: HeaderForm | None = self._connection[1].header
        old = self.mandant
        if (old.api_url, old.authorization) != (mandant.api_url, mandant.authorization):
            header = None
        self._connection = self._connect(mandant, page_limit, concurrency, limits, header)
        self._timeout = timeout
        self.mandant = mandant
        self._publish(self.state)

    def refresh(self) -> None:
        """Read the whole fleet and publish the result; never raises."""
        tokens, client = self._connection  # one connection for the whole refresh
        try:
            self._refresh(tokens, client)
        finally:
            # Idle keep-alive connections would each hold a file until the next refresh,
            # minutes later, when the server has long closed them: with 100 mandants, 800.
            client.close()

    def _refresh(self, tokens: TokenSource, client: CpoClient) -> None:
        started = time.monotonic()
        previous = self.state
        try:
            snapshot = self._read_confirmed(client, previous.snapshot)
        except RefreshError as exc:
            if self._cancel.is_set():  # shutting down: not a failure of the API
                LOG.info("refresh of mandant %s stopped: shutting down", self.mandant.name)
                return
            self._publish_failure(previous, exc.reason, str(exc), started, tokens)
            return
        except Exception:  # a bug of ours must not kill the scheduler thread
            LOG.exception("refresh of mandant %s failed unexpectedly", self.mandant.name)
            self._publish_failure(
                previous, "parse", "unexpected error, see the log", started, tokens
            )
            return
        state = replace(
            previous,
            snapshot=snapshot,
            up=True,
            last_success=snapshot.taken_at,
            last_success_monotonic=time.monotonic(),
            last_error=None,
            api_requests=self._requests.counts(),
            token_expiry=tokens.expires_at,
        )
        if previous.snapshot is not None:
            changes = diff(previous.snapshot, snapshot)
            counts = Counter(change.kind for change in changes)
            state = replace(
                state,
                added_total=previous.added_total + counts["added"],
                removed_total=previous.removed_total + counts["removed"],
                firmware_changes_total=previous.firmware_changes_total + counts["firmware_changed"],
            )
            if changes:
                LOG.info(
                    "mandant %s: %d stations (%d added, %d removed, %d firmware changes)",
                    self.mandant.name,
                    len(snapshot),
                    counts["added"],
                    counts["removed"],
                    counts["firmware_changed"],
                )
                if self._station_changes is not None:
                    self._station_changes.record(self.mandant.name, snapshot.taken_at, changes)
        else:
            LOG.info("mandant %s: first refresh, %d stations", self.mandant.name, len(snapshot))
        del previous  # a changed fleet's old dict goes before /metrics renders the new one
        self._finish(state, started)
        LOG.debug("mandant %s refreshed in %.3fs", self.mandant.name, self.state.last_duration)

    def _read_confirmed(self, client: CpoClient, published: Snapshot | None) -> Snapshot:
        """The fleet, once two reads in a row agree (or a read equals what is published).

        A listing read while the fleet changes can be torn without any sign in the pagination
        (a station deleted on an earlier page shifts a row past us while another is added):
        publishing only what a second read confirms keeps such a read from counting as
        stations added and removed.
        """
        deadline = Deadline(self._timeout, self._cancel)
        budget = client.budget()  # the stations all reads together may create
        candidate = published
        for _ in range(MAX_READS):
            known = candidate.stations if candidate is not None else None
            rows = client.stations(deadline, known, budget)
            if candidate is not None and candidate.listed_by(rows):
                # The same fleet object stays: no second copy, and /metrics keeps its rendering.
                return replace(candidate, taken_at=self._clock())
            mandant = self.mandant
            snapshot = Snapshot.build(
                rows, self._clock(), mandant.firmware_max_versions, mandant.target_firmware
            )
            del rows
            if candidate is not None and snapshot.stations == candidate.stations:
                return snapshot
            if candidate is not None and candidate is not published:
                LOG.info("mandant %s: fleet changed between two reads", self.mandant.name)
            candidate = snapshot
        raise PaginationError(
            f"charging stations of {self.mandant.name}: the fleet changed between every one of "
            f"{MAX_READS} reads"
        )

    def _publish_failure(
        self,
        previous: MandantState,
        reason: str,
        message: str,
        started: float,
        tokens: TokenSource,
    ) -> None:
        # The one gate of failure text to the log, the metrics and the (open) landing page:
        # it may quote a server, which may echo the secret or a token, or send a megabyte.
        message = tokens.redact(message)
        LOG.warning("refresh of mandant %s failed (%s): %s", self.mandant.name, reason, message)
        failures = dict(previous.failures)
        failures[reason] = failures.get(reason, 0) + 1
        self._finish(
            replace(
                previous,
                up=False,
                last_error=message,
                failures=MappingProxyType(failures),
                api_requests=self._requests.counts(),
                token_expiry=tokens.expires_at,
            ),
            started,
        )

    def _publish(self, state: MandantState) -> None:
        """Swap in the new state whole, then tell the exposition to render it. The firmware
        target and the firmware labels' bound are the mandant's as of now, so a refresh that
        ran across a reload keeps the reloaded ones."""
        mandant = self.mandant
        snapshot = state.snapshot
        if snapshot is not None:
            snapshot = snapshot.folded(mandant.firmware_max_versions, mandant.target_firmware)
            firmware = snapshot.firmware
            published = self.state.snapshot
            if firmware.folded and (published is None or published.firmware is not firmware):
                LOG.warning(
                    'mandant %s: %d of %d firmware versions (%d stations) shown as "%s" (data '
                    "issue firmware_version_folded): --firmware.max-versions=%d keeps the "
                    "target's and the most common; raise it if the versions are real",
                    mandant.name,
                    firmware.folded_versions,
                    len(snapshot.by_firmware),
                    firmware.folded,
                    FOLDED_FIRMWARE,
                    mandant.firmware_max_versions,
                )
        self.state = replace(state, snapshot=snapshot, firmware_target=mandant.target_firmware)
        self._on_publish()

    def _finish(self, state: MandantState, started: float) -> None:
        """Publish what a refresh that began at ``started`` (monotonic) ended with; one that
        took longer than the interval counts as an overrun."""
        duration = time.monotonic() - started
        state = replace(state, last_duration=duration)
        if self._interval is not None and duration > self._interval:
            # The scheduler never overlaps a job with itself: the next refresh starts late.
            LOG.warning(
                "refresh of mandant %s took %.1fs, longer than the refresh interval of %gs; "
                "the next refresh starts late",
                self.mandant.name,
                duration,
                self._interval,
            )
            state = replace(state, overruns=state.overruns + 1)
        self._publish(state)


def start_scheduler(refreshers: list[MandantRefresher], interval: float) -> SteadyScheduler:
    """Refresh every mandant now, then every ``interval`` seconds, each in its own job.

    Jobs never overlap themselves (max_instances=1), missed runs are coalesced into one, and a
    little jitter keeps several exporters from hitting the API in lockstep. The intervals are
    kept on the monotonic clock: a step of the wall clock does not move them.
    """
    scheduler = SteadyScheduler(
        # Threads start when needed, so the bound costs nothing with few mandants and leaves
        # room for mandants a reload adds.
        executors={"default": ThreadPoolExecutor(max_workers=MAX_REFRESH_THREADS)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
    )
    for refresher in refreshers:
        schedule(scheduler, refresher, interval)
    scheduler.start()
    return scheduler


def schedule(scheduler: SteadyScheduler, refresher: MandantRefresher, interval: float) -> None:
    """Refresh the mandant now, then every ``interval`` seconds (with a little jitter)."""
    scheduler.add_job(
        refresher.refresh,
        SteadyInterval(interval, jitter=min(interval * 0.1, 30.0)),
        id=job_id(refresher.mandant.name),
        name=f"refresh {refresher.mandant.name}",
        next_run_time=datetime.now(UTC),
    )


def job_id(mandant: str) -> str:
    """The scheduler's id of the refresh job of ``mandant``."""
    return f"refresh-{mandant}"
