"""Stations, immutable fleet snapshots, the changes between two snapshots, firmware targets,
the published state of a mandant and secrets.

This module imports nothing of ours: it is plain data that every other layer can share.
"""

from __future__ import annotations

import errno
import hmac
import logging
import os
import re
import stat
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from heapq import nsmallest
from itertools import chain
from operator import attrgetter, countOf, is_
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar

LOG = logging.getLogger(__name__)
_T = TypeVar("_T")

UNKNOWN_FIRMWARE = "unknown"
"""The firmware label used when a station reports no (or an empty) firmware version."""

FOLDED_FIRMWARE = "(other)"
"""The firmware label shared by the stations whose version gets no series of its own (a mandant
with more versions than its bound). No version string looks like it; a station that reports
exactly this is counted under it too, so the series always means "folded"."""

DEFAULT_MAX_FIRMWARE_VERSIONS = 100
"""Firmware versions per mandant with a series of their own (--firmware.max-versions): room
for many vendors' versions at once, and a bound on what an API inventing versions adds."""

DATA_ISSUES = (
    "no_firmware_version",
    "no_sim_data",
    "duplicate_charge_box_identity",
    "invalid_text",
    "text_too_long",
    "duplicate_station_id",
    "firmware_version_folded",
)
"""The fixed set of values of the ``issue`` label of the data-quality metric."""

MAX_TEXT_LENGTH = 256
"""Characters kept of a station's id and of each text attribute: far above any real value, and
it bounds what one station adds to /metrics (parsing cuts longer text: ``text_too_long``)."""

TEXT_ISSUES = ("invalid_text", "text_too_long")
"""The data issues that parsing repairs, as ``Station.repairs`` names them."""

CHANGE_KINDS = ("added", "removed", "firmware_changed")
"""The kinds of change between two snapshots."""


TEXT_SEPARATOR = "\x1f"
"""Joins a station's label, charge box identity and serial number into one string: the unit
separator is a control character, which parsing never lets into text."""

_OWN_ISSUES: dict[tuple[str, ...], tuple[str, ...]] = {}
"""One shared tuple per distinct set of a station's own data issues (there are a handful)."""


