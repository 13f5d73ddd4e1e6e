"""The shipped alerts through a real Prometheus and a real Alertmanager to a webhook.

Two exporter replicas read the same simulated mandant; a real Prometheus (Debian package
`prometheus`) scrapes both with the project's rules unchanged (prometheus/alerts.yml) and
sends to a real Alertmanager (package `prometheus-alertmanager`) running the example routing
deploy/alertmanager/alertmanager.yml, with its webhook pointed at a receiver in this test and
group_wait/group_interval shortened to seconds. An API outage must deliver no fleet-change
notification; removing 3 stations must deliver exactly one notification for the mandant,
naming exactly those 3 stations.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.alertstack import EXAMPLE, MANDANT, Stack
from tests.helpers import require_tool, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("alertmanager"))
    try:
        wait_until(
            lambda: len(stack.query("count_over_time(beenergised_up[1m]) >= 5")) == 2,
            timeout=60,
            what="five scrapes of both replicas in Prometheus",
        )
        yield stack
    finally:
        stack.stop()


def watch(seconds: float) -> None:
    """Let Prometheus evaluate and Alertmanager group for a bounded while (both tick at 1-2 s)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.5)


def test_an_api_outage_delivers_no_fleet_notification(stack):
    fault = {"kind": "status", "status": 503}
    requests.post(stack.simulator.url + "/_sim/faults", json=fault, timeout=5).raise_for_status()
    try:
        wait_until(lambda: stack.up_replicas() == 0, timeout=30, what="both replicas to fail")
        watch(5)
    finally:
        requests.delete(stack.simulator.url + "/_sim/faults", timeout=5).raise_for_status()
    wait_until(lambda: stack.up_replicas() == 2, timeout=30, what="both replicas to recover")
    watch(5)  # longer than group_wait: a notification would have arrived
    assert stack.webhook.fleet() == []


def station_labels(stack: Stack) -> dict[str, dict[str, str]]:
    """The label and charge box identity of every station, by station id, as Prometheus has
    them."""
    rows = stack.query(f'beenergised_charging_station_info{{mandant="{MANDANT}"}}')
    return {
        row["metric"]["station_id"]: {
            "label": row["metric"]["label"],
            "charge_box_identity": row["metric"]["charge_box_identity"],
        }
        for row in rows
    }


def stations_named(notification: dict) -> dict[str, str]:
    """startsAt of each station alert in the notification, by station id."""
    return {alert["labels"]["station_id"]: alert["startsAt"] for alert in notification["alerts"]}


def test_each_batch_of_removed_stations_is_notified_naming_them(stack, tmp_path):
    """3 stations go, then 2 more while the first 3 still fire: the second batch is a
    notification of its own (the old alerts per mandant waited for the repeat interval)."""
    labels = station_labels(stack)
    first = stack.simulator.change(remove=3)["removed"]
    assert len(first) == 3 and set(first) <= set(labels)
    (notification,) = wait_until(
        stack.webhook.fleet, timeout=30, what="the notification of the disappeared stations"
    )
    watch(6)  # three group intervals: no second notification, none from the other replica
    assert stack.webhook.fleet() == [notification]

    assert notification["groupLabels"] == {
        "alertname": "BeenergisedStationDisappeared",
        "mandant": MANDANT,
    }
    assert sorted(stations_named(notification)) == sorted(first)
    for alert in notification["alerts"]:
        assert alert["status"] == "firing"
        assert "instance" not in alert["labels"]
        station = alert["labels"]["station_id"]
        assert {k: alert["labels"][k] for k in ("label", "charge_box_identity")} == labels[station]
        assert station in alert["annotations"]["description"]
    print(json.dumps(notification, indent=2))  # the example in docs/runbooks.md

    text = render(notification, tmp_path)
    print(text)
    assert text.startswith(f"[FIRING:3] BeenergisedStationDisappeared · mandant {MANDANT}\n")
    for station in first:
        assert f"{labels[station]['label']} (charge box identity" in text
    assert f"Dashboard: http://localhost:3000/d/beenergised-fleet?var-mandant={MANDANT}\n" in text

    second = stack.simulator.change(remove=2)["removed"]
    assert len(second) == 2

    def removals() -> list[dict]:
        # 5 of 20 gone may also page BeenergisedFleetLargelyDisappeared: a group of its own
        return [
            n
            for n in stack.webhook.fleet()
            if n["groupLabels"]["alertname"] == "BeenergisedStationDisappeared"
        ]

    wait_until(lambda: len(removals()) == 2, timeout=30, what="the second batch's notification")
    later = removals()[1]
    named = stations_named(later)
    # The group lists every alert that fires: the new two, and the first three with the time
    # their alerts began, unchanged (the same alerts, not new ones).
    assert sorted(named) == sorted(first + second)
    assert {s: named[s] for s in first} == stations_named(notification)
    assert min(named[s] for s in second) > max(named[s] for s in first)


def render(notification: dict, tmp: Path) -> str:
    """The notification through the example template, as an email or chat message shows it."""
    data = tmp / "notification.json"
    data.write_text(json.dumps(notification))
    result = subprocess.run(
        [
            require_tool("amtool"),
            "template",
            "render",
            f"--template.glob={EXAMPLE / 'notification.tmpl'}",
            f"--template.data={data}",
            "--template.text="
            '{{ template "beenergised.title" . }}\n{{ template "beenergised.text" . }}',
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout
