"""The chaos soak: the seeded schedule of real fleet changes and faults
(tests/soak_schedule.py) run against the real alerting stack (tests/alertstack.py), and the
ledger (tests/soak_ledger.py) of what the webhook received: missed, false and duplicate
names, the latency from a change to the notification naming it. `make soak` runs it.

    python -m tests.chaos_soak --seed 7 --changes 200 --faults 200 --seconds 780
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import requests

from tests.alertstack import MANDANT, RULES, Notification, Stack
from tests.helpers import samples, wait_until
from tests.soak_ledger import BOUND, MIN_LIFETIME, Ledger, percentile, reckon
from tests.soak_schedule import FAULT_KINDS, REPLICAS, Record, Step, schedule

QUIET = 10.0
"""Seconds the ledger keeps listening once every expected name has arrived, for late false
or duplicate notifications (five group intervals)."""
TOOLS = ("prometheus", "prometheus-alertmanager", "faketime")


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
        if step.change:
            changed = self._post("/_sim/inventory", step.params)
        elif "faults" in step.params:
            for spec in step.params["faults"]:
                self._post("/_sim/faults", spec)
        else:
            self._act_on_replicas(step)
        return Record(step, sent, time.monotonic(), wall, changed=changed)

    def _act_on_replicas(self, step: Step) -> None:
        params, replicas = step.params, self.stack.replicas
        if step.kind == "kill_one":
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
    names: dict[tuple[str, str], str]
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
        names = station_names(stack)
        ledger = reckon(driver.records, notifications, names, soak.stations)
        health = rule_health(stack)
    finally:
        stack.stop()
    took = time.monotonic() - began
    logs = [replica.output for replica in stack.replicas]
    return Result(soak, steps, driver.records, notifications, names, ledger, health, took, logs)


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
        "names": [[*name, station] for name, station in result.names.items()],
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
