"""Tests of the chaos soak's schedule (tests/soak_schedule.py): seeded, paced, every fault kind
in turn, the fleet within its band."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from tests.soak_schedule import FAULT_KINDS, FLEET_BAND, SIZES, schedule


def test_the_schedule_is_seeded() -> None:
    assert schedule(5, 20, 20, 60, 300) == schedule(5, 20, 20, 60, 300)
    assert schedule(5, 20, 20, 60, 300) != schedule(6, 20, 20, 60, 300)


def test_changes_are_paced_and_faults_take_turns_without_overlapping() -> None:
    steps = schedule(1, 200, 200, 780, 2000)
    changes = [step for step in steps if step.change]
    faults = [step for step in steps if not step.change]
    assert len(changes) == len(faults) == 200
    assert [step.at for step in steps] == sorted(step.at for step in steps)
    assert all(0 <= step.at < 780 for step in steps)
    per_kind = Counter(step.kind for step in faults)
    assert set(per_kind) == set(FAULT_KINDS)
    assert max(per_kind.values()) - min(per_kind.values()) <= 1
    for fault, following in itertools.pairwise(faults):
        assert fault.at + fault.hold < following.at
    assert all(step.hold < 60 for step in faults if step.kind == "clock_step")
    during = [c for c in changes if any(f.at <= c.at < f.at + f.hold for f in faults)]
    assert len(during) > 50  # changes land while faults are on


def test_the_fault_kinds_can_be_chosen() -> None:
    steps = schedule(2, 3, 4, 10, 300, fault_kinds=("sighup", "kill_one"))
    assert Counter(step.kind for step in steps if not step.change) == {"sighup": 2, "kill_one": 2}


@pytest.mark.parametrize("seed", range(5))
def test_the_fleet_stays_within_its_band_and_changes_touch_1_to_20_stations(seed: int) -> None:
    fleet = start = 300
    sizes: dict[str, set[int]] = {kind: set() for kind in SIZES}
    for step in schedule(seed, 200, 200, 780, start):
        if not step.change:
            continue
        params = step.params
        count = params.get("remove") or params.get("add") or params.get("rename")
        sizes[step.kind].add(count or params["rollout"]["count"])
        fleet += params.get("add", 0) - params.get("remove", 0)
        assert FLEET_BAND[0] * start <= fleet <= FLEET_BAND[1] * start
    for kind, largest in SIZES.items():
        assert min(sizes[kind]) == 1 and max(sizes[kind]) <= largest
