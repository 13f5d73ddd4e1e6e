"""The chaos soak's schedule: real fleet changes and faults, seeded, in order of time
(tests/chaos_soak.py runs it, tests/soak_ledger.py judges what it brought).

Two tracks run at once. Changes (stations removed and added, firmware rolled out, labels
renamed) each come at a random moment of their slot. Faults take turns in a shuffled order,
each switched on at the start of its slot and cleared within it, so changes keep landing
while a fault is on.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

FLEET_BAND = (0.8, 1.25)
"""The fleet stays within these shares of its size at the start: never empty."""
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
