from collections.abc import Iterator
from dataclasses import replace

import pytest

from exporter.http import DEFAULT_LIMITS, RequestCounter
from exporter.model import Mandant, MandantState, Secret, Station
from exporter.refresh import MandantRefresher, start_scheduler
from exporter.simulator import Inventory, Simulator
from exporter.simulator.inventory import spread_mix
from exporter.stationchanges import StationChanges
from tests.helpers import wait_until


@pytest.fixture
def inventory() -> Inventory:
    return Inventory(size=23, seed=7)


@pytest.fixture
def simulator(inventory) -> Iterator[Simulator]:
    with Simulator(inventory, max_page_limit=10) as sim:
        yield sim


def mandant_for(sim: Simulator, secret: str = "demo-secret", name: str = "north") -> Mandant:
    return Mandant(
        name=name,
        api_url=sim.api_url,
        token_url=sim.token_url,
        client_id="demo-client",
        client_secret=Secret(secret),
        token_auth_method="basic",
    )


def test_first_refresh_is_the_baseline(simulator):
    refresher = MandantRefresher(mandant_for(simulator), page_limit=5, timeout=30)
    refresher.refresh()
    state = refresher.state
    assert state.up and state.ready
    assert len(state.snapshot) == 23
    assert sum(state.snapshot.by_firmware.values()) == 23
    assert (state.added_total, state.removed_total, state.firmware_changes_total) == (0, 0, 0)
    # 23 stations in pages of 5: 5 pages, read twice to confirm the first fleet
    assert state.api_requests[("charging_stations", "200")] == 10
    assert state.api_requests[("token", "200")] == 1


def test_changes_between_refreshes_are_counted_exactly(simulator, inventory):
    refresher = MandantRefresher(mandant_for(simulator), page_limit=100, timeout=30)
    refresher.refresh()
    before = set(refresher.state.snapshot.stations)
    removed = inventory.remove(2)
    added = inventory.add(3)
    rolled = set(inventory.rollout("9.9.9", 4))
    refresher.refresh()
    state = refresher.state
    assert set(state.snapshot.stations) == (before - set(removed)) | set(added)
    assert state.added_total == 3
    assert state.removed_total == 2
    assert state.firmware_changes_total == len(rolled & before)
    assert state.snapshot.by_firmware["9.9.9"] == len(rolled)


def test_one_token_serves_many_refreshes(simulator):
    refresher = MandantRefresher(mandant_for(simulator), page_limit=10, timeout=30)
    for _ in range(4):
        refresher.refresh()
    assert simulator.tokens_issued == 1
    assert refresher.state.api_requests[("token", "200")] == 1


def test_a_revoked_token_is_replaced_on_401(simulator):
    refresher = MandantRefresher(mandant_for(simulator), page_limit=10, timeout=30)
    refresher.refresh()
    simulator.revoke_tokens()
    refresher.refresh()
    assert refresher.state.up
    assert simulator.tokens_issued == 2
    assert refresher.state.api_requests[("charging_stations", "401")] == 1


def test_a_failed_refresh_keeps_the_last_good_snapshot_and_recovers(simulator):
    refresher = MandantRefresher(mandant_for(simulator), page_limit=10, timeout=30)
    refresher.refresh()
    good = refresher.state.snapshot
    simulator.stop()
    refresher.refresh()
    state = refresher.state
    assert not state.up
    assert state.snapshot is good
    assert state.failures["connection"] == 1
    assert "cannot connect" in state.last_error


def test_wrong_secret_is_an_auth_failure_without_the_secret_in_the_message(simulator):
    refresher = MandantRefresher(
        mandant_for(simulator, secret="wrong-secret-123"), page_limit=10, timeout=30
    )
    refresher.refresh()
    state = refresher.state
    assert not state.up and not state.ready
    assert state.failures["auth"] == 1
    assert "invalid_client" in state.last_error
    assert "wrong-secret-123" not in state.last_error


def test_request_counter_counts_per_endpoint_and_code():
    counter = RequestCounter()
    counter("token", "200")
    counter("charging_stations", "200")
    counter("charging_stations", "200")
    assert dict(counter.counts()) == {("token", "200"): 1, ("charging_stations", "200"): 2}


def test_scheduler_refreshes_every_mandant_at_start(simulator):
    refreshers = [
        MandantRefresher(mandant_for(simulator, name="a"), page_limit=10, timeout=30),
        MandantRefresher(mandant_for(simulator, name="b", secret="bad"), page_limit=10, timeout=30),
    ]
    scheduler = start_scheduler(refreshers, interval=3600)
    try:
        wait_until(lambda: refreshers[0].state.ready, what="first refresh of mandant a")
        wait_until(lambda: refreshers[1].state.last_error, what="failed refresh of mandant b")
        assert refreshers[0].state.up
        assert len(refreshers[0].state.snapshot) == 23
        assert not refreshers[1].state.up
        job = scheduler.get_job("refresh-a")
        assert job.max_instances == 1 and job.coalesce
    finally:
        scheduler.shutdown(wait=True)


