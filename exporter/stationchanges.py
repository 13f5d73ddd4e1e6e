"""The station changes: every station added, removed or moved to another firmware, as one structured
log line each and in a bounded in-memory ring that ``GET /changes`` and the landing page read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from exporter.model import Change

LOG = logging.getLogger("exporter.changelog")
"""The name of the module before it was renamed: the log lines' ``source``, which log pipelines
may select the change lines by."""

_MESSAGES = {
    "added": "station added",
    "removed": "station removed",
    "firmware_changed": "station firmware changed",
}


@dataclass(frozen=True, slots=True)
class ChangeEntry:
    """One change of one mandant's fleet, seen by the refresh that published it."""

    id: int  # 1, 2, 3, ... in the order recorded; lets a reader tell new entries apart
    time: float  # Unix time of the refresh that saw the change
    mandant: str
    change: Change

    def as_dict(self) -> dict[str, Any]:
        """The entry as the JSON of ``/changes`` shows it (and the log line's fields)."""
        change = self.change
        return {
            "id": self.id,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.time)),
            "timestamp": self.time,
            "mandant": self.mandant,
            "kind": change.kind,
            "station_id": change.station_id,
            "label": change.label,
            "charge_box_identity": change.charge_box_identity,
            "firmware_from": change.firmware_from,
            "firmware_to": change.firmware_to,
        }


class StationChanges:
    """The latest ``max_entries`` changes of every mandant; thread-safe."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: deque[ChangeEntry] = deque(maxlen=max_entries)
        self._next_id = 1
        self._lock = threading.Lock()

    def record(self, mandant: str, seen_at: float, changes: Sequence[Change]) -> None:
        """Keep ``changes`` (the oldest entries make room) and log one line for each.

        One refresh keeps and logs at most ``max_entries`` changes, its last ones (removals come
        last): an API that swaps a million stations must not write two million log lines.
        The change counters count every change all the same."""
        kept = changes[-self.max_entries :]
        if len(kept) < len(changes):
            LOG.warning(
                "mandant %s: %d changes in one refresh; only the last %d are logged and kept "
                "(--changes.max-entries), the change counters count all",
                mandant,
                len(changes),
                len(kept),
            )
        with self._lock:
            first_id = self._next_id + len(changes) - len(kept)  # ids count every change
            entries = [
                ChangeEntry(first_id + index, seen_at, mandant, change)
                for index, change in enumerate(kept)
            ]
            self._next_id += len(changes)
            self._entries.extend(entries)
        for entry in entries:
            fields = entry.as_dict()
            del fields["timestamp"], fields["time"]  # the log line has its own time
            LOG.info(_MESSAGES[entry.change.kind], extra={"fields": fields})

    def latest(
        self, *, mandant: str | None = None, kind: str | None = None, limit: int | None = None
    ) -> list[ChangeEntry]:
        """Entries newest first, only of ``mandant`` and ``kind`` when given, at most ``limit``."""
        with self._lock:
            entries = list(self._entries)
        found: list[ChangeEntry] = []
        for entry in reversed(entries):
            if limit is not None and len(found) >= limit:
                break
            if (mandant is None or entry.mandant == mandant) and (
                kind is None or entry.change.kind == kind
            ):
                found.append(entry)
        return found
