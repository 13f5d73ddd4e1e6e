"""Stations, immutable fleet snapshots, the changes between two snapshots and firmware targets.

This module imports nothing of ours: it is plain data that every other layer can share.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import chain
from operator import attrgetter, countOf
from types import MappingProxyType

UNKNOWN_FIRMWARE = "unknown"
"""The firmware label used when a station reports no (or an empty) firmware version."""

DATA_ISSUES = (
    "no_firmware_version",
    "no_sim_data",
    "duplicate_charge_box_identity",
    "invalid_text",
    "text_too_long",
    "duplicate_station_id",
)
"""The fixed set of values of the ``issue`` label of the data-quality metric."""

MAX_TEXT_LENGTH = 256
"""Characters kept of a station's id and of each text attribute: far above any real value, and
it bounds what one station adds to /metrics (parsing cuts longer text: ``text_too_long``)."""

TEXT_ISSUES = ("invalid_text", "text_too_long")
"""The data issues that parsing repairs, as ``Station.repairs`` names them."""

CHANGE_KINDS = ("added", "removed", "firmware_changed")
"""The kinds of change between two snapshots."""


@dataclass(frozen=True, slots=True)
class Station:
    """One charging station, reduced to what the metrics need."""

    id: str
    label: str
    charge_box_identity: str
    firmware_version: str
    serial_number: str
    has_sim_data: bool = True  # both iccid and imsi given
    repairs: tuple[str, ...] = ()  # the TEXT_ISSUES that parsing repaired in this station

    @property
    def firmware_label(self) -> str:
        """The firmware version as a label value: ``unknown`` when the API gave none."""
        return self.firmware_version or UNKNOWN_FIRMWARE


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The fleet of one mandant as read by one successful refresh; never changed afterwards."""

    stations: Mapping[str, Station]
    by_firmware: Mapping[str, int]
    data_issues: Mapping[str, int]
    taken_at: float

    @classmethod
    def build(cls, stations: Iterable[Station], taken_at: float) -> Snapshot:
        """Index stations by id (the first of duplicate ids wins), count them per firmware and
        count their data issues."""
        rows = stations if isinstance(stations, list) else list(stations)
        by_id: dict[str, Station] = {}
        for station in rows:
            by_id.setdefault(station.id, station)
        repeated = 0
        if len(by_id) < len(rows):
            ids = Counter(map(attrgetter("id"), rows))
            repeated = sum(1 for count in ids.values() if count > 1)
        firmware = Counter(map(attrgetter("firmware_version"), by_id.values()))
        if "" in firmware:
            firmware[UNKNOWN_FIRMWARE] += firmware.pop("")
        return cls(
            MappingProxyType(by_id),
            MappingProxyType(dict(firmware)),
            MappingProxyType(data_issues(by_id.values(), repeated)),
            taken_at,
        )

    def __len__(self) -> int:
        return len(self.stations)


def data_issues(stations: Iterable[Station], repeated_ids: int = 0) -> dict[str, int]:
    """Stations per data issue: no firmware version; no SIM data (iccid or imsi empty); a
    charge box identity that another station of the fleet has too (every one of them counts;
    an empty identity is never a duplicate); text that parsing repaired (``Station.repairs``);
    and ``repeated_ids``, the ids the listing gave more than once (each station counts once)."""
    stations = list(stations)
    identities = Counter(map(attrgetter("charge_box_identity"), stations))
    identities.pop("", None)
    repairs = Counter(chain.from_iterable(filter(None, map(attrgetter("repairs"), stations))))
    return {
        "no_firmware_version": countOf(map(attrgetter("firmware_version"), stations), ""),
        "no_sim_data": countOf(map(attrgetter("has_sim_data"), stations), False),
        "duplicate_charge_box_identity": sum(n for n in identities.values() if n > 1),
        **{issue: repairs[issue] for issue in TEXT_ISSUES},
        "duplicate_station_id": repeated_ids,
    }


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
