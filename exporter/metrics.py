"""Mandant states -> Prometheus metric families -> exposition bytes, rendered once per change.

Metrics are built fresh from the latest immutable states (the client library's custom
collector pattern), so a station that left the fleet leaves ``/metrics`` too. The fleet
metrics show the last successful background refresh, not a live API call (see the HELP
texts). Rendering a large fleet costs real CPU and memory, so ``Exposition`` renders each
mandant's per-station info lines once per fleet it publishes, its firmware lines once per
change of its firmware labels, the families of a few series per mandant once per published
refresh, and a scrape only writes cached bytes (plus the few process metrics, which change).
"""

from __future__ import annotations

import logging
import platform
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import partial
from typing import NamedTuple, TypeVar

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.errors import FAILURE_REASONS
from exporter.model import (
    DATA_ISSUES,
    FOLDED_FIRMWARE,
    MAX_TEXT_LENGTH,
    FirmwareLabels,
    MandantState,
    Station,
)

LOG = logging.getLogger(__name__)
_T = TypeVar("_T")
CACHED = " (from the last successful refresh of the API)"
INFO_NAME = "beenergised_charging_station_info"
INFO_HELP = "One series per charging station with its identifying labels; value 1" + CACHED + "."
INFO_LABELS = (
    "mandant",
    "station_id",
    "label",
    "charge_box_identity",
    "firmware_version",
    "serial_number",
)


def _stations(states: list[MandantState]) -> Iterator[tuple[MandantState, Station]]:
    for state in states:
        if state.snapshot is not None:
            for station in state.snapshot.stations.values():
                yield state, station


def _info_values(station: Station) -> tuple[str, ...]:
    """The info labels after ``mandant``, in the order of INFO_LABELS."""
    return (
        station.id,
        station.label,
        station.charge_box_identity,
        station.firmware_label,
        station.serial_number,
    )


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


def _firmware_family(fleets: Iterable[tuple[str, FirmwareLabels]] = ()) -> Metric:
    """Stations per firmware label of each (mandant, labels); without any, the family's HELP
    and TYPE."""
    family = GaugeMetricFamily(
        "beenergised_charging_stations_by_firmware",
        "Charging stations per firmware version; 'unknown' when the API gives none, "
        f"'{FOLDED_FIRMWARE}' for the versions beyond --firmware.max-versions" + CACHED + ".",
        labels=["mandant", "firmware_version"],
    )
    for mandant, labels in fleets:
        for firmware, count in sorted(labels.counts.items()):
            family.add_metric([mandant, firmware], count)
    return family


def _firmware_lines(mandant: str, labels: FirmwareLabels) -> Iterator[bytes]:
    """One mandant's samples of the firmware family, the same bytes in both text formats,
    without the family's HELP and TYPE (rendered with the station counts)."""
    header = _generate(generate_latest, [_firmware_family()])
    yield _generate(generate_latest, [_firmware_family([(mandant, labels)])]).removeprefix(header)


