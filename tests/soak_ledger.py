"""The chaos soak's ledger: what the simulator changed (the schedule's records) against what
the webhook received.

- missed: a removed (added) station that no BeenergisedStationDisappeared
  (BeenergisedStationAdded) alert named within BOUND seconds of its change;
- false: a station named that did not change that way (a rename or a rollout is no such
  change), or was named before its change; BeenergisedFleetLargelyDisappeared unless the
  schedule had removed more than LARGE_SHARE of the fleet within the window before it; any
  other fleet notification;
- duplicate: one change named by two alert instances (same alert and station, another
  startsAt).

An alert instance is (alertname, station, startsAt): the first notification that lists it
names the station; Alertmanager lists every firing alert of a group again in each later
notification of the group, which names nothing new. The rules before one alert per station
name the stations in annotations.description; the ledger reads those names too, so the same
soak shows what they missed.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from tests.alertstack import Notification
from tests.soak_schedule import Record

BOUND = 60.0
"""Seconds from a change to the first notification naming each station it changed, at most."""
MIN_LIFETIME = 30.0
"""A station added and removed again within this many seconds may be missed: while a fault
is on the exporters may never see it, and a station never seen has not changed for them.
Longer than any fault of the schedule plus a few refreshes."""
WINDOW = 900.0
"""The window of the fleet-change alerts (15 minutes)."""
LARGE_SHARE = (0.20, 0.30)
"""BeenergisedFleetLargelyDisappeared fires above 25% of the largest fleet of its window gone.
Its notification is false unless the schedule removed more than 20% of the largest fleet of
the window before it (WINDOW + BOUND: the rule's window, seen late); it is missed if none
arrives within BOUND of the schedule passing 30%. The margins take up increase()'s
extrapolation and a replica that restarted and counts from its restart. A soak's fleet is
small (the per-station rules' cost grows with the series in their window) and its churn
high, so the alert fires in most soaks, once."""
DISAPPEARED = {"BeenergisedStationDisappeared", "BeenergisedStationsDisappeared"}
ADDED = {"BeenergisedStationAdded", "BeenergisedStationsAdded"}
"""The alerts that name removed and added stations: one a station (station_id label), and
the per-mandant ones of the earlier rules (names in the description)."""
LARGELY = "BeenergisedFleetLargelyDisappeared"


@dataclass(frozen=True)
class Finding:
    """One count of the ledger: missed, false or duplicate."""

    kind: str
    alertname: str
    station: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.alertname} {self.station}: {self.detail}"


@dataclass(frozen=True)
class Instance:
    """An alert instance as first named: (alertname, station, startsAt) and the first arrival
    of a notification listing it."""

    alertname: str
    station: str
    starts_at: str
    arrived: float


@dataclass
class Ledger:
    findings: list[Finding]
    latencies: list[float]
    expected: int
    named: int
    excused: int

    def count(self, kind: str) -> int:
        return sum(1 for finding in self.findings if finding.kind == kind)

    @property
    def clean(self) -> bool:
        return not self.findings


_NAMES = re.compile(r" Stations: (.*?)(?: and \d+ more)?\.$", re.DOTALL)
_NAME = re.compile(r"\s*(.+?) \(([^()]*)\)(?:,|$)")


def named_stations(alert: dict[str, Any], names: dict[tuple[str, str], str]) -> list[str]:
    """The stations an alert names: its station_id label, or the "Label (identity)" entries of
    its description (the earlier rules) as station ids through ``names``, "?Label (identity)"
    when unknown."""
    station = alert["labels"].get("station_id")
    if station:
        return [station]
    match = _NAMES.search(alert.get("annotations", {}).get("description", ""))
    if not match:
        return []
    return [
        names.get((label, identity), f"?{label} ({identity})")
        for label, identity in _NAME.findall(match.group(1))
    ]


def instances(
    notifications: Iterable[Notification], names: dict[tuple[str, str], str]
) -> dict[tuple[str, str, str], Instance]:
    """Every alert instance the notifications list, by (alertname, station, startsAt), at the
    first arrival that lists it. Only the station alerts name stations; any other alert (the
    large-share page, whose earlier form listed names too) is one instance of the station ""
    per startsAt."""
    found: dict[tuple[str, str, str], Instance] = {}
    for notification in sorted(notifications, key=lambda n: n.monotonic):
        for alert in notification.body.get("alerts", []):
            if alert.get("status") != "firing":
                continue
            alertname = alert["labels"].get("alertname", "")
            named = alertname in DISAPPEARED | ADDED and named_stations(alert, names)
            for station in named or [""]:
                key = (alertname, station, alert.get("startsAt", ""))
                found.setdefault(key, Instance(*key, notification.monotonic))
    return found


@dataclass
class Changes:
    """What the schedule changed, by station id: when (the change's ``sent`` time); and the
    stations removed and the size of the fleet after each change, in order of time."""

    removed: dict[str, float] = field(default_factory=dict)
    added: dict[str, float] = field(default_factory=dict)
    other: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    removals: list[tuple[float, int]] = field(default_factory=list)
    fleet: list[tuple[float, int]] = field(default_factory=list)

    @classmethod
    def of(cls, records: Iterable[Record], fleet: int) -> Changes:
        changes = cls(fleet=[(-math.inf, fleet)])
        for record in sorted(records, key=lambda r: r.sent):
            removed, added = record.changed.get("removed", []), record.changed.get("added", [])
            changes.removed |= dict.fromkeys(removed, record.sent)
            changes.added |= dict.fromkeys(added, record.sent)
            for key, what in (("rolled_out", "rolled out"), ("renamed", "renamed")):
                for station in record.changed.get(key, []):
                    changes.other[station].add(what)
            if removed:
                changes.removals.append((record.sent, len(removed)))
            fleet += len(added) - len(removed)
            changes.fleet.append((record.sent, fleet))
        return changes

    def what(self, station: str) -> list[str]:
        """What the schedule did to ``station``: added, removed, renamed, rolled out."""
        pairs = (("added", self.added), ("removed", self.removed))
        done = [what for what, stations in pairs if station in stations]
        return done + sorted(self.other.get(station, ()))

    def lifetime(self, station: str) -> float:
        return self.removed.get(station, math.inf) - self.added.get(station, -math.inf)

    def removed_share(self, until: float, removed_since: float, largest_since: float) -> float:
        """Stations removed from ``removed_since`` to ``until``, as a share of the largest fleet
        from ``largest_since`` to ``until``."""
        removed = sum(n for at, n in self.removals if removed_since <= at <= until)
        before = [size for at, size in self.fleet if at < largest_since]
        during = [size for at, size in self.fleet if largest_since <= at <= until]
        return removed / max(before[-1:] + during)


CONTEXT = 30.0
"""Seconds before a false notification whose faults its finding lists."""


def context(records: Sequence[Record], arrived: float) -> str:
    """When a notification arrived in the schedule's time, and the faults of the CONTEXT
    seconds before it: what to look at first."""
    start = min((r.sent - r.step.at for r in records), default=arrived)
    faults = [
        f"{r.step.kind} {r.step.params} {r.sent - start:.1f}-{(r.ended or r.done) - start:.1f} s"
        for r in records
        if not r.step.change and r.sent <= arrived and (r.ended or r.done) >= arrived - CONTEXT
    ]
    return f"arrived at {arrived - start:.1f} s; faults before: {'; '.join(faults) or 'none'}"


def reckon(
    records: Sequence[Record],
    notifications: Sequence[Notification],
    names: dict[tuple[str, str], str],
    fleet: int,
    bound: float = BOUND,
) -> Ledger:
    """The ledger of a run that began with ``fleet`` stations: what the simulator changed
    against what the webhook received."""
    changes = Changes.of(records, fleet)
    ledger = Ledger([], [], 0, 0, 0)
    by_station: dict[tuple[str, str], list[Instance]] = defaultdict(list)
    large: list[Instance] = []
    for instance in instances(notifications, names).values():
        alertname, station = instance.alertname, instance.station
        found = len(ledger.findings)
        if alertname in DISAPPEARED:
            _judge(ledger, instance, changes.removed, "removed", changes, by_station)
        elif alertname in ADDED:
            _judge(ledger, instance, changes.added, "added", changes, by_station)
        elif alertname == LARGELY:
            large.append(instance)
            _judge_large(ledger, instance, changes, bound)
        else:
            ledger.findings.append(
                Finding(
                    "false", alertname, station or "-", "no change of the schedule justifies it"
                )
            )
        for index, finding in enumerate(ledger.findings[found:], found):
            where = f"startsAt {instance.starts_at}, {context(records, instance.arrived)}"
            ledger.findings[index] = replace(finding, detail=f"{finding.detail}; {where}")
    for what, when in (("removed", changes.removed), ("added", changes.added)):
        for station, at in when.items():
            _count(ledger, what, station, at, by_station.get((what, station), []), changes, bound)
    _missed_large(ledger, large, changes, bound)
    _repeated_large(ledger, large, changes, bound)
    return ledger


def _judge(
    ledger: Ledger,
    instance: Instance,
    when: dict[str, float],
    what: str,
    changes: Changes,
    by_station: dict[tuple[str, str], list[Instance]],
) -> None:
    """False unless ``instance`` names a station ``what`` (removed or added) before it came."""
    alertname, station = instance.alertname, instance.station
    if station not in when:
        other = " and ".join(changes.what(station)) or "not changed"
        ledger.findings.append(Finding("false", alertname, station, f"never {what} ({other})"))
    elif instance.arrived < when[station]:
        early = when[station] - instance.arrived
        ledger.findings.append(
            Finding("false", alertname, station, f"named {early:.1f} s before it was {what}")
        )
    else:
        by_station[(what, station)].append(instance)


def _count(
    ledger: Ledger,
    what: str,
    station: str,
    at: float,
    named_by: list[Instance],
    changes: Changes,
    bound: float,
) -> None:
    """Missed when a station that lived MIN_LIFETIME is not named within ``bound``; a
    duplicate for each further instance naming it."""
    required = changes.lifetime(station) >= MIN_LIFETIME
    ledger.expected += required
    if not named_by:
        ledger.excused += not required
        if required:
            ledger.findings.append(Finding("missed", what, station, "never named"))
        return
    first, *again = sorted(named_by, key=lambda i: i.arrived)
    ledger.named += 1
    ledger.latencies.append(first.arrived - at)
    if required and first.arrived - at > bound:
        late = f"named {first.arrived - at:.1f} s after"
        ledger.findings.append(Finding("missed", first.alertname, station, late))
    for instance in again:
        ledger.findings.append(
            Finding(
                "duplicate",
                instance.alertname,
                station,
                f"named again {instance.arrived - first.arrived:.1f} s after its first naming "
                f"(startsAt {instance.starts_at}, first {first.starts_at})",
            )
        )


def _judge_large(ledger: Ledger, instance: Instance, changes: Changes, bound: float) -> None:
    """False unless the schedule had removed more than LARGE_SHARE[0] of the fleet: the
    removals of the window and the bound before the arrival, of the largest fleet of the
    window (the reading most in the alert's favour)."""
    at = instance.arrived
    share = changes.removed_share(at, at - WINDOW - bound, at - WINDOW)
    if share <= LARGE_SHARE[0]:
        limit = f"not over {LARGE_SHARE[0]:.0%}"
        detail = f"{share:.0%} of the fleet removed in the window before it, {limit}"
        ledger.findings.append(Finding("false", instance.alertname, "-", detail))


def _missed_large(ledger: Ledger, large: list[Instance], changes: Changes, bound: float) -> None:
    """Missed when the removals passed LARGE_SHARE[1] of the fleet (counted in the reading
    least in the alert's favour) and no notification of it came within ``bound``."""
    for at, _ in changes.removals:
        if changes.removed_share(at, at - WINDOW, at - WINDOW - bound) > LARGE_SHARE[1]:
            if not any(instance.arrived <= at + bound for instance in large):
                detail = (
                    f"over {LARGE_SHARE[1]:.0%} of the fleet removed, no page within {bound:g} s"
                )
                ledger.findings.append(Finding("missed", LARGELY, "-", detail))
            return


def percentile(values: Sequence[float], share: float) -> float:
    """The nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def _repeated_large(ledger: Ledger, large: list[Instance], changes: Changes, bound: float) -> None:
    """A duplicate for each page after the first while the share removed never fell to
    LARGE_SHARE[1] in between (counted in the reading least in the alert's favour): the same
    mass removal paged again."""
    ordered = sorted(large, key=lambda instance: instance.arrived)
    for before, instance in itertools.pairwise(ordered):
        moments = [before.arrived, instance.arrived]
        moments += [at for at, _ in changes.fleet if before.arrived < at < instance.arrived]
        if all(
            changes.removed_share(at, at - WINDOW, at - WINDOW - bound) > LARGE_SHARE[1]
            for at in moments
        ):
            detail = (
                f"paged again {instance.arrived - before.arrived:.1f} s after the page before "
                f"(startsAt {instance.starts_at}, before {before.starts_at}), the share removed "
                f"over {LARGE_SHARE[1]:.0%} all along"
            )
            ledger.findings.append(Finding("duplicate", instance.alertname, "-", detail))