@dataclass(frozen=True, slots=True, init=False)
class Station:
    """One charging station, reduced to what the metrics, the diff and the station changes need.

    A million of them are held at once, so the record is compact (4 fields, about 300 bytes
    with its strings and its place in the snapshot's dict): the three texts that only the info
    metric and the station changes show share one string, and the data issues of the station itself
    (no SIM data, repaired text) share one tuple with every station that has the same ones.
    """

    id: str
    firmware_version: str
    texts: str  # label, charge box identity, serial number, joined by TEXT_SEPARATOR
    issues: tuple[str, ...]  # "no_sim_data" and the TEXT_ISSUES repaired, in that order

    def __init__(
        self,
        id: str,
        label: str,
        charge_box_identity: str,
        firmware_version: str,
        serial_number: str,
        has_sim_data: bool = True,  # both iccid and imsi given
        repairs: tuple[str, ...] = (),  # the TEXT_ISSUES that parsing repaired in this station
    ) -> None:
        issues = repairs if has_sim_data else ("no_sim_data", *repairs)
        texts = TEXT_SEPARATOR.join((label, charge_box_identity, serial_number))
        object.__setattr__(self, "id", id)
        object.__setattr__(self, "firmware_version", firmware_version)
        object.__setattr__(self, "texts", texts)
        object.__setattr__(self, "issues", _OWN_ISSUES.setdefault(issues, issues))

    @property
    def label(self) -> str:
        return self.texts.split(TEXT_SEPARATOR)[0]

    @property
    def charge_box_identity(self) -> str:
        return self.texts.split(TEXT_SEPARATOR)[1]

    @property
    def serial_number(self) -> str:
        return self.texts.split(TEXT_SEPARATOR)[2]

    @property
    def has_sim_data(self) -> bool:
        return "no_sim_data" not in self.issues

    @property
    def repairs(self) -> tuple[str, ...]:
        """The TEXT_ISSUES that parsing repaired in this station."""
        return tuple(issue for issue in self.issues if issue in TEXT_ISSUES)

    @property
    def firmware_label(self) -> str:
        """The firmware version as a label value: ``unknown`` when the API gave none."""
        return self.firmware_version or UNKNOWN_FIRMWARE


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The fleet of one mandant as read by one successful refresh; never changed afterwards."""

    stations: Mapping[str, Station]
    by_firmware: Mapping[str, int]  # every firmware label, exact
    firmware: FirmwareLabels  # the labels /metrics shows, at most a bounded number
    data_issues: Mapping[str, int]
    taken_at: float

    @classmethod
    def build(
        cls,
        stations: Iterable[Station],
        taken_at: float,
        max_versions: int = DEFAULT_MAX_FIRMWARE_VERSIONS,
        target: FirmwareTarget | None = None,
    ) -> Snapshot:
        """Index stations by id (the first of duplicate ids wins), count them per firmware,
        fold the firmware labels (``FirmwareLabels.fold``) and count their data issues."""
        rows = stations if isinstance(stations, list) else list(stations)
        by_id: dict[str, Station] = {}
        for station in rows:
            by_id.setdefault(station.id, station)
        repeated_ids = len(repeated(rows, attrgetter("id"))) if len(by_id) < len(rows) else 0
        counter = Counter(map(attrgetter("firmware_version"), by_id.values()))
        if "" in counter:
            counter[UNKNOWN_FIRMWARE] += counter.pop("")
        by_firmware = MappingProxyType(dict(counter))
        firmware = FirmwareLabels.fold(by_firmware, max_versions, target)
        issues = data_issues(by_id.values(), repeated_ids, firmware.folded)
        return cls(
            MappingProxyType(by_id), by_firmware, firmware, MappingProxyType(issues), taken_at
        )

    def folded(self, max_versions: int, target: FirmwareTarget | None) -> Snapshot:
        """This fleet with its firmware labels folded for ``max_versions`` and ``target`` (a
        reload may change them); itself when they are the ones it was folded for."""
        if (self.firmware.max_versions, self.firmware.target) == (max_versions, target):
            return self
        firmware = FirmwareLabels.fold(self.by_firmware, max_versions, target)
        issues = {**self.data_issues, "firmware_version_folded": firmware.folded}
        return replace(self, firmware=firmware, data_issues=MappingProxyType(issues))

    def __len__(self) -> int:
        return len(self.stations)

    def listed_by(self, rows: Sequence[Station]) -> bool:
        """Whether ``rows`` list exactly this fleet, once each: the cheap proof that a read
        found it unchanged (parsing returns the station already held for an unchanged row)."""
        return not self.data_issues["duplicate_station_id"] and same_objects(rows, self.stations)


def same_objects(rows: Sequence[Station], stations: Mapping[str, Station]) -> bool:
    """Whether ``rows`` are the very station objects of ``stations``, in the same order (so no
    id comes twice in them)."""
    return len(rows) == len(stations) and all(map(is_, rows, stations.values()))


def _identity(station: Station) -> str:
    return station.charge_box_identity


def data_issues(
    stations: Collection[Station], repeated_ids: int = 0, folded: int = 0
) -> dict[str, int]:
    """Stations per data issue: no firmware version; no SIM data (iccid or imsi empty); a
    charge box identity that another station of the fleet has too (every one of them counts;
    an empty identity is never a duplicate); text that parsing repaired (``Station.repairs``);
    ``repeated_ids``, the ids the listing gave more than once (each station counts once); and
    ``folded``, the stations shown under FOLDED_FIRMWARE (``FirmwareLabels``)."""
    own = Counter(chain.from_iterable(map(attrgetter("issues"), stations)))
    return {
        "no_firmware_version": countOf(map(attrgetter("firmware_version"), stations), ""),
        "no_sim_data": own["no_sim_data"],
        "duplicate_charge_box_identity": sum(repeated(stations, _identity).values()),
        **{issue: own[issue] for issue in TEXT_ISSUES},
        "duplicate_station_id": repeated_ids,
        "firmware_version_folded": folded,
    }


_BITMAP_BITS = 1 << 24


def repeated(items: Collection[_T], key: Callable[[_T], str]) -> Counter[str]:
    """How often each key of ``items`` comes, for the keys that come more than once ('' never
    counts).

    A Counter of every key would hold every key and a dict entry for each at once. Two passes
    hold a bitmap of ``_BITMAP_BITS`` bits and the repeated keys instead: the first marks the
    hash of each key in the bitmap and keeps the hashes it finds marked already (keys seen
    before, and a few that only share a bit); the second counts exactly the keys with such a
    hash.
    """
    seen = bytearray(_BITMAP_BITS // 8)
    again: set[int] = set()
    for item in items:
        value = key(item)
        if value:
            bit = hash(value) % _BITMAP_BITS
            if seen[bit >> 3] & (1 << (bit & 7)):
                again.add(bit)
            else:
                seen[bit >> 3] |= 1 << (bit & 7)
    if not again:
        return Counter()
    del seen
    counts = Counter(
        value for item in items if (value := key(item)) and hash(value) % _BITMAP_BITS in again
    )
    return Counter({value: n for value, n in counts.items() if n > 1})


@dataclass(frozen=True, slots=True)
class Change:
    """One station added, removed or with a changed firmware version. Firmware versions are
    as the API gave them ('' for none); ``firmware_from`` is '' for an added station,
    ``firmware_to`` '' for a removed one."""

    kind: str  # one of CHANGE_KINDS
    station_id: str
    label: str
    charge_box_identity: str
    firmware_from: str
    firmware_to: str


def diff(old: Snapshot, new: Snapshot) -> tuple[Change, ...]:
    """Stations added, removed and with a changed firmware version from ``old`` to ``new``,
    in that order; label and identity are the newest known."""
    if old.stations is new.stations:  # a refresh that found the fleet unchanged
        return ()
    changes = []
    for sid, station in new.stations.items():
        before = old.stations.get(sid)
        if before is None:
            changes.append(_change("added", station, "", station.firmware_version))
        elif before.firmware_version != station.firmware_version:
            changes.append(
                _change(
                    "firmware_changed", station, before.firmware_version, station.firmware_version
                )
            )
    for sid, station in old.stations.items():
        if sid not in new.stations:
            changes.append(_change("removed", station, station.firmware_version, ""))
    order = {kind: index for index, kind in enumerate(CHANGE_KINDS)}
    changes.sort(key=lambda change: order[change.kind])
    return tuple(changes)


def _change(kind: str, station: Station, before: str, after: str) -> Change:
    return Change(kind, station.id, station.label, station.charge_box_identity, before, after)


@dataclass(frozen=True, slots=True)
class FirmwareTarget:
    """The firmware version a rollout aims at: one exact version, or a regular expression
    written between slashes (``/5\\.2\\..*/``) that must match the whole version."""

    text: str  # as configured
    pattern: re.Pattern[str] | None

    @classmethod
    def parse(cls, text: str) -> FirmwareTarget:
        """Raises ValueError for an empty target or a regular expression that does not compile."""
        text = text.strip()
        if len(text) >= 2 and text.startswith("/") and text.endswith("/"):
            try:
                return cls(text, re.compile(text[1:-1]))
            except re.error as e:
                raise ValueError(f"not a regular expression: {text!r}: {e}") from None
        if not text:
            raise ValueError("empty; give a version (5.2.1) or a regular expression (/5\\.2\\..*/)")
        return cls(text, None)

    def matches(self, version: str) -> bool:
        """Whether a station on ``version`` is on target; no version is never on target."""
        if not version:
            return False
        if self.pattern is None:
            return version == self.text
        return self.pattern.fullmatch(version) is not None

    def matches_label(self, label: str) -> bool:
        """Whether a firmware label (a version, or ``unknown`` for none) is on target."""
        return label != UNKNOWN_FIRMWARE and self.matches(label)

    def stations_on_target(self, snapshot: Snapshot) -> int:
        """Stations of ``snapshot`` on target (counted per version, not per station)."""
        return sum(
            count for label, count in snapshot.by_firmware.items() if self.matches_label(label)
        )


@dataclass(frozen=True, slots=True)
class FirmwareLabels:
    """A mandant's stations per firmware label as /metrics shows them: at most ``max_versions``
    labels of their own, and the stations of every other version together under
    FOLDED_FIRMWARE, so that the counts still add up to the fleet."""

    counts: Mapping[str, int]  # label -> stations; FOLDED_FIRMWARE only when it has any
    folded: int  # stations under FOLDED_FIRMWARE (the data issue firmware_version_folded)
    folded_versions: int  # distinct labels among them
    max_versions: int
    target: FirmwareTarget | None  # the target the labels were chosen for

    @classmethod
    def fold(
        cls, by_firmware: Mapping[str, int], max_versions: int, target: FirmwareTarget | None
    ) -> FirmwareLabels:
        """``by_firmware`` (label -> stations) with at most ``max_versions`` labels kept: those
        on ``target`` first (the rollout metric and panels follow them), then the most common,
        ties by label; the same fleet always keeps the same labels. A label that is exactly
        FOLDED_FIRMWARE is never kept."""
        if len(by_firmware) <= max_versions and FOLDED_FIRMWARE not in by_firmware:
            return cls(by_firmware, 0, 0, max_versions, target)

        def rank(label: str) -> tuple[bool, int, str]:
            on_target = target is not None and target.matches_label(label)
            return not on_target, -by_firmware[label], label

        candidates = (label for label in by_firmware if label != FOLDED_FIRMWARE)
        counts = {label: by_firmware[label] for label in nsmallest(max_versions, candidates, rank)}
        folded = sum(by_firmware.values()) - sum(counts.values())
        if folded:
            counts[FOLDED_FIRMWARE] = folded
        folded_versions = len(by_firmware) - len(counts) + (1 if folded else 0)
        return cls(MappingProxyType(counts), folded, folded_versions, max_versions, target)


@dataclass(frozen=True, slots=True)
class MandantState:
    """All that the metrics and pages show about one mandant, as of its last refresh."""

    name: str
    snapshot: Snapshot | None = None
    up: bool = False
    last_success: float | None = None
    last_success_monotonic: float | None = None  # time.monotonic() of the last success
    last_duration: float | None = None
    last_error: str | None = None
    added_total: int = 0
    removed_total: int = 0
    firmware_changes_total: int = 0
    # Failed refreshes by reason (errors.FAILURE_REASONS); a reason not in it has none.
    failures: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    api_requests: Mapping[tuple[str, str], int] = field(
        default_factory=lambda: MappingProxyType({})
    )
    token_expiry: float | None = None
    firmware_target: FirmwareTarget | None = None
    overruns: int = 0  # refreshes that took longer than the interval

    @property
    def ready(self) -> bool:
        """True once a refresh has succeeded: from then on there is data to serve."""
        return self.snapshot is not None


def read_regular_file(path: Path | str, limit: int) -> bytes:
    """The content of the regular file ``path``. Raises OSError when it cannot be read or is
    no regular file (a FIFO would block a start or a reload until someone writes to it, a
    device like /dev/zero never ends) and ValueError when it holds more than ``limit``
    bytes; messages name the file, never its content."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        with os.fdopen(descriptor, "rb", closefd=False) as stream:
            content = stream.read(limit + 1)
    finally:
        os.close(descriptor)
    if len(content) > limit:
        raise ValueError(f"{str(path)!r} is larger than {_size(limit)}")
    return content