class FleetCollector(Collector):
    """Yields every ``beenergised_*`` metric from the states handed over by ``states()``."""

    def __init__(
        self,
        states: Callable[[], Sequence[MandantState]],
        *,
        station_info: bool = True,
        refresh_interval: float = 300.0,
    ) -> None:
        self._states = states
        self._station_info = station_info
        self._refresh_interval = refresh_interval

    def describe(self) -> list[Metric]:
        # An empty description keeps registration from running collect() at start-up.
        return []

    def collect(self) -> Iterator[Metric]:
        return self.families(list(self._states()))

    def families(self, states: list[MandantState]) -> Iterator[Metric]:
        """Every metric family for exactly these states."""
        yield from self.fleet_families(states)
        if self._station_info:
            yield self._info_family(states)
        yield from self.other_families(states)

    def fleet_families(self, states: list[MandantState]) -> Iterator[Metric]:
        """The station counts, which come before the per-station info family."""
        yield self.stations_family(states)
        yield _firmware_family(
            (s.name, s.snapshot.firmware) for s in states if s.snapshot is not None
        )
        yield from self.target_and_issue_families(states)

    def stations_family(self, states: list[MandantState]) -> Metric:
        stations = GaugeMetricFamily(
            "beenergised_charging_stations",
            "Charging stations of the mandant" + CACHED + ".",
            labels=["mandant"],
        )
        for state in states:
            if state.snapshot is not None:  # no successful refresh yet: no data, not a false 0
                stations.add_metric([state.name], len(state.snapshot))
        return stations

    def target_and_issue_families(self, states: list[MandantState]) -> Iterator[Metric]:
        on_target = GaugeMetricFamily(
            "beenergised_charging_stations_firmware_target",
            "Charging stations on the mandant's target firmware (exact version or /regex/, as "
            "the target label shows); only for mandants with a target" + CACHED + ".",
            labels=["mandant", "target"],
        )
        issues = GaugeMetricFamily(
            "beenergised_charging_stations_data_issues",
            "Charging stations with a data issue: no_firmware_version, no_sim_data (iccid or "
            "imsi empty), duplicate_charge_box_identity (every station sharing one), "
            "invalid_text (control characters or text not in UTF-8, shown as U+FFFD), "
            f"text_too_long (cut to {MAX_TEXT_LENGTH} characters), duplicate_station_id (listed "
            "more than once, shown once), firmware_version_folded (firmware shown as "
            f"'{FOLDED_FIRMWARE}')" + CACHED + ".",
            labels=["mandant", "issue"],
        )
        for state in states:
            snapshot = state.snapshot
            if snapshot is None:
                continue
            target = state.firmware_target
            if target is not None:
                on_target.add_metric([state.name, target.text], target.stations_on_target(snapshot))
            for issue in DATA_ISSUES:
                issues.add_metric([state.name, issue], snapshot.data_issues[issue])
        yield from (on_target, issues)

    def other_families(self, states: list[MandantState]) -> Iterator[Metric]:
        """The change counters, the exporter's health and its build info."""
        yield from self._changes(states)
        yield from self._health(states)
        build = GaugeMetricFamily(
            "beenergised_exporter_build_info",
            "Version of the exporter and of Python it runs on; value 1.",
            labels=["version", "python_version"],
        )
        build.add_metric([__version__, platform.python_version()], 1)
        yield build
        yield GaugeMetricFamily(
            "beenergised_refresh_interval_seconds",
            "Configured time between two refreshes of a mandant (alerts scale staleness by it).",
            value=self._refresh_interval,
        )

    @property
    def station_info(self) -> bool:
        return self._station_info

    def _info_family(self, states: list[MandantState]) -> Metric:
        info = GaugeMetricFamily(INFO_NAME, INFO_HELP, labels=list(INFO_LABELS))
        for state, station in _stations(states):
            info.add_metric([state.name, *_info_values(station)], 1)
        return info

    def _changes(self, states: list[MandantState]) -> Iterator[Metric]:
        families = [
            (
                "beenergised_charging_stations_added",
                "Stations that appeared between two successful refreshes; the first is the "
                "baseline.",
                "added_total",
            ),
            (
                "beenergised_charging_stations_removed",
                "Stations that disappeared between two successful refreshes.",
                "removed_total",
            ),
            (
                "beenergised_firmware_changes",
                "Stations whose firmware version changed between two successful refreshes.",
                "firmware_changes_total",
            ),
        ]
        for name, documentation, attribute in families:
            family = CounterMetricFamily(name, documentation, labels=["mandant"])
            for state in states:
                family.add_metric([state.name], getattr(state, attribute))
            yield family

    def _health(self, states: list[MandantState]) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "beenergised_up",
            "1 if the last refresh of the mandant succeeded, else 0.",
            labels=["mandant"],
        )
        last_success = GaugeMetricFamily(
            "beenergised_last_refresh_success_timestamp_seconds",
            "Unix time of the last successful refresh of the mandant.",
            labels=["mandant"],
        )
        duration = GaugeMetricFamily(
            "beenergised_last_refresh_duration_seconds",
            "Wall time of the last refresh of the mandant, successful or not.",
            labels=["mandant"],
        )
        failures = CounterMetricFamily(
            "beenergised_refresh_failures",
            "Failed refreshes by reason (auth, http, timeout, connection, parse, pagination, "
            "tls, too_large).",
            labels=["mandant", "reason"],
        )
        requests = CounterMetricFamily(
            "beenergised_api_requests",
            "HTTP requests to the API by endpoint and status code ('error': no answer).",
            labels=["mandant", "endpoint", "code"],
        )
        overruns = CounterMetricFamily(
            "beenergised_refresh_overruns",
            "Refreshes that took longer than the refresh interval, so that the next one started "
            "late.",
            labels=["mandant"],
        )
        token_expiry = GaugeMetricFamily(
            "beenergised_token_expiry_timestamp_seconds",
            "Unix time at which the cached access token of the mandant expires.",
            labels=["mandant"],
        )
        for state in states:
            up.add_metric([state.name], 1 if state.up else 0)
            if state.last_success is not None:
                last_success.add_metric([state.name], state.last_success)
            if state.last_duration is not None:
                duration.add_metric([state.name], state.last_duration)
            for reason in FAILURE_REASONS:
                failures.add_metric([state.name, reason], state.failures.get(reason, 0))
            overruns.add_metric([state.name], state.overruns)
            for (endpoint, code), count in sorted(state.api_requests.items()):
                requests.add_metric([state.name, endpoint, code], count)
            if state.token_expiry is not None:
                token_expiry.add_metric([state.name], state.token_expiry)
        yield from (up, last_success, duration, failures, overruns, requests, token_expiry)


