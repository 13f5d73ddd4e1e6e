"""The chaos soak: a seeded schedule of real fleet changes and faults run against the real
alerting stack (tests/alertstack.py), and a ledger that compares what the simulator changed
with what the webhook received.

    python -m tests.chaos_soak --seed 7 --changes 200 --faults 200 --seconds 780

The schedule runs two tracks at once. Changes (stations removed and added, firmware rolled
out, labels renamed) come at an even pace. Faults take turns, each switched on at the start
of its slot and cleared within it, so changes keep landing while a fault is on. Every step is
recorded with its monotonic and wall time, and the ids the simulator changed. The ledger
then counts:

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
(``--rules`` with them) name the stations in annotations.description; the ledger reads those
names too, so the same soak shows what they missed.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import requests

from tests.alertstack import MANDANT, RULES, Notification, Stack
from tests.helpers import samples, wait_until

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
FLEET_BAND = (0.8, 1.25)
"""The fleet stays within these shares of its size at the start: never empty."""
QUIET = 10.0
"""Seconds the ledger keeps listening once every expected name has arrived, for late false
or duplicate notifications (five group intervals)."""
SIZES = {"remove": 20, "add": 20, "rollout": 10, "rename": 10}
"""Stations a change touches: 1 to this many, the smaller more often (weights 1/n: a mean of
5.6 of 20, 3.4 of 10)."""
CHANGE_WEIGHTS = {"remove": 3, "add": 3, "rollout": 2, "rename": 2}
FIRMWARE_TARGETS = ("2.5.0", "3.0.0", "3.1.0")
CLOCK_STEPS = (-3600, -300, -30, 30, 300, 3600)
"""Seconds a replica's wall clock steps, back or forward; it steps back to true time within
its fault slot (seconds), long before BeenergisedDataStale's `for: 5m`."""
SLOT_SHARE = (0.4, 0.85)
"""A fault stays on for this share of its slot; the rest of the slot is free of faults."""
OVERSIZED = 9_000_000
"""Bytes of an oversized page: past the exporter's 8 MiB cap."""
REPLICAS = 2
TOOLS = ("prometheus", "prometheus-alertmanager", "faketime")

DISAPPEARED = {"BeenergisedStationDisappeared", "BeenergisedStationsDisappeared"}
ADDED = {"BeenergisedStationAdded", "BeenergisedStationsAdded"}
LARGELY = "BeenergisedFleetLargelyDisappeared"
"""The alerts that name removed and added stations: one a station (station_id label), and
the per-mandant ones of the earlier rules (names in the description)."""

SIMULATOR_FAULTS: dict[str, Callable[[random.Random], list[dict[str, Any]]]] = {
    "status_500": lambda rng: [{"kind": "status", "status": 500}],
    "status_503": lambda rng: [{"kind": "status", "status": 503}],
    "status_429": lambda rng: [
        {"kind": "status", "status": 429, "retry_after": rng.choice(["1", "2"])}
    ],
    "hang": lambda rng: [{"kind": "hang"}],
    "drip": lambda rng: [{"kind": "drip", **rng.choice([{}, {"part": "headers"}])}],
    "html": lambda rng: [{"kind": "html", **rng.choice([{}, {"status": 502}])}],
    "truncated": lambda rng: [{"kind": "truncated"}],
    "skip_row": lambda rng: [{"kind": "skip_row", **rng.choice([{}, {"after": 1, "times": 1}])}],
    "duplicate_rows": lambda rng: [{"kind": "duplicate_rows"}],
    "revoke_token": lambda rng: [{"kind": "revoke_token"}],
    "status_401": lambda rng: [{"kind": "status", "status": 401}],
    "token_down_expire": lambda rng: [
        {"kind": "status", "status": 503, "endpoint": "token"},
        {"kind": "expire_token"},
    ],
    "oversized": lambda rng: [{"kind": "oversized", "size": OVERSIZED}],
}
"""The faults of the simulator, each a list of /_sim/faults specs switched on together and
cleared together; a hang or a drip ends when it is cleared."""
PROCESS_FAULTS = ("kill_one", "restart_both", "sighup", "clock_step")
"""Faults of the replicas: SIGKILL one and start it again at the end of the fault; SIGTERM
both and start both; SIGHUP one; step one's wall clock and step it back at the end."""
FAULT_KINDS = (*SIMULATOR_FAULTS, *PROCESS_FAULTS)