class ScriptedClient:
    """Stands in for the API client: each read returns the next fleet of the script."""

    def __init__(self, *fleets: list[str]) -> None:
        self.fleets = list(fleets)
        self.reads = 0

    def budget(self) -> None:
        """The real client's budget of created stations; this one counts none."""

    def stations(self, deadline, known=None, budget=None):
        fleet = self.fleets[min(self.reads, len(self.fleets) - 1)]
        self.reads += 1
        return [Station(sid, sid, sid, "1.0", "") for sid in fleet]

    def close(self) -> None:
        """A refresh ends by closing its connections; this client has none."""


def scripted(simulator, *fleets: list[str]) -> tuple[MandantRefresher, ScriptedClient]:
    refresher = MandantRefresher(mandant_for(simulator), page_limit=10, timeout=30)
    client = ScriptedClient(*fleets)
    refresher._connection = (refresher._connection[0], client)
    return refresher, client


def test_an_unchanged_fleet_needs_one_read(simulator):
    refresher, client = scripted(simulator, ["a", "b"])
    refresher.refresh()
    assert client.reads == 2  # the first fleet is confirmed by a second read
    refresher.refresh()
    assert client.reads == 3
    assert refresher.state.up and refresher.state.added_total == 0


def test_a_change_is_published_once_a_second_read_confirms_it(simulator):
    refresher, client = scripted(simulator, ["a", "b"], ["a", "b"], ["a", "c"], ["a", "c"])
    refresher.refresh()
    refresher.refresh()
    assert client.reads == 4
    assert set(refresher.state.snapshot.stations) == {"a", "c"}
    assert (refresher.state.added_total, refresher.state.removed_total) == (1, 1)


def test_a_torn_read_is_never_published(simulator):
    # the third read is torn ("x" never existed); the fourth and fifth agree on the real fleet
    refresher, client = scripted(
        simulator, ["a", "b"], ["a", "b"], ["a", "x"], ["a", "c"], ["a", "c"]
    )
    refresher.refresh()
    refresher.refresh()
    assert client.reads == 5
    assert set(refresher.state.snapshot.stations) == {"a", "c"}
    assert (refresher.state.added_total, refresher.state.removed_total) == (1, 1)


def test_a_fleet_that_changes_on_every_read_is_a_pagination_failure(simulator):
    refresher, _ = scripted(simulator, ["a"], ["a"], ["b"], ["c"], ["d"])
    refresher.refresh()
    refresher.refresh()
    state = refresher.state
    assert not state.up
    assert state.failures["pagination"] == 1
    assert set(state.snapshot.stations) == {"a"}


def test_an_unchanged_fleet_shares_its_station_objects_with_the_published_one(simulator):
    refresher = MandantRefresher(mandant_for(simulator), page_limit=10, timeout=30)
    refresher.refresh()
    first = refresher.state.snapshot
    refresher.refresh()
    second = refresher.state.snapshot
    assert second is not first and second.taken_at >= first.taken_at
    # the very fleet held stays: no second dict of it, and /metrics keeps its rendering
    assert second.stations is first.stations


def test_a_changed_fleet_is_a_new_fleet_that_shares_the_unchanged_stations(simulator, inventory):
    refresher = MandantRefresher(mandant_for(simulator), page_limit=10, timeout=30)
    refresher.refresh()
    first = refresher.state.snapshot
    moved = inventory.rollout("9.9.9", 1)
    refresher.refresh()
    second = refresher.state.snapshot
    assert second.stations is not first.stations
    assert second.stations[moved[0]].firmware_version == "9.9.9"
    assert refresher.state.firmware_changes_total == 1
    unchanged = [sid for sid in first.stations if sid not in moved]
    assert all(second.stations[sid] is first.stations[sid] for sid in unchanged)


def test_a_torn_read_never_reaches_the_change_log(simulator):
    station_changes = StationChanges(max_entries=10)
    refresher = MandantRefresher(
        mandant_for(simulator), page_limit=10, timeout=30, station_changes=station_changes
    )
    fleets = (["a", "b"], ["a", "b"], ["a", "x"], ["a", "c"], ["a", "c"])
    refresher._connection = (refresher._connection[0], ScriptedClient(*fleets))
    refresher.refresh()
    assert station_changes.latest() == []  # the first fleet is the baseline, not a change
    refresher.refresh()
    seen = [(e.mandant, e.change.kind, e.change.station_id) for e in station_changes.latest()]
    name = refresher.mandant.name
    assert seen == [(name, "removed", "b"), (name, "added", "c")]
    assert {e.time for e in station_changes.latest()} == {refresher.state.snapshot.taken_at}


def test_without_the_info_metric_the_fleet_holds_no_serial_numbers(simulator):
    refresher = MandantRefresher(
        mandant_for(simulator), page_limit=10, timeout=30, serial_numbers=False
    )
    refresher.refresh()
    stations = refresher.state.snapshot.stations.values()
    assert len(stations) == 23 and all(s.label and not s.serial_number for s in stations)
    refresher.reconnect(
        refresher.mandant, page_limit=5, concurrency=1, timeout=30, limits=DEFAULT_LIMITS
    )
    refresher.refresh()
    assert not any(s.serial_number for s in refresher.state.snapshot.stations.values())