class ReloadStatus(Collector):
    """Whether the last reload of the configuration (SIGHUP or POST /-/reload) worked, as
    Prometheus reports its own; the start counts as a successful load."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._successful = True
        self._success_time = clock()

    def record(self, successful: bool) -> None:
        self._successful = successful
        if successful:
            self._success_time = self._clock()

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "beenergised_config_last_reload_successful",
            "1 if the last reload of the configuration (SIGHUP or /-/reload) succeeded, else 0.",
            value=1 if self._successful else 0,
        )
        yield GaugeMetricFamily(
            "beenergised_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful load of the configuration (start or reload).",
            value=self._success_time,
        )


class RefreshAge(Collector):
    """Seconds since each mandant's last successful refresh, on the monotonic clock, at the
    moment of the scrape: a step of the exporter's wall clock does not move it. The fleet
    alerts subtract it from the scrape's time to tell which replica holds the newest data
    (docs/runbooks.md, "How the fleet alerts work")."""

    def __init__(
        self,
        states: Callable[[], Sequence[MandantState]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._states = states
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        now = self._clock()
        family = GaugeMetricFamily(
            "beenergised_last_refresh_success_age_seconds",
            "Seconds since the last successful refresh of the mandant, on the exporter's "
            "monotonic clock (a step of the wall clock does not move it).",
            labels=["mandant"],
        )
        for state in self._states():
            if state.last_success_monotonic is not None:
                family.add_metric([state.name], max(0.0, now - state.last_success_monotonic))
        yield family


class RefusedRequests(Collector):
    """Requests and connections the web server refused, by reason. A rising count is a scraper
    with a stale password, someone guessing, or more (or slower) clients than the limits let
    in; README.md's metrics table says what each reason means."""

    REASONS = (
        "unauthorized",  # 401: no, unknown or wrong credentials
        "too_many_logins",  # 429: its own check running or waiting, too many waiting, too long
        "recent_wrong_password",  # 429: the client sent a wrong password lately; others first
        "too_many_requests",  # 503: --web.max-requests answered, as many waiting, or too long
        "too_many_connections",  # closed while sending its head, to make room for a new one
        "header_timeout",  # TLS handshake and head not done within --web.read-header-timeout
        "header_too_large",  # 431: a request head over 32 KiB
        "bad_request",  # an answer of the HTTP parser: 400, 414, 431 (over 100 fields), 505
        "out_of_file_descriptors",  # 503 through the reserve descriptor: the open-file limit
    )

    def __init__(self) -> None:
        self._counts = dict.fromkeys(self.REASONS, 0)
        self._lock = threading.Lock()

    def record(self, reason: str) -> None:
        with self._lock:
            self._counts[reason] += 1

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "beenergised_web_requests_refused",
            "Requests refused by basic auth or the web server's limits, by reason: "
            + ", ".join(self.REASONS)
            + ".",
            labels=["reason"],
        )
        for reason in self.REASONS:
            family.add_metric([reason], self._counts[reason])
        yield family