def _size(limit: int) -> str:
    return f"{limit // 2**20} MiB" if limit >= 2**20 else f"{limit // 2**10} KiB"


SECRET_FILE_MAX_SIZE = 64 * 1024
"""Bytes a client secret file may hold (a secret is a few dozen)."""
PEM_FILE_MAX_SIZE = 4 * 1024 * 1024
"""Bytes a PEM file of certificates or a key may hold (every public CA together: 220 KB)."""


class Secret:
    """A secret string that never shows itself: str()/repr()/format give '***'. ``path`` is the
    file it was read from, if any, so a secret rotated in place can be read again."""

    __slots__ = ("_value", "path")

    def __init__(self, value: str, path: Path | None = None) -> None:
        self._value = value
        self.path = path

    @classmethod
    def read(cls, path: Path) -> Secret:
        """The secret in the file ``path``. Raises OSError when the file cannot be read and
        ValueError when it holds no usable secret; messages name the file, never its content."""
        try:
            value = read_regular_file(path, SECRET_FILE_MAX_SIZE).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{str(path)!r} is not UTF-8 text") from None
        return cls(clean_secret(value, f"{str(path)!r} is empty"), path)

    def reread(self) -> Secret | None:
        """The secret now in ``path``; None without a file or when the file is unusable now
        (logged, without the value)."""
        if self.path is None:
            return None
        try:
            return Secret.read(self.path)
        except OSError as exc:
            problem = f"cannot read {str(self.path)!r}: {exc.strerror or type(exc).__name__}"
        except ValueError as exc:
            problem = str(exc)
        LOG.warning("cannot read the client secret again: client secret file: %s", problem)
        return None

    def reveal(self) -> str:
        """Return the value; call only where it leaves the process (the token request)."""
        return self._value

    def __str__(self) -> str:
        return "***"

    def __repr__(self) -> str:
        return "***"

    def __format__(self, format_spec: str) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)


