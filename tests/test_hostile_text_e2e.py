"""Hostile text and a stable duplicate id end to end: one exporter process reads two mandants,
each from its own simulator process; faults on the "hostile" mandant's simulator must not
break any output of the "calm" one (nor its own), and are repaired and counted."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import requests

from exporter.model import MAX_TEXT_LENGTH
from exporter.simulator import CONTROL_LABEL_SUFFIX, LONG_LABEL_LENGTH
from tests.helpers import ExporterProcess, SimulatorProcess, mandants_yaml, samples, wait_until

pytestmark = pytest.mark.e2e

FFFD = "\ufffd"
HOSTILE, CALM = "hostile", "calm"
CALM_STATIONS = 4

Metrics = dict[tuple[str, frozenset], float]


@dataclass
class Stack:
    hostile: SimulatorProcess
    calm: SimulatorProcess
    exporter: ExporterProcess

    def metrics(self) -> Metrics:
        """/metrics, which must answer 200 and parse whatever the API sent."""
        response = self.exporter.get("/metrics")
        assert response.status_code == 200, response.text[:500]
        return samples(response.text)

    def value(self, name: str, mandant: str = HOSTILE, **labels: str) -> float | None:
        return self.metrics().get((name, frozenset({"mandant": mandant, **labels}.items())))

    def issue(self, issue: str) -> float | None:
        return self.value("beenergised_charging_stations_data_issues", issue=issue)

    def labels(self, mandant: str = HOSTILE) -> dict[str, str]:
        """station_id -> label of the mandant's info series."""
        found = {}
        for (name, labels), _ in self.metrics().items():
            labels = dict(labels)
            if name == "beenergised_charging_station_info" and labels["mandant"] == mandant:
                found[labels["station_id"]] = labels["label"]
        return found

    def fault(self, **spec: object) -> None:
        response = requests.post(self.hostile.url + "/_sim/faults", json=spec, timeout=5)
        assert response.status_code == 200, response.text

    def clear(self) -> None:
        requests.delete(self.hostile.url + "/_sim/faults", timeout=5).raise_for_status()

    def assert_all_output_works(self) -> None:
        """Every page answers, and the calm mandant is served as if nothing happened."""
        metrics = self.metrics()
        assert metrics[("beenergised_up", frozenset({("mandant", CALM)}))] == 1
        assert len(self.labels(CALM)) == CALM_STATIONS
        assert set(self.labels(CALM).values()) == {f"Station {n}" for n in range(1, 5)}
        assert self.exporter.get("/").status_code == 200
        changes = self.exporter.get("/changes")
        assert changes.status_code == 200 and "changes" in changes.json()

    def wait_fresh(self) -> None:
        """A successful refresh of the hostile mandant that started after this call."""
        name = "beenergised_last_refresh_success_timestamp_seconds"
        seen = self.value(name) or 0
        wait_until(lambda: (self.value(name) or 0) > seen, what="a fresh successful refresh")
        wait_until(lambda: (self.value(name) or 0) > seen + 1, what="a second fresh refresh")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    hostile = SimulatorProcess("--stations", "5", "--seed", "1")
    calm = SimulatorProcess("--stations", str(CALM_STATIONS), "--seed", "2")
    config = tmp_path_factory.mktemp("hostile") / "config.yml"
    config.write_text(
        "refresh_interval: 1s\n" + mandants_yaml({HOSTILE: hostile.url, CALM: calm.url})
    )
    exporter = ExporterProcess([f"--config.file={config}"], {})
    stack = Stack(hostile, calm, exporter)
    try:
        wait_until(
            lambda: stack.value("beenergised_up") == 1 and stack.value("beenergised_up", CALM),
            what="both mandants up",
        )
        yield stack
    finally:
        exporter.stop()
        hostile.stop()
        calm.stop()


def cut(text: str) -> str:
    return text[: MAX_TEXT_LENGTH - 1] + "…"


@dataclass(frozen=True)
class BadLabel:
    kind: str
    issue: str
    repaired: Callable[[str], str]  # the label the exporter shows, from the label as it was

    def __str__(self) -> str:
        return self.kind