class _Families:
    """A fixed set of metric families, in the shape the exposition functions take."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


_EOF = b"# EOF\n"
_LEVEL = 6  # gzip compression level
_GZIP_HEADER = bytes((0x1F, 0x8B, 8, 0, 0, 0, 0, 0, 0, 255))
"""Magic, deflate, no flags, no modification time, no extra flags, unknown operating system."""


class _Segment(NamedTuple):
    """A piece compressed: raw deflate data, and the CRC-32 and length of its plain bytes."""

    chunks: tuple[bytes, ...]
    crc: int
    length: int


class _Piece:
    """A part of the body, made by ``render`` when first asked for: as text chunks, as a gzip
    segment (see :class:`_GzipStart`), or both; each form is kept once made.

    A piece only ever asked for in gzip, as Prometheus scrapes, never keeps its text: it is
    rendered, compressed and dropped a chunk at a time. At 1,000,000 stations that is 211 MB
    of text not held beside the 37 MB of gzip, until someone asks for uncompressed text.
    """

    def __init__(self, render: Callable[[], Iterable[bytes]]) -> None:
        self._render = render
        self._chunks: tuple[bytes, ...] | None = None
        self._segment: _Segment | None = None
        self._lock = threading.Lock()

    def chunks(self) -> tuple[bytes, ...]:
        chunks = self._chunks
        if chunks is None:
            with self._lock:
                chunks = self._chunks
                if chunks is None:
                    chunks = self._chunks = tuple(chunk for chunk in self._render() if chunk)
        return chunks

    def segment(self) -> _Segment:
        """The piece as raw deflate data that ends on a byte boundary without a final block
        (a sync flush), so that segments concatenate into one deflate stream."""
        segment = self._segment
        if segment is None:
            with self._lock:
                segment = self._segment
                if segment is None:
                    segment = self._segment = _compress(self._chunks or self._render())
        return segment


def _compress(chunks: Iterable[bytes]) -> _Segment:
    compressor = zlib.compressobj(_LEVEL, zlib.DEFLATED, -15)  # -15: raw deflate
    out, crc, length = [], 0, 0
    for chunk in chunks:
        out.append(compressor.compress(chunk))
        crc = zlib.crc32(chunk, crc)
        length += len(chunk)
    out.append(compressor.flush(zlib.Z_SYNC_FLUSH))
    return _Segment(tuple(piece for piece in out if piece), crc, length)


_POLYNOMIAL = 0xEDB88320
"""The CRC-32 polynomial in the CRC's bit-reversed order: bit 31 is x^0, bit 0 is x^31."""


def _multiply(a: int, b: int) -> int:
    """``a * b`` modulo the CRC-32 polynomial, both in the CRC's bit order."""
    product = 0
    for bit in range(31, -1, -1):  # a's terms from x^0 up
        if a >> bit & 1:
            product ^= b
        b = (b >> 1) ^ _POLYNOMIAL if b & 1 else b >> 1  # b times x
    return product


_X_SQUARINGS = [1 << 30]  # x^(2^k) for k = 0, 1, ...: x^1, x^2, x^4, ...
for _ in range(63):
    _X_SQUARINGS.append(_multiply(_X_SQUARINGS[-1], _X_SQUARINGS[-1]))


def _x_power(n: int) -> int:
    """x^n modulo the CRC-32 polynomial, by its binary digits: at most 64 multiplications."""
    power = 1 << 31  # x^0
    for square in _X_SQUARINGS:
        if not n:
            break
        if n & 1:
            power = _multiply(square, power)
        n >>= 1
    return power


def crc32_combine(crc_a: int, crc_b: int, length_b: int) -> int:
    """The CRC-32 of A followed by B, from the CRC-32 of each and the length of B (zlib has
    this, Python's zlib module does not); well under a millisecond whatever the length.

    CRC-32 is affine: for messages of one length, crc(X ^ Y) = crc(X) ^ crc(Y) ^ crc(zeros).
    A+B is (A+zeros) ^ (zeros+B), and crc(zeros+B) ^ crc(zeros+zeros) = crc(B) ^ crc(zeros)
    (the leading zeros only move the register's start, the same for both). So
    crc(A+B) = crc(A+zeros) ^ crc(zeros) ^ crc(B), and the first two together are crc(A)
    carried through 8 * len(B) shifts of the register: crc(A) times x^(8 * len(B)) modulo
    the polynomial.
    """
    return _multiply(_x_power(8 * length_b), crc_a) ^ crc_b


class _GzipStart:
    """The cached start of one gzip member, which each scrape finishes with its live part.

    The member is the 10-byte header, then each piece's deflate segment in order (sync-flushed,
    not final, so they concatenate), then per scrape the live part compressed by a fresh
    compressor with the final block, then the trailer: the CRC-32 of all the plain bytes and
    their length modulo 2**32, little-endian. So a changed mandant costs compressing its own
    lines only. One member, because clients such as ``curl --compressed`` stop after the first
    and silently drop the rest.
    """

    def __init__(self, pieces: Sequence[_Piece]) -> None:
        segments = [piece.segment() for piece in pieces]
        self.chunks = (_GZIP_HEADER, *(chunk for segment in segments for chunk in segment.chunks))
        crc, length = 0, 0
        for segment in segments:
            crc = crc32_combine(crc, segment.crc, segment.length)
            length += segment.length
        self._crc, self._length = crc, length

    def finish(self, tail: bytes) -> bytes:
        """The rest of the member: ``tail`` compressed into the final block, then the trailer."""
        compressor = zlib.compressobj(_LEVEL, zlib.DEFLATED, -15)
        trailer = struct.pack(
            "<II", zlib.crc32(tail, self._crc), (self._length + len(tail)) % 2**32
        )
        return compressor.compress(tail) + compressor.flush() + trailer