@dataclass(frozen=True)
class Step:
    """One step of the schedule: a change or a fault, ``at`` seconds after the start; a fault
    is cleared ``hold`` seconds later."""

    at: float
    kind: str
    params: dict[str, Any]
    hold: float = 0.0

    @property
    def change(self) -> bool:
        return self.kind in CHANGE_WEIGHTS


def _size(rng: random.Random, kind: str) -> int:
    sizes = range(1, SIZES[kind] + 1)
    return rng.choices(sizes, [1 / n for n in sizes])[0]


def schedule(
    seed: int,
    changes: int,
    faults: int,
    seconds: float,
    fleet: int,
    fault_kinds: Sequence[str] = FAULT_KINDS,
) -> list[Step]:
    """The seeded schedule, in order of time. Each change comes at a random moment of its slot
    of ``seconds / changes``; each fault starts its slot of ``seconds / faults`` and the kinds
    take turns in a shuffled order, so every kind comes as often as the others."""
    rng = random.Random(seed)
    steps = _changes(rng, changes, seconds, fleet) + _faults(rng, faults, seconds, fault_kinds)
    return sorted(steps, key=lambda step: step.at)


def _changes(rng: random.Random, count: int, seconds: float, size: int) -> list[Step]:
    low, high = (share * size for share in FLEET_BAND)
    fleet = size
    steps = []
    for index in range(count):
        at = (index + rng.random()) * seconds / max(count, 1)
        kind = rng.choices(list(CHANGE_WEIGHTS), list(CHANGE_WEIGHTS.values()))[0]
        n = _size(rng, kind)
        if kind == "remove" and fleet - n < low:
            kind = "add"
        elif kind == "add" and fleet + n > high:
            kind = "remove"
        if kind == "remove":
            fleet -= n
            params: dict[str, Any] = {"remove": n}
        elif kind == "add":
            fleet += n
            params = {"add": n}
        elif kind == "rollout":
            params = {"rollout": {"to": rng.choice(FIRMWARE_TARGETS), "count": n}}
        else:
            params = {"rename": n}
        steps.append(Step(at, kind, params))
    return steps


def _faults(rng: random.Random, count: int, seconds: float, kinds: Sequence[str]) -> list[Step]:
    slot = seconds / max(count, 1)
    order: list[str] = []
    steps = []
    for index in range(count):
        if not order:
            order = rng.sample(list(kinds), len(kinds))
        kind = order.pop()
        hold = 0.0 if kind in ("restart_both", "sighup") else rng.uniform(*SLOT_SHARE) * slot
        if kind in SIMULATOR_FAULTS:
            params: dict[str, Any] = {"faults": SIMULATOR_FAULTS[kind](rng)}
        elif kind == "clock_step":
            params = {"replica": rng.randrange(REPLICAS), "offset": rng.choice(CLOCK_STEPS)}
        elif kind == "restart_both":
            params = {}
        else:
            params = {"replica": rng.randrange(REPLICAS)}
        steps.append(Step(index * slot, kind, params, hold))
    return steps


@dataclass
class Record:
    """A step as it ran: when (monotonic: ``sent`` before it began, ``done`` when it had
    taken effect; ``wall``), when its fault was cleared, and the ids the simulator changed."""

    step: Step
    sent: float
    done: float
    wall: float
    ended: float | None = None
    changed: dict[str, list[str]] = field(default_factory=dict)