def test_a_reload_keeps_the_form_of_the_header_found_unless_its_setting_or_api_changes(
    inventory,
):
    with Simulator(inventory, max_page_limit=10, authorization="raw") as sim:
        refresher = MandantRefresher(mandant_for(sim), page_limit=10, timeout=30)
        refresher.refresh()
        assert refresher.state.up
        found = refresher._connection[1].header
        assert found.accepted == "raw"
        before = len(sim.requests)
        refresher.reconnect(
            replace(refresher.mandant, target_firmware=None, firmware_max_versions=7),
            page_limit=10,
            concurrency=1,
            timeout=30,
            limits=DEFAULT_LIMITS,
        )
        assert refresher._connection[1].header is found
        refresher.refresh()
        assert [r.status for r in sim.requests[before:]] == [200, 200, 200, 200]  # no 401
        refresher.reconnect(
            replace(refresher.mandant, authorization="raw"),
            page_limit=10,
            concurrency=1,
            timeout=30,
            limits=DEFAULT_LIMITS,
        )
        header = refresher._connection[1].header
        assert header is not found
        assert (header.setting, header.form, header.accepted) == ("raw", "raw", None)


def test_a_refresh_leaves_no_idle_connection_open(simulator):
    refresher = MandantRefresher(mandant_for(simulator), page_limit=5, timeout=30, concurrency=4)
    _, client = refresher._connection
    pools = client._session.get_adapter(simulator.api_url).poolmanager.pools
    refresher.refresh()
    assert refresher.state.up and len(pools) == 0
    refresher.refresh()  # and the next refresh opens new ones
    assert refresher.state.up and refresher.state.snapshot is not None
    assert len(pools) == 0


def test_a_fleet_beyond_the_firmware_bound_is_folded_logged_once_and_refolded_on_reload(
    caplog: pytest.LogCaptureFixture,
):
    inventory = Inventory(size=40, firmware_mix=spread_mix(30), seed=3)
    with Simulator(inventory, max_page_limit=100) as sim:
        mandant = replace(mandant_for(sim), firmware_max_versions=5)
        published: list[MandantState] = []
        refresher = MandantRefresher(
            mandant,
            page_limit=100,
            timeout=30,
            on_publish=lambda: published.append(refresher.state),
        )
        refresher.refresh()
        refresher.refresh()  # unchanged: the same labels, no second warning
        snapshot = refresher.state.snapshot
        distinct = len(inventory.firmware_counts())
        assert len(snapshot.firmware.counts) == 6 and distinct > 6
        assert snapshot.data_issues["firmware_version_folded"] == 40 - sum(
            sorted(inventory.firmware_counts().values())[-5:]
        )
        assert published[0].snapshot.firmware is published[1].snapshot.firmware
        warnings = [r.getMessage() for r in caplog.records if "--firmware.max-versions" in r.msg]
        assert warnings == [
            f"mandant north: {distinct - 5} of {distinct} firmware versions "
            f'({snapshot.firmware.folded} stations) shown as "(other)" (data issue '
            "firmware_version_folded): --firmware.max-versions=5 keeps the target's and the "
            "most common; raise it if the versions are real"
        ]
        refresher.reconnect(
            replace(mandant, firmware_max_versions=100),
            page_limit=100,
            concurrency=1,
            timeout=30,
            limits=DEFAULT_LIMITS,
        )
        reloaded = refresher.state.snapshot
        assert reloaded.stations is snapshot.stations
        assert dict(reloaded.firmware.counts) == inventory.firmware_counts()
        assert reloaded.data_issues["firmware_version_folded"] == 0


def test_at_most_max_refresh_threads_mandants_refresh_at_once():
    """A hundred mandants whose API hangs hold 32 threads, not a hundred."""
    import threading
    from types import SimpleNamespace

    from exporter.refresh import MAX_REFRESH_THREADS

    release = threading.Event()
    lock = threading.Lock()
    running = {"now": 0, "most": 0, "done": 0}
    refreshing_threads: set[int] = set()

    def hanging_refresh() -> None:
        with lock:
            refreshing_threads.add(threading.get_ident())
            running["now"] += 1
            running["most"] = max(running["most"], running["now"])
        release.wait(30)
        with lock:
            running["now"] -= 1
            running["done"] += 1

    refreshers = [
        SimpleNamespace(refresh=hanging_refresh, mandant=SimpleNamespace(name=f"m{i}"))
        for i in range(100)
    ]
    scheduler = start_scheduler(refreshers, interval=3600)  # type: ignore[arg-type]
    try:
        wait_until(lambda: running["now"] == MAX_REFRESH_THREADS, what="32 hanging refreshes")
        release.set()
        wait_until(lambda: running["done"] == 100, what="every mandant refreshed once")
        assert running["most"] == MAX_REFRESH_THREADS
        # The hundred refreshes ran on the pool's own threads, not one each. (Counting every
        # thread of the process also counted other tests' servers still winding down.)
        assert len(refreshing_threads) == MAX_REFRESH_THREADS
    finally:
        release.set()
        scheduler.shutdown(wait=True)
