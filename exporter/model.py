"""Stations, immutable fleet snapshots and the diff between two snapshots.

This module imports nothing of ours: it is plain data that every other layer can share.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

UNKNOWN_FIRMWARE = "unknown"
"""The firmware label used when a station reports no (or an empty) firmware version."""


@dataclass(frozen=True, slots=True)
class Station:
    """One charging station, reduced to what the metrics need."""

    id: str
    label: str
    charge_box_identity: str
    firmware_version: str
    serial_number: str

    @property
    def firmware_label(self) -> str:
        """The firmware version as a label value: ``unknown`` when the API gave none."""
        return self.firmware_version or UNKNOWN_FIRMWARE


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The fleet of one mandant as read by one successful refresh; never changed afterwards."""

    stations: Mapping[str, Station]
    by_firmware: Mapping[str, int]
    taken_at: float

    @classmethod
    def build(cls, stations: Iterable[Station], taken_at: float) -> Snapshot:
        """Index stations by id (the first of duplicate ids wins) and count them per firmware."""
        by_id: dict[str, Station] = {}
        for station in stations:
            by_id.setdefault(station.id, station)
        firmware = Counter(station.firmware_label for station in by_id.values())
        return cls(MappingProxyType(by_id), MappingProxyType(dict(firmware)), taken_at)

    def __len__(self) -> int:
        return len(self.stations)


@dataclass(frozen=True, slots=True)
class Diff:
    """What changed between two snapshots, as station ids."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    firmware_changed: tuple[str, ...]


def diff(old: Snapshot, new: Snapshot) -> Diff:
    """Stations added, removed and with a changed firmware version from ``old`` to ``new``."""
    added = tuple(sid for sid in new.stations if sid not in old.stations)
    removed = tuple(sid for sid in old.stations if sid not in new.stations)
    changed = tuple(
        sid
        for sid, station in new.stations.items()
        if sid in old.stations and old.stations[sid].firmware_version != station.firmware_version
    )
    return Diff(added, removed, changed)