class Driver:
    """Runs a schedule against a stack, pacing the steps by the monotonic clock."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.records: list[Record] = []

    def run(self, steps: Sequence[Step], log: Callable[[str], None] = print) -> None:
        start = time.monotonic()
        events = [(step.at, 0, index) for index, step in enumerate(steps)]
        events += [(step.at + step.hold, 1, index) for index, step in enumerate(steps)]
        records: dict[int, Record] = {}
        for at, phase, index in sorted(events):
            step = steps[index]
            if step.change and phase == 1:
                continue
            delay = start + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # pacing the workload, not waiting for a result
            if phase == 0:
                records[index] = self._begin(step)
                self.records.append(records[index])
                if len(self.records) % 50 == 0:
                    health = rule_health(self.stack)
                    log(f"  {len(self.records)} of {len(steps)} steps, {at:.0f} s; {health}")
            else:
                self._end(step)
                records[index].ended = time.monotonic()

    def _begin(self, step: Step) -> Record:
        sent, wall = time.monotonic(), time.time()
        changed: dict[str, list[str]] = {}
        params, replicas = step.params, self.stack.replicas
        if step.change:
            changed = self._post("/_sim/inventory", params)
        elif "faults" in params:
            for spec in params["faults"]:
                self._post("/_sim/faults", spec)
        elif step.kind == "kill_one":
            replicas[params["replica"]].kill()
        elif step.kind == "restart_both":
            for replica in replicas:
                replica.signal(signal.SIGTERM)
            for replica in replicas:
                replica.stop()
            for replica in replicas:
                replica.start()
        elif step.kind == "sighup":
            replicas[params["replica"]].signal(signal.SIGHUP)
        elif step.kind == "clock_step":
            clock = replicas[params["replica"]].clock
            assert clock is not None, "a clock step needs a stack with clocks"
            clock.set(params["offset"])
        else:
            raise ValueError(f"unknown step kind {step.kind!r}")
        return Record(step, sent, time.monotonic(), wall, changed=changed)

    def _end(self, step: Step) -> None:
        params, replicas = step.params, self.stack.replicas
        if "faults" in params:
            response = requests.delete(self._url("/_sim/faults"), timeout=10)
            response.raise_for_status()
        elif step.kind == "kill_one":
            replicas[params["replica"]].start()
        elif step.kind == "clock_step":
            clock = replicas[params["replica"]].clock
            assert clock is not None
            clock.set(0)

    def _url(self, path: str) -> str:
        assert self.stack.simulator is not None
        return self.stack.simulator.url + path

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = requests.post(self._url(path), json=body, timeout=10)
        assert response.status_code == 200, f"POST {path} {body}: {response.text}"
        answer: dict[str, Any] = response.json()
        return answer


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
    first arrival that lists it. An alert that names no station is one instance of the
    station "" (its labels told apart by startsAt and the other labels)."""
    found: dict[tuple[str, str, str], Instance] = {}
    for notification in sorted(notifications, key=lambda n: n.monotonic):
        for alert in notification.body.get("alerts", []):
            if alert.get("status") != "firing":
                continue
            alertname = alert["labels"].get("alertname", "")
            stations = named_stations(alert, names)
            if not stations:
                others = sorted(alert["labels"].items())
                stations = ["" if alertname in DISAPPEARED | ADDED else str(others)]
            for station in stations:
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


def station_names(stack: Stack) -> dict[tuple[str, str], str]:
    """(label, charge box identity) -> station id of every station Prometheus has seen in the
    run, old labels of renamed stations included: how the earlier rules' names map back."""
    rows = stack.query(
        "group by (station_id, label, charge_box_identity) (last_over_time("
        f'beenergised_charging_station_info{{mandant="{MANDANT}"}}[2h]))'
    )
    return {
        (row["metric"].get("label", ""), row["metric"].get("charge_box_identity", "")): row[
            "metric"
        ]["station_id"]
        for row in rows
    }


def percentile(values: Sequence[float], share: float) -> float:
    """The nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


@dataclass
class Soak:
    """One run's settings; ``replay`` is the command that runs it again."""

    seed: int
    changes: int = 200
    faults: int = 200
    seconds: float = 780.0
    stations: int = 300
    rules: Path = RULES
    fault_kinds: Sequence[str] = FAULT_KINDS
    evaluation_interval: float = 1.0

    @property
    def replay(self) -> str:
        command = (
            f"python -m tests.chaos_soak --seed {self.seed} --changes {self.changes} "
            f"--faults {self.faults} --seconds {self.seconds:g} --stations {self.stations}"
        )
        if self.rules != RULES:
            command += f" --rules {self.rules}"
        if self.evaluation_interval != 1.0:
            command += f" --evaluation-interval {self.evaluation_interval:g}"
        if tuple(self.fault_kinds) != FAULT_KINDS:
            command += f" --fault-kinds {','.join(self.fault_kinds)}"
        return command


