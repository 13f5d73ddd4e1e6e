"""The simulator's fleet: a seeded, thread-safe inventory of JSON:API charging stations and the
history of its fingerprints, which tests compare with what the exporter reported."""

from __future__ import annotations

import copy
import hashlib
import json
import random
import re
import threading
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from itertools import accumulate
from typing import Any

FIRMWARE_MIX: dict[str, float] = {"2.4.1": 0.6, "2.5.0": 0.3, "3.0.0-rc1": 0.1}
HISTORY_LENGTH = 1000


def spread_mix(versions: int) -> dict[str, float]:
    """A firmware mix of ``versions`` distinct, equally likely versions (``9.0.0``, ``9.0.1``,
    ...): a fleet whose firmware label has that many values, for the cardinality bound."""
    if versions < 1:
        raise ValueError(f"versions must be >= 1, got {versions}")
    return dict.fromkeys((f"9.0.{index}" for index in range(versions)), 1.0)


def _version_key(version: str) -> tuple[tuple[int, ...], bool, str]:
    """Order versions like "2.4.1" < "3.0.0-rc1" < "3.0.0"."""
    release, _, pre = version.partition("-")
    numbers = tuple(int(part) if part.isdigit() else 0 for part in release.split("."))
    return numbers, not pre, pre


def _check_count(count: int) -> None:
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")


def _copy(station: dict[str, Any]) -> dict[str, Any]:
    attributes = {
        name: copy.deepcopy(value) if isinstance(value, dict | list) else value
        for name, value in station["attributes"].items()
    }
    return {**station, "attributes": attributes}


def fingerprint(pairs: Iterable[tuple[str, str]]) -> str:
    """The fleet's identity for snapshot checks: sha256 over the sorted "id<TAB>firmware" lines.

    A test computes the same from the exporter's metrics and looks it up in the history.
    """
    lines = sorted(f"{station_id}\t{firmware}" for station_id, firmware in pairs)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _renamed(label: object) -> str:
    """The label after one more rename: " r1" appended, or its " rN" counted up."""
    text = label if isinstance(label, str) else ""
    match = re.fullmatch(r"(.*) r(\d+)", text, re.DOTALL)
    return f"{match[1]} r{int(match[2]) + 1}" if match else f"{text} r1"


def _firmware_text(station: dict[str, Any]) -> str:
    """firmwareVersion as text; a custom station may lack it ("") or hold a non-string (JSON)."""
    version = station["attributes"].get("firmwareVersion")
    if isinstance(version, str):
        return version
    return "" if version is None else json.dumps(version, sort_keys=True)


class _ChangeLock:
    """The inventory's re-entrant lock. When its outermost holder releases it after a change,
    the inventory records one fingerprint, so changes made under one hold are one entry."""

    def __init__(self, on_outermost_release: Callable[[], None]) -> None:
        self._lock = threading.RLock()
        self._depth = 0
        self._on_outermost_release = on_outermost_release

    def __enter__(self) -> _ChangeLock:
        self._lock.acquire()
        self._depth += 1
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self._depth -= 1
            if self._depth == 0:
                self._on_outermost_release()
        finally:
            self._lock.release()


