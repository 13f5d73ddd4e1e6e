"""The chaos soak's short tier: a seeded slice of `make soak` (tests/chaos_soak.py), in under a
minute with the stack's start. Ten real changes and ten faults of ten kinds, a restart of one
replica, of both and a SIGHUP among them, through two exporter replicas, the real Prometheus
with the project's rules and the real Alertmanager to a webhook: every removed and added
station named once, within the bound, and nothing else notified."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos_soak import TOOLS, Soak, run
from tests.helpers import require_tool

pytestmark = pytest.mark.e2e

SLICE = Soak(
    seed=12,
    changes=10,
    faults=10,
    seconds=20,
    stations=300,
    fault_kinds=(
        "kill_one",
        "restart_both",
        "sighup",
        "clock_step",
        "status_503",
        "status_429",
        "skip_row",
        "duplicate_rows",
        "token_down_expire",
        "oversized",
    ),
)


def test_a_slice_of_the_chaos_soak_names_every_change_once_and_nothing_else(
    tmp_path: Path,
) -> None:
    for tool in TOOLS:
        require_tool(tool)
    result = run(SLICE, tmp_path)
    report = result.report()
    print(report)
    ledger = result.ledger
    assert ledger.expected >= 10, report  # the slice removed and added stations to be named
    counts = {kind: ledger.count(kind) for kind in ("missed", "false", "duplicate")}
    assert counts == {"missed": 0, "false": 0, "duplicate": 0}, report
