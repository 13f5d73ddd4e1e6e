"""The cached rendering behind /metrics: each mandant's info lines rendered once per fleet,
released before they are rendered again, and gzip bodies that are one gzip member."""

from __future__ import annotations

import gzip
import io
import threading
import weakref
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import replace

import pytest
from prometheus_client import CollectorRegistry, Gauge

from exporter import exposition, gzipsegments
from exporter.exposition import Exposition
from exporter.gzipsegments import Segment
from exporter.metrics import FleetCollector
from exporter.model import FirmwareLabels, MandantState, Snapshot, Station
from tests.reference import library_text


def fleet(prefix: str, size: int) -> Snapshot:
    stations = [
        Station(f"{prefix}-{i}", f"Station {i}", f"cp_{prefix}_{i}", "1.0", f"SN{i}")
        for i in range(size)
    ]
    return Snapshot.build(stations, 0.0)


def mandant(name: str, size: int) -> MandantState:
    return MandantState(name=name, snapshot=fleet(name, size), up=True)


def refreshed(state: MandantState) -> MandantState:
    """The state a refresh that found the fleet unchanged publishes: new objects, the same
    ``stations`` mapping."""
    assert state.snapshot is not None
    snapshot = replace(state.snapshot, taken_at=state.snapshot.taken_at + 1)
    return replace(state, snapshot=snapshot, added_total=state.added_total + 1)


class World:
    """The states a refresher would publish, and an Exposition over them with a fixed live
    part (the process metrics would differ between two bodies)."""

    def __init__(self, states: list[MandantState], *, station_info: bool = True) -> None:
        self.states = states
        live = CollectorRegistry()
        Gauge("live_value", "A fixed live metric.", registry=live).set(7)
        collector = FleetCollector(station_info=station_info)
        self.exposition = Exposition(collector, lambda: self.states, live)

    def publish(self, *states: MandantState) -> None:
        self.states = list(states)
        self.exposition.update()

    def body(self, **variant: bool) -> bytes:
        return b"".join(self.exposition.body(**variant))


