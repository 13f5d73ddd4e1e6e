"""The exposition cache: the one renderer of the fleet's metric families, rendered once per change.

``/metrics`` serves what :class:`Exposition` holds. Rendering a large fleet costs real CPU and
memory, so it renders each mandant's per-station info lines once per fleet it publishes, its
firmware lines once per change of its firmware labels, the families of a few series per mandant
once per published refresh, and keeps them compressed only (see :mod:`exporter.gzipsegments`).
A gzip scrape writes the cached bytes, a plain scrape inflates them as it writes them, and
both add the live metrics (such as the process metrics, which change). Families other than the
info lines go through the client library's text formats; the info lines are written here, byte
for byte as it would.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import partial
from itertools import chain
from typing import TypeVar

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from exporter.gzipsegments import GzipStart, Piece
from exporter.metrics import INFO_HELP, INFO_NAME, FleetCollector, firmware_family
from exporter.model import FirmwareLabels, MandantState, Station

LOG = logging.getLogger(__name__)
_T = TypeVar("_T")
_EOF = b"# EOF\n"


def _escape(value: str) -> str:
    """A label value as both text formats escape it."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


_INFO_HEADER = f"# HELP {INFO_NAME} {INFO_HELP}\n# TYPE {INFO_NAME} gauge\n".encode()


def _info_lines(mandant: str, stations: Iterable[Station]) -> Iterator[bytes]:
    """One mandant's samples of the per-station info family, a chunk at a time; the same bytes
    in both text formats, and without the family's HELP and TYPE (``_INFO_HEADER``).

    Written here rather than through a metric family: 100,000 samples with label dictionaries
    and one joined string of the whole family would cost several times the final bytes.
    Parsing repairs text that UTF-8 cannot encode; should any get past it, it becomes '?'
    rather than an error for every mandant (the error handler costs nothing until needed).
    """
    mandant = _escape(mandant)
    chunk: list[str] = []
    for station in stations:
        # labels sorted by name, as the client library prints them
        chunk.append(
            f'{INFO_NAME}{{charge_box_identity="{_escape(station.charge_box_identity)}",'
            f'firmware_version="{_escape(station.firmware_label)}",'
            f'label="{_escape(station.label)}",mandant="{mandant}",'
            f'serial_number="{_escape(station.serial_number)}",'
            f'station_id="{_escape(station.id)}"}} 1.0\n'
        )
        if len(chunk) == 1000:
            yield "".join(chunk).encode(errors="replace")
            chunk = []
    if chunk:
        yield "".join(chunk).encode(errors="replace")


def _firmware_lines(mandant: str, labels: FirmwareLabels) -> Iterator[bytes]:
    """One mandant's samples of the firmware family, the same bytes in both text formats,
    without the family's HELP and TYPE (rendered with the station counts)."""
    header = _generate(generate_latest, [firmware_family()])
    yield _generate(generate_latest, [firmware_family([(mandant, labels)])]).removeprefix(header)


class _Families:
    """A fixed set of metric families, in the shape the exposition functions take."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


class Body:
    """Chunks of bytes to send one after the other, and their length in all: the chunks of a
    plain body are inflated as they are sent."""

    def __init__(self, chunks: Iterable[bytes], length: int) -> None:
        self._chunks = chunks
        self.length = length

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._chunks)


class _Rendering:
    """The fleet metrics of one set of states as pieces: the station counts and the HELP and
    TYPE of the firmware family, each mandant's cached firmware lines, the target and data
    issue families (and the HELP and TYPE of the info family), each mandant's cached info
    lines, the other families. Each variant (OpenMetrics, the gzip start) is made when first
    asked for, then kept."""

    def __init__(
        self,
        collector: FleetCollector,
        states: tuple[MandantState, ...],
        firmware: tuple[Piece, ...],
        info: tuple[Piece, ...],
    ) -> None:
        self.states = states
        self._collector = collector
        self.firmware = firmware  # each mandant's firmware lines
        self.info = info  # each mandant's info lines
        self._pieces = {False: self._render(openmetrics=False)}
        self._gzip: dict[bool, GzipStart] = {}
        self._lock = threading.Lock()

    def text(self, openmetrics: bool, live: bytes) -> Body:
        """The plain body: each piece inflated in turn, then ``live``."""
        pieces = self._variant(openmetrics)
        length = sum(piece.segment().length for piece in pieces) + len(live)
        return Body(chain(chain.from_iterable(piece.text() for piece in pieces), (live,)), length)

    def gzipped(self, openmetrics: bool) -> GzipStart:
        variant = self._gzip.get(openmetrics)
        if variant is None:
            pieces = self._variant(openmetrics)
            with self._lock:
                variant = self._gzip.get(openmetrics)
                if variant is None:
                    variant = self._gzip[openmetrics] = GzipStart(pieces)
        return variant

    def _variant(self, openmetrics: bool) -> tuple[Piece, ...]:
        variant = self._pieces.get(openmetrics)
        if variant is None:
            with self._lock:
                variant = self._pieces.get(openmetrics)
                if variant is None:
                    variant = self._pieces[openmetrics] = self._render(openmetrics=True)
        return variant

    def _render(self, *, openmetrics: bool) -> tuple[Piece, ...]:
        """The pieces of every publish: these families are a few series per mandant."""
        states, collector = list(self.states), self._collector
        generate = generate_openmetrics if openmetrics else generate_latest
        counts = (_generate(generate, [collector.stations_family(states), firmware_family()]),)
        header = _INFO_HEADER if collector.station_info else b""
        issues = (_generate(generate, list(collector.target_and_issue_families(states))), header)
        other = (_generate(generate, list(collector.other_families(states))),)
        return (
            Piece(lambda: counts),
            *self.firmware,
            Piece(lambda: issues),
            *self.info,
            Piece(lambda: other),
        )


def _generate(generate: Callable[[_Families], bytes], families: list[Metric]) -> bytes:
    """``families`` in a text format, without its EOF line. Label text that UTF-8 cannot
    encode (parsing repairs what the API sends, so it would be a bug) becomes '?' and is
    logged, rather than failing /metrics for every mandant."""
    try:
        return generate(_Families(families)).removesuffix(_EOF)
    except UnicodeEncodeError as e:
        LOG.error("metric label text that UTF-8 cannot encode, shown as '?': %s", e)
    for family in families:
        family.samples = [
            sample._replace(labels={k: _encodable(v) for k, v in sample.labels.items()})
            for sample in family.samples
        ]
    return generate(_Families(families)).removesuffix(_EOF)


def _encodable(text: str) -> str:
    return text.encode(errors="replace").decode()


class _Lines:
    """One mandant's cached lines of a family, and the object they were rendered from."""

    def __init__(self, source: object, render: Callable[[], Iterable[bytes]]) -> None:
        self.source = source
        self.piece = Piece(render)