class _Rendering:
    """The fleet metrics of one set of states as pieces: the station counts and the HELP and
    TYPE of the firmware family, each mandant's cached firmware lines, the target and data
    issue families (and the HELP and TYPE of the info family), each mandant's cached info
    lines, the other families. Each variant (OpenMetrics, gzip) is made when first asked for,
    then kept."""

    def __init__(
        self,
        collector: FleetCollector,
        states: tuple[MandantState, ...],
        firmware: tuple[_Piece, ...],
        info: tuple[_Piece, ...],
    ) -> None:
        self.states = states
        self._collector = collector
        self.firmware = firmware  # each mandant's firmware lines
        self.info = info  # each mandant's info lines
        self._pieces = {False: self._render(openmetrics=False)}
        self._gzip: dict[bool, _GzipStart] = {}
        self._lock = threading.Lock()

    def text(self, openmetrics: bool) -> tuple[bytes, ...]:
        return tuple(chunk for piece in self._variant(openmetrics) for chunk in piece.chunks())

    def gzipped(self, openmetrics: bool) -> _GzipStart:
        variant = self._gzip.get(openmetrics)
        if variant is None:
            pieces = self._variant(openmetrics)
            with self._lock:
                variant = self._gzip.get(openmetrics)
                if variant is None:
                    variant = self._gzip[openmetrics] = _GzipStart(pieces)
        return variant

    def _variant(self, openmetrics: bool) -> tuple[_Piece, ...]:
        variant = self._pieces.get(openmetrics)
        if variant is None:
            with self._lock:
                variant = self._pieces.get(openmetrics)
                if variant is None:
                    variant = self._pieces[openmetrics] = self._render(openmetrics=True)
        return variant

    def _render(self, *, openmetrics: bool) -> tuple[_Piece, ...]:
        """The pieces of every publish: these families are a few series per mandant."""
        states, collector = list(self.states), self._collector
        generate = generate_openmetrics if openmetrics else generate_latest
        counts = (_generate(generate, [collector.stations_family(states), _firmware_family()]),)
        header = _INFO_HEADER if collector.station_info else b""
        issues = (_generate(generate, list(collector.target_and_issue_families(states))), header)
        other = (_generate(generate, list(collector.other_families(states))),)
        return (
            _Piece(lambda: counts),
            *self.firmware,
            _Piece(lambda: issues),
            *self.info,
            _Piece(lambda: other),
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
        self.piece = _Piece(render)


def _reuse(
    cache: dict[str, _Lines], sources: Mapping[str, _T], lines: Callable[[str, _T], Iterable[bytes]]
) -> tuple[_Piece, ...]:
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
    others nothing. Gzip bodies are one gzip member (see :class:`_GzipStart`).
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
        compress the firmware and info lines of changed fleets, as Prometheus will ask for them
        (gzip)."""
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

    def body(self, *, openmetrics: bool = False, gzipped: bool = False) -> tuple[bytes, ...]:
        """The whole exposition in the asked-for format, as chunks to write one after another."""
        rendering = self.update()
        live = generate_openmetrics(self._live) if openmetrics else generate_latest(self._live)
        if not gzipped:
            return (*rendering.text(openmetrics), live)
        fleet = rendering.gzipped(openmetrics)
        return (*fleet.chunks, fleet.finish(live))

    def _firmware_pieces(self, states: tuple[MandantState, ...]) -> tuple[_Piece, ...]:
        """Each mandant's firmware lines, from the cache where its labels are the same object."""
        labels = {s.name: s.snapshot.firmware for s in states if s.snapshot is not None}
        return _reuse(self._firmware, labels, _firmware_lines)

    def _info_pieces(self, states: tuple[MandantState, ...]) -> tuple[_Piece, ...]:
        """Each mandant's info lines, from the cache where its fleet is the same object."""
        if not self._collector.station_info:
            return ()
        fleets = {s.name: s.snapshot.stations for s in states if s.snapshot is not None}
        return _reuse(self._info, fleets, lambda name, fleet: _info_lines(name, fleet.values()))


def _same(old: tuple[MandantState, ...], new: tuple[MandantState, ...]) -> bool:
    return len(old) == len(new) and all(a is b for a, b in zip(old, new, strict=True))