def clean_secret(value: str, empty: str) -> str:
    """The secret without a leading byte order mark (Windows editors write one) and trailing
    whitespace (line ends, also CRLF). Raises ValueError (``empty`` when nothing is left, or
    never showing the value) when it holds a character that cannot travel in an HTTP Basic
    header (control characters, beyond Latin-1)."""
    value = value.removeprefix("\ufeff").rstrip()
    if not value:
        raise ValueError(empty)
    if any(not c.isprintable() for c in value):
        raise ValueError("the client secret holds a control or invisible character")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError("the client secret holds a character beyond Latin-1") from None
    return value


TOKEN_AUTH_METHODS = ("basic", "post", "query")
"""How the client secret may go to the token endpoint: HTTP Basic, form body or query."""

AUTHORIZATION_SETTINGS = ("auto", "bearer", "raw")
"""How the access token goes into the Authorization header of API requests: ``Bearer <token>``
(bearer), the bare token (raw), or whichever of the two the API takes (auto)."""


@dataclass(frozen=True, slots=True)
class Mandant:
    """One tenant of the CPO API and the credentials of its API token."""

    name: str  # the `mandant` label
    api_url: str  # http(s) URL, no trailing slash
    token_url: str
    client_id: str
    client_secret: Secret
    token_auth_method: str  # one of TOKEN_AUTH_METHODS
    target_firmware: FirmwareTarget | None = None  # the rollout target, if any
    ca_file: str | None = None  # CA bundle (file, or directory from the environment) to trust
    firmware_max_versions: int = DEFAULT_MAX_FIRMWARE_VERSIONS  # firmware labels of their own
    authorization: str = "auto"  # one of AUTHORIZATION_SETTINGS

    def __post_init__(self) -> None:
        # A plain str here would print itself in every repr of the settings.
        if not isinstance(self.client_secret, Secret):
            raise TypeError("Mandant.client_secret must be a Secret")
        if self.token_auth_method not in TOKEN_AUTH_METHODS:
            raise ValueError(f"Mandant.token_auth_method must be one of {TOKEN_AUTH_METHODS}")
        if self.authorization not in AUTHORIZATION_SETTINGS:
            raise ValueError(f"Mandant.authorization must be one of {AUTHORIZATION_SETTINGS}")