@pytest.fixture
def renders(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The mandants whose info lines were rendered, in order."""
    calls: list[str] = []
    original = exposition._info_lines

    def counting(name: str, stations: Iterable[Station]) -> Iterator[bytes]:
        calls.append(name)
        return original(name, stations)

    monkeypatch.setattr(exposition, "_info_lines", counting)
    return calls


FIRMWARE_SAMPLE = "beenergised_charging_stations_by_firmware"


def info_line(name: str) -> str:
    """What only the info lines of mandant ``name`` hold."""
    return f'mandant="{name}",serial_number="'


def info_segment(world: World, name: str) -> Segment:
    return world.exposition._info[name].piece.segment()


def test_a_fleet_that_is_the_same_object_is_not_rendered_again(renders):
    world = World([mandant("a", 5), mandant("b", 5)])
    first = world.body()
    assert world.body(gzipped=True)
    segment = info_segment(world, "a")
    assert renders == ["a", "b"]  # compressed when published; plain text is inflated from it
    world.publish(refreshed(world.states[0]), refreshed(world.states[1]))
    second = world.body()
    assert world.body(gzipped=True)
    assert renders == ["a", "b"]
    assert info_segment(world, "a") is segment
    assert second != first  # the small families did follow: the counter went up
    assert b'beenergised_charging_stations_added_total{mandant="a"} 1.0' in second


def test_a_changed_fleet_is_rendered_again_and_the_others_are_kept(renders):
    world = World([mandant("a", 5), mandant("b", 5)])
    world.body()
    kept = info_segment(world, "b")
    del renders[:]
    world.publish(mandant("a", 3), refreshed(world.states[1]))
    assert renders == ["a"]  # compressed at once
    text = world.body().decode()
    assert renders == ["a"]
    assert text.count(info_line("a")) == 3
    assert info_segment(world, "b") is kept


def test_the_old_lines_are_released_before_the_new_ones_are_rendered(renders, monkeypatch):
    world = World([mandant("a", 5), mandant("b", 5)])
    world.body(gzipped=True)
    old = weakref.ref(world.exposition._info["a"].piece)
    alive_while_rendering: list[bool] = []
    counting = exposition._info_lines

    def checking(name: str, stations: Iterable[Station]) -> Iterator[bytes]:
        alive_while_rendering.append(old() is not None)
        return counting(name, stations)

    monkeypatch.setattr(exposition, "_info_lines", checking)
    world.publish(mandant("a", 3), world.states[1])
    world.body()
    assert alive_while_rendering == [False]  # compressed at once; the text is inflated


def test_a_removed_mandant_leaves_the_body_and_the_cache(renders):
    world = World([mandant("a", 5), mandant("b", 5)])
    world.body()
    del renders[:]
    world.publish(world.states[1])
    assert b'mandant="a"' not in world.body()
    assert set(world.exposition._info) == {"b"}
    world.publish(MandantState(name="b"))  # no data (as if it never succeeded)
    assert world.exposition._info == {}
    assert renders == []


def test_the_info_family_is_announced_once_and_also_without_data():
    world = World([mandant("a", 2), mandant("b", 2)])
    text = world.body().decode()
    assert text.count("# TYPE beenergised_charging_station_info gauge") == 1
    assert text.index("# TYPE beenergised_charging_station_info") < text.index(info_line("a"))
    world.publish(MandantState(name="a"))
    assert "# TYPE beenergised_charging_station_info gauge" in world.body().decode()


@pytest.mark.parametrize("openmetrics", [False, True])
def test_mandants_keep_their_order_after_one_is_rendered_again(openmetrics):
    world = World([mandant("c", 3), MandantState(name="b"), mandant("a", 2), mandant("d", 1)])
    world.body(openmetrics=openmetrics)
    world.publish(*world.states[:2], mandant("a", 4), world.states[3])
    expected = library_text(world.states, openmetrics=openmetrics)
    assert world.body(openmetrics=openmetrics).startswith(expected + b"# HELP live_value")


def many_versions(name: str, size: int) -> MandantState:
    """A mandant whose every station has a firmware version of its own."""
    stations = [Station(f"{name}-{i}", f"S {i}", f"cp_{i}", f"9.0.{i}", "") for i in range(size)]
    return MandantState(name=name, snapshot=Snapshot.build(stations, 0.0), up=True)


@pytest.fixture
def firmware_renders(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The mandants whose firmware lines were rendered, in order."""
    calls: list[str] = []
    original = exposition._firmware_lines

    def counting(name: str, labels: FirmwareLabels) -> Iterator[bytes]:
        calls.append(name)
        return original(name, labels)

    monkeypatch.setattr(exposition, "_firmware_lines", counting)
    return calls


def test_firmware_lines_are_rendered_once_per_change_of_their_own_mandant(firmware_renders):
    world = World([many_versions("a", 3000), mandant("b", 5)])
    for variant in ({}, {"openmetrics": True}, {"gzipped": True}):
        assert world.body(**variant)
    assert firmware_renders == ["a", "b"]  # compressed when published, inflated for text
    world.publish(refreshed(world.states[0]), mandant("b", 4))
    for variant in ({"gzipped": True}, {"openmetrics": True, "gzipped": True}, {}):
        assert world.body(**variant)
    body = world.body(openmetrics=True).decode()
    assert firmware_renders[2:] == ["b"]  # b's refresh costs a nothing
    firmware = [line for line in body.splitlines() if line.startswith(FIRMWARE_SAMPLE)]
    assert len(firmware) == 102  # a: 100 versions and (other); b: one version
    assert f'{FIRMWARE_SAMPLE}{{firmware_version="(other)",mandant="a"}} 2900.0' in firmware


@pytest.mark.parametrize("openmetrics", [False, True])
def test_folded_firmware_is_rendered_as_the_client_library_renders_it(openmetrics):
    world = World([many_versions("a", 250), MandantState(name="b"), mandant("c", 3)])
    world.body(openmetrics=openmetrics)
    expected = library_text(world.states, openmetrics=openmetrics)
    plain = world.body(openmetrics=openmetrics)
    assert plain.startswith(expected + b"# HELP live_value")
    assert one_member(world.body(openmetrics=openmetrics, gzipped=True)) == plain


def one_member(body: bytes) -> bytes:
    """The plain bytes of ``body``, which must be exactly one gzip member."""
    decompressor = zlib.decompressobj(31)
    plain = decompressor.decompress(body)
    assert decompressor.eof and decompressor.unused_data == b""
    assert gzip.decompress(body) == plain == zlib.decompress(body, 31)
    with gzip.GzipFile(fileobj=io.BytesIO(body)) as file:
        assert file.read() == plain
    return plain


@pytest.mark.parametrize("openmetrics", [False, True])
def test_gzip_is_one_member_with_exactly_the_plain_body(openmetrics):
    world = World([mandant("a", 2500), MandantState(name="b"), mandant("c", 3)])
    assert one_member(world.body(openmetrics=openmetrics, gzipped=True)) == world.body(
        openmetrics=openmetrics
    )
    world.publish(world.states[0], world.states[1], mandant("c", 4))
    assert one_member(world.body(openmetrics=openmetrics, gzipped=True)) == world.body(
        openmetrics=openmetrics
    )


@pytest.mark.parametrize(
    "states",
    [[], [MandantState(name="a")], [mandant("a", 0), mandant("b", 0)]],
    ids=["no mandants", "no data yet", "empty fleets"],
)
@pytest.mark.parametrize("station_info", [True, False])
def test_gzip_without_stations(states, station_info):
    world = World(states, station_info=station_info)
    for openmetrics in (False, True):
        plain = world.body(openmetrics=openmetrics)
        assert one_member(world.body(openmetrics=openmetrics, gzipped=True)) == plain


def test_gzip_with_an_empty_live_part():
    states = [mandant("a", 3)]
    cache = Exposition(FleetCollector(), lambda: states, CollectorRegistry())
    plain = b"".join(cache.body())
    assert one_member(b"".join(cache.body(gzipped=True))) == plain


def test_an_unchanged_mandant_keeps_its_compressed_segment():
    world = World([mandant("a", 2000), mandant("b", 2000)])
    before = set(map(id, world.exposition.body(gzipped=True)))
    segment = world.exposition._info["b"].piece.segment()
    assert segment.chunks and {id(chunk) for chunk in segment.chunks} <= before
    world.publish(mandant("a", 1999), world.states[1])
    after = world.exposition.body(gzipped=True)
    assert world.exposition._info["b"].piece.segment() is segment
    assert {id(chunk) for chunk in segment.chunks} <= set(map(id, after))


def test_a_scrape_sees_one_set_of_states_while_refreshes_publish():
    small, large = mandant("a", 3), mandant("a", 1500)
    world = World([small])
    bodies: list[bytes] = []

    def scrape() -> None:
        for i in range(30):
            bodies.append(one_member(world.body(gzipped=True)) if i % 2 else world.body())

    scrapers = [threading.Thread(target=scrape) for _ in range(3)]
    for thread in scrapers:
        thread.start()
    for i in range(60):
        world.publish(large if i % 2 else small)
    for thread in scrapers:
        thread.join()
    assert len(bodies) == 90
    for body in bodies:
        count = body.count(b'beenergised_charging_station_info{charge_box_identity="')
        assert f'beenergised_charging_stations{{mandant="a"}} {count}.0\n'.encode() in body


def test_a_fleet_is_rendered_once_and_its_text_is_inflated_for_each_plain_scrape(renders):
    world = World([mandant("a", 3000)])
    body = world.body(gzipped=True)
    assert one_member(body) == world.body() == world.body()
    assert renders == ["a"]  # rendered, compressed and dropped a chunk at a time


def test_a_plain_scrape_holds_one_step_of_inflated_text_at_a_time(monkeypatch):
    world = World([mandant("a", 3000), mandant("b", 2)])
    plain = world.body()
    monkeypatch.setattr(gzipsegments, "INFLATED", 100)
    chunks = list(world.exposition.body())
    assert b"".join(chunks) == plain
    assert max(len(chunk) for chunk in chunks[:-1]) == 100  # the last is the live part