def _reuse(
    cache: dict[str, _Lines], sources: Mapping[str, _T], lines: Callable[[str, _T], Iterable[bytes]]
) -> tuple[Piece, ...]:
    """Each mandant's piece: from ``cache`` where its source is the same object, else the
    ``lines`` of the mandant and its source, made when first asked for. Entries of another
    source leave the cache first, so that at most one mandant's lines are held twice while
    they are rendered again."""
    for name in [name for name, entry in cache.items() if sources.get(name) is not entry.source]:
        del cache[name]
    for name, source in sources.items():
        if name not in cache:
            cache[name] = _Lines(source, partial(lines, name, source))
    return tuple(cache[name].piece for name in sources)


class Exposition:
    """What ``/metrics`` serves: the cached fleet rendering followed by the live metrics.

    A mandant's info lines are rendered again only when its refresh published another fleet
    (a refresh that found it unchanged publishes the same ``stations`` mapping), its firmware
    lines only when it published other firmware labels; so one mandant's refresh costs the
    others nothing. Gzip bodies are one gzip member (see :class:`GzipStart`).
    """

    def __init__(
        self,
        collector: FleetCollector,
        states: Callable[[], Sequence[MandantState]],
        live: CollectorRegistry,
    ) -> None:
        self._collector = collector
        self._states = states
        self._live = live
        self._rendering: _Rendering | None = None
        self._info: dict[str, _Lines] = {}
        self._firmware: dict[str, _Lines] = {}
        self._lock = threading.Lock()

    def update(self) -> _Rendering:
        """Render the fleet metrics if the states changed since the last rendering, and
        compress the firmware and info lines of changed fleets (the only form kept)."""
        states = tuple(self._states())
        rendering = self._rendering
        if rendering is not None and _same(rendering.states, states):
            return rendering
        with self._lock:
            if self._rendering is None or not _same(self._rendering.states, states):
                # Drop the old rendering and changed fleets first, so that at most one
                # mandant's lines are held twice while they are rendered again (a scrape in
                # flight keeps the chunks it has).
                self._rendering = rendering = None
                self._rendering = _Rendering(
                    self._collector,
                    states,
                    self._firmware_pieces(states),
                    self._info_pieces(states),
                )
            rendering = self._rendering
        for piece in (*rendering.firmware, *rendering.info):  # outside the lock: a scrape goes on
            piece.segment()
        return rendering

    def body(self, *, openmetrics: bool = False, gzipped: bool = False) -> Body:
        """The whole exposition in the asked-for format."""
        rendering = self.update()
        live = generate_openmetrics(self._live) if openmetrics else generate_latest(self._live)
        if not gzipped:
            return rendering.text(openmetrics, live)
        fleet = rendering.gzipped(openmetrics)
        chunks = (*fleet.chunks, fleet.finish(live))
        return Body(chunks, sum(map(len, chunks)))

    def _firmware_pieces(self, states: tuple[MandantState, ...]) -> tuple[Piece, ...]:
        """Each mandant's firmware lines, from the cache where its labels are the same object."""
        labels = {s.name: s.snapshot.firmware for s in states if s.snapshot is not None}
        return _reuse(self._firmware, labels, _firmware_lines)

    def _info_pieces(self, states: tuple[MandantState, ...]) -> tuple[Piece, ...]:
        """Each mandant's info lines, from the cache where its fleet is the same object."""
        if not self._collector.station_info:
            return ()
        fleets = {s.name: s.snapshot.stations for s in states if s.snapshot is not None}
        return _reuse(self._info, fleets, lambda name, fleet: _info_lines(name, fleet.values()))


def _same(old: tuple[MandantState, ...], new: tuple[MandantState, ...]) -> bool:
    return len(old) == len(new) and all(a is b for a, b in zip(old, new, strict=True))