class Inventory:
    """Thread-safe, deterministic (seeded) station inventory with a history of fingerprints."""

    def __init__(
        self, size: int = 25, firmware_mix: Mapping[str, float] | None = None, seed: int = 0
    ) -> None:
        mix = dict(FIRMWARE_MIX if firmware_mix is None else firmware_mix)
        if not mix or any(weight < 0 for weight in mix.values()) or sum(mix.values()) <= 0:
            raise ValueError(f"firmware_mix needs non-negative weights with a positive sum: {mix}")
        self._mix = mix
        # Drawing with cumulative weights is a bisection, not a pass over every version.
        self._versions, self._cumulative = list(mix), list(accumulate(mix.values()))
        self._rng = random.Random(seed)
        self._lock = _ChangeLock(self._record_change)
        self._stations: list[dict[str, Any]] = []
        self._serial = 0
        self._changed = False
        self._history: deque[str] = deque(maxlen=HISTORY_LENGTH)
        with self._lock:
            self.add(size)
            self._changed = True  # creation is a change even with size 0

    def _record_change(self) -> None:
        if self._changed:
            self._changed = False
            self._history.append(fingerprint(self._pairs()))

    def _pairs(self) -> list[tuple[str, str]]:
        return [(station["id"], _firmware_text(station)) for station in self._stations]

    def _new_id(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _new_station(self) -> dict[str, Any]:
        rng = self._rng
        self._serial += 1
        firmware = rng.choices(self._versions, cum_weights=self._cumulative)[0]
        return {
            "type": "charging_stations",
            "id": self._new_id(),
            "attributes": {
                "label": f"Station {self._serial}",
                "chargeBoxIdentity": f"cp_{self._serial}",
                "iccid": f"8949{rng.randrange(10**15):015d}",
                "imsi": f"26201{rng.randrange(10**10):010d}",
                "serialnumber": f"SN{rng.randrange(10**8):08d}",
                "firmwareVersion": firmware,
            },
        }

    def add(self, count: int, *, at_start: bool = False) -> list[str]:
        """Add ``count`` stations drawn from the firmware mix (at the end, or before all others
        with ``at_start``, which shifts every row to a later page); return their ids."""
        _check_count(count)
        with self._lock:
            new = [self._new_station() for _ in range(count)]
            if at_start:
                self._stations[:0] = new
            else:
                self._stations.extend(new)
            self._changed |= bool(new)
            return [station["id"] for station in new]

    def add_custom(self, rows: list[dict[str, Any]]) -> list[str]:
        """Append stations exactly as given, for bad-input tests: each row is
        ``{"id": optional string, "attributes": {any JSON}}``; return their ids."""
        stations = custom_stations(rows)
        with self._lock:
            for station in stations:
                station["id"] = station["id"] if station["id"] is not None else self._new_id()
            self._stations.extend(stations)
            self._changed |= bool(stations)
            return [station["id"] for station in stations]

    def remove(self, count: int) -> list[str]:
        """Remove up to ``count`` randomly chosen stations; return their ids."""
        _check_count(count)
        with self._lock:
            gone = self._rng.sample(self._stations, min(count, len(self._stations)))
            return self._drop(gone)

    def remove_first(self, count: int = 1) -> list[str]:
        """Remove up to ``count`` stations from the start, shifting every row to an earlier
        page; return their ids."""
        _check_count(count)
        with self._lock:
            return self._drop(self._stations[:count])

    def _drop(self, gone: list[dict[str, Any]]) -> list[str]:
        removed = {id(station) for station in gone}
        self._stations = [s for s in self._stations if id(s) not in removed]
        self._changed |= bool(gone)
        return [station["id"] for station in gone]

    def rollout(self, to_version: str, count: int, from_version: str | None = None) -> list[str]:
        """Move up to ``count`` stations (optionally only those on ``from_version``) to
        ``to_version``; return the ids whose firmwareVersion changed."""
        _check_count(count)
        with self._lock:
            candidates = [
                station
                for station in self._stations
                if station["attributes"].get("firmwareVersion") != to_version
                and from_version in (None, station["attributes"].get("firmwareVersion"))
            ]
            return self._move(candidates, count, to_version)

    def _move(self, candidates: list[dict[str, Any]], count: int, to_version: str) -> list[str]:
        chosen = self._rng.sample(candidates, min(count, len(candidates)))
        for station in chosen:
            station["attributes"]["firmwareVersion"] = to_version
        self._changed |= bool(chosen)
        return [station["id"] for station in chosen]

    def rename(self, count: int) -> list[str]:
        """Rename up to ``count`` randomly chosen stations ("Station 17" becomes "Station 17 r1",
        then "Station 17 r2"); return their ids. A label is no part of the fingerprint."""
        _check_count(count)
        with self._lock:
            chosen = self._rng.sample(self._stations, min(count, len(self._stations)))
            for station in chosen:
                station["attributes"]["label"] = _renamed(station["attributes"].get("label"))
            return [station["id"] for station in chosen]

    def stations(self) -> list[dict[str, Any]]:
        """Copies of all JSON:API resource objects, in inventory order."""
        with self._lock:
            return [_copy(station) for station in self._stations]

    def page(self, offset: int, limit: int) -> tuple[list[dict[str, Any]], int]:
        """One consistent slice of the inventory and the total at that moment."""
        with self._lock:
            rows = self._stations[offset : offset + limit]
            return [_copy(station) for station in rows], len(self._stations)

    @property
    def lock(self) -> _ChangeLock:
        """Hold it to make several changes appear to readers (and in the history) as one."""
        return self._lock

    def firmware_counts(self) -> dict[str, int]:
        """Number of stations per firmware version (as text, see ``fingerprint``)."""
        with self._lock:
            return dict(Counter(_firmware_text(station) for station in self._stations))

    def fingerprint(self) -> str:
        """The current fleet's fingerprint (see the module-level ``fingerprint``)."""
        with self._lock:
            return fingerprint(self._pairs())

    def history(self) -> list[str]:
        """Fingerprints after creation and after every change since, oldest first; the last
        ``HISTORY_LENGTH`` only."""
        with self._lock:
            return list(self._history)

    def __len__(self) -> int:
        with self._lock:
            return len(self._stations)

    def churn_step(self) -> None:
        """A small random change for the demo: add 0-2, remove 0-1, roll 1-3 stations forward."""
        with self._lock:
            self.add(self._rng.randint(0, 2))
            self.remove(self._rng.randint(0, 1))
            versions = sorted(self._mix, key=_version_key)
            if len(versions) < 2:
                return
            target = self._rng.choice(versions[1:])
            older = [
                station
                for station in self._stations
                if isinstance(version := station["attributes"].get("firmwareVersion"), str)
                and _version_key(version) < _version_key(target)
            ]
            self._move(older, self._rng.randint(1, 3), target)


def custom_stations(rows: object) -> list[dict[str, Any]]:
    """Validated copies of custom rows (see ``Inventory.add_custom``); ValueError names the
    first bad one."""
    if not isinstance(rows, list):
        raise ValueError(f"stations must be a list of objects, got {rows!r}")
    return [_custom_station(row, index) for index, row in enumerate(rows)]


def _custom_station(row: object, index: int) -> dict[str, Any]:
    """A validated deep copy of one custom row; its id stays None until the inventory picks one."""
    where = f"stations[{index}]"
    if not isinstance(row, dict):
        raise ValueError(f"{where} must be an object with attributes and an optional id")
    unknown = sorted(set(row) - {"id", "attributes"})
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}; allowed are id and attributes")
    station_id = row.get("id")
    if station_id is not None and not isinstance(station_id, str):
        raise ValueError(f"{where}.id must be a string (JSON:API ids are), got {station_id!r}")
    attributes = row.get("attributes")
    if not isinstance(attributes, dict):
        raise ValueError(f"{where}.attributes must be an object, got {attributes!r}")
    try:
        attributes = json.loads(json.dumps(attributes, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}.attributes must be plain JSON: {exc}") from exc
    return {"type": "charging_stations", "id": station_id, "attributes": attributes}