@dataclass
class Result:
    soak: Soak
    steps: list[Step]
    records: list[Record]
    notifications: list[Notification]
    ledger: Ledger
    health: str
    seconds: float
    logs: list[str]

    def report(self) -> str:
        ledger, soak = self.ledger, self.soak
        changes = Counter(r.step.kind for r in self.records if r.step.change)
        faults = Counter(r.step.kind for r in self.records if not r.step.change)
        touched = Counter()
        for record in self.records:
            for key, ids in record.changed.items():
                touched[key] += len(ids)
        alerts = Counter(n.alertname for n in self.notifications)
        lat = ledger.latencies
        lines = [
            f"chaos soak: seed {soak.seed}, rules {soak.rules}, {soak.stations} stations, "
            f"{REPLICAS} replicas",
            f"changes: {sum(changes.values())} ({_counts(changes)})",
            f"faults: {sum(faults.values())} ({_counts(faults)})",
            f"stations changed: {_counts(touched)}",
            f"named: {ledger.named} stations ({ledger.expected} required; {ledger.excused} "
            f"lived under {MIN_LIFETIME:g} s and went unnamed)",
            f"latency change -> first notification naming it: p50 {percentile(lat, 0.5):.1f} s, "
            f"p95 {percentile(lat, 0.95):.1f} s, max {max(lat, default=0):.1f} s "
            f"(bound {BOUND:g} s)",
            f"notifications: {len(self.notifications)} ({_counts(alerts)})",
            f"Prometheus: {self.health}",
            f"missed {ledger.count('missed')}, false {ledger.count('false')}, "
            f"duplicate {ledger.count('duplicate')}",
            f"wall time {self.seconds:.0f} s",
        ]
        if not ledger.clean:
            lines += [str(finding) for finding in ledger.findings[:50]]
            if len(ledger.findings) > 50:
                lines.append(f"... and {len(ledger.findings) - 50} more")
            lines.append(f"FAILED, seed {soak.seed}; replay: {soak.replay}")
        return "\n".join(lines)


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{key} {count}" for key, count in sorted(counter.items()))


def rule_health(stack: Stack) -> str:
    """How Prometheus kept up with the rules: the fleet group's last evaluation time, the
    evaluations it skipped for lack of time, failed evaluations, and its CPU time."""
    metrics = samples(requests.get(stack.prometheus.url + "/metrics", timeout=10).text)
    group = f"{stack.rules};beenergised-fleet"

    def total(name: str, **labels: str) -> float:
        return sum(v for (n, ls), v in metrics.items() if n == name and set(labels.items()) <= ls)

    duration = total("prometheus_rule_group_last_duration_seconds", rule_group=group)
    return (
        f"fleet rules evaluated in {duration:.2f} s, "
        f"{total('prometheus_rule_group_iterations_missed_total'):.0f} evaluations skipped, "
        f"{total('prometheus_rule_evaluation_failures_total'):.0f} failed; "
        f"CPU {total('process_cpu_seconds_total'):.0f} s"
    )


def warm_up(stack: Stack, timeout: float = 60.0) -> None:
    """Until Prometheus has scraped both replicas' fleet three times (bounded)."""
    query = f'count_over_time(beenergised_up{{mandant="{MANDANT}"}}[1m]) >= 3'
    wait_until(lambda: len(stack.query(query)) == REPLICAS, timeout, "both replicas scraped")


def settle(stack: Stack, driver: Driver, last_change: float, fleet: int) -> None:
    """Until every required name has arrived (at most BOUND after the last change), then
    QUIET seconds more for anything late."""
    while time.monotonic() < last_change + BOUND:
        notifications = list(stack.webhook.received)
        ledger = reckon(driver.records, notifications, station_names(stack), fleet)
        if ledger.count("missed") == 0:
            break
        time.sleep(1.0)
    time.sleep(QUIET)  # the window for late notifications: an observation, not a wait