BAD_LABELS = [
    BadLabel("surrogate_label", "invalid_text", lambda label: label + FFFD),
    BadLabel("non_utf8_label", "invalid_text", lambda label: f"{label} M{FFFD}nchen {FFFD}"),
    BadLabel(
        "control_label",
        "invalid_text",
        lambda label: label + CONTROL_LABEL_SUFFIX.replace("\r", FFFD).replace("\x1b", FFFD),
    ),
    BadLabel(
        "long_label", "text_too_long", lambda label: cut(f"{label} {'x' * LONG_LABEL_LENGTH}")
    ),
]


@pytest.mark.parametrize("case", BAD_LABELS, ids=str)
def test_a_bad_label_is_repaired_counted_and_breaks_no_output(stack: Stack, case: BadLabel):
    stack.assert_all_output_works()
    assert stack.issue(case.issue) == 0
    before = stack.labels()
    lines_before = len(stack.exporter.lines)

    stack.fault(kind=case.kind)
    try:
        wait_until(lambda: stack.issue(case.issue) == 1, what=f"one station with {case.issue}")
        during = stack.labels()
        changed = {sid for sid in before if during[sid] != before[sid]}
        assert len(changed) == 1  # the last row of the one page
        [sid] = changed
        assert during[sid] == case.repaired(before[sid])
        stack.assert_all_output_works()

        # A station added now is the page's last row: its bad label reaches the station changes.
        [added] = stack.hostile.change(add=1)["added"]
        wait_until(lambda: added in stack.labels(), what="the added station on /metrics")
        label = stack.labels()[added]
        assert label == case.repaired(f"Station {len(before) + 1}")  # labels count up
        assert stack.issue(case.issue) == 1  # the earlier last row is whole again
        stack.assert_all_output_works()
        entry = stack.exporter.get("/changes", params={"mandant": HOSTILE, "limit": 1}).json()
        assert entry["changes"][0]["station_id"] == added
        assert entry["changes"][0]["label"] == label
    finally:
        stack.clear()
    wait_until(lambda: stack.issue(case.issue) == 0, what="the repaired label gone")
    assert set(stack.labels().values()) == {f"Station {n}" for n in range(1, len(before) + 2)}
    stack.assert_all_output_works()

    new_lines = stack.exporter.lines[lines_before:]
    added_lines = [line for line in new_lines if "station added" in line and added in line]
    assert len(added_lines) == 1
    # Every line is one whole log record: no CR forged a line, no ESC reached the terminal.
    assert all(line.startswith("ts=") for line in new_lines), new_lines
    assert not any("\x1b" in line or "\r" in line for line in new_lines)
    if case.kind == "control_label":
        assert "[2Klevel=error msg=forged" in added_lines[0]


def test_a_station_the_api_lists_twice_is_published_once_and_counted(stack: Stack):
    stack.assert_all_output_works()
    assert stack.issue("duplicate_station_id") == 0
    stations = stack.hostile.state()["stations"]
    failures = stack.value("beenergised_refresh_failures_total", reason="pagination")
    lines_before = len(stack.exporter.lines)

    stack.fault(kind="duplicate_station")
    try:
        wait_until(lambda: stack.issue("duplicate_station_id") == 1, what="the duplicate counted")
        stack.wait_fresh()  # it stays published, refresh after refresh
        assert stack.value("beenergised_up") == 1
        assert stack.value("beenergised_charging_stations") == stations
        assert len(stack.labels()) == stations  # one info series per id
        assert stack.value("beenergised_refresh_failures_total", reason="pagination") == failures
        stack.assert_all_output_works()
    finally:
        stack.clear()
    wait_until(lambda: stack.issue("duplicate_station_id") == 0, what="the duplicate gone")
    assert stack.value("beenergised_charging_stations") == stations
    new_lines = stack.exporter.lines[lines_before:]
    assert any("the API's data" in line for line in new_lines)
    assert not any("failed (" in line for line in new_lines)