def run(soak: Soak, tmp: Path, log: Callable[[str], None] = print) -> Result:
    """Start the stack, run the schedule, settle, reckon; stop the stack."""
    began = time.monotonic()
    steps = schedule(
        soak.seed, soak.changes, soak.faults, soak.seconds, soak.stations, soak.fault_kinds
    )
    log(f"chaos soak: seed {soak.seed}, {len(steps)} steps over {soak.seconds:g} s")
    stack = Stack(
        tmp,
        stations=soak.stations,
        seed=soak.seed,
        rules=soak.rules,
        clocks=True,
        evaluation_interval=f"{soak.evaluation_interval:g}s",
    )
    try:
        warm_up(stack)
        driver = Driver(stack)
        driver.run(steps, log)
        last_change = max((r.sent for r in driver.records if r.step.change), default=0.0)
        settle(stack, driver, last_change, soak.stations)
        notifications = list(stack.webhook.received)
        ledger = reckon(driver.records, notifications, station_names(stack), soak.stations)
        health = rule_health(stack)
    finally:
        stack.stop()
    took = time.monotonic() - began
    logs = [replica.output for replica in stack.replicas]
    return Result(soak, steps, driver.records, notifications, ledger, health, took, logs)


def keep(result: Result, directory: Path) -> None:
    """The evidence of a run beside its Prometheus and Alertmanager data: every step and
    notification (times in seconds of the schedule) and the replicas' logs."""
    start = min((r.sent - r.step.at for r in result.records), default=0.0)
    evidence = {
        "replay": result.soak.replay,
        "records": [
            {
                **asdict(record),
                "sent": record.sent - start,
                "done": record.done - start,
                "ended": record.ended and record.ended - start,
            }
            for record in result.records
        ],
        "notifications": [
            {"at": n.monotonic - start, "wall": n.wall, "body": n.body}
            for n in result.notifications
        ],
    }
    (directory / "evidence.json").write_text(json.dumps(evidence, indent=1))
    for index, log in enumerate(result.logs):
        (directory / f"replica-{index}.log").write_text(log)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos_soak", description=__doc__)
    parser.add_argument("--seed", type=int, help="default: a new one, printed")
    parser.add_argument("--changes", type=int, default=200)
    parser.add_argument("--faults", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=780.0, help="of schedule")
    parser.add_argument("--stations", type=int, default=300, help="the fleet at the start")
    parser.add_argument("--rules", type=Path, default=RULES, help="Prometheus rule file")
    parser.add_argument(
        "--evaluation-interval", type=float, default=1.0, help="Prometheus', in seconds"
    )
    parser.add_argument(
        "--keep",
        type=Path,
        help="a new directory to keep the run in: Prometheus' and Alertmanager's data, "
        "evidence.json (steps, notifications) and the replicas' logs",
    )
    parser.add_argument(
        "--fault-kinds", default=",".join(FAULT_KINDS), help="comma-separated, of these"
    )
    args = parser.parse_args(argv)
    kinds = tuple(args.fault_kinds.split(","))
    unknown = sorted(set(kinds) - set(FAULT_KINDS))
    if unknown:
        parser.error(f"unknown fault kinds {unknown}; known: {', '.join(FAULT_KINDS)}")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    soak = Soak(
        seed,
        args.changes,
        args.faults,
        args.seconds,
        args.stations,
        args.rules.resolve(),
        kinds,
        args.evaluation_interval,
    )
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        print(
            f"the chaos soak needs {', '.join(missing)} (Debian packages prometheus, "
            "prometheus-alertmanager, faketime)",
            file=sys.stderr,
        )
        return 2
    # SIGTERM ends the run like Ctrl-C: the stack's processes are stopped, none left behind.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if args.keep:
        args.keep.mkdir(parents=True)
        result = run(soak, args.keep)
        keep(result, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="chaos-soak-") as tmp:
            result = run(soak, Path(tmp))
    print(result.report())
    return 0 if result.ledger.clean else 1


if __name__ == "__main__":
    sys.exit(main())
