"""Tests of the chaos soak's ledger (tests/soak_ledger.py) on made-up records and
notifications: missed, false and duplicate names, latencies, the earlier rules' names."""

from __future__ import annotations

from typing import Any

from tests.alertstack import Notification
from tests.soak_ledger import BOUND, LARGE_SHARE, LARGELY, MIN_LIFETIME, reckon
from tests.soak_schedule import Record, Step

T0 = 1000.0  # the monotonic time of the first change
FLEET = 100  # the fleet at the start


def change(at: float, **changed: list[str]) -> Record:
    kind = "remove" if "removed" in changed else "add" if "added" in changed else "rename"
    return Record(Step(at - T0, kind, {}), at, at + 0.01, at, changed=changed)


def alert(
    alertname: str, starts_at: str = "t1", status: str = "firing", **labels: str
) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": alertname, "mandant": "m", **labels},
        "annotations": {},
        "startsAt": starts_at,
    }


def notification(arrived: float, *alerts: dict[str, Any]) -> Notification:
    name = alerts[0]["labels"]["alertname"]
    body = {"groupLabels": {"alertname": name, "mandant": "m"}, "alerts": list(alerts)}
    return Notification(arrived, arrived, body)


GONE = "BeenergisedStationDisappeared"
NEW = "BeenergisedStationAdded"


def test_every_change_named_once_is_clean_and_its_latency_measured() -> None:
    records = [change(T0, removed=["a", "b"]), change(T0 + 5, added=["c"])]
    notifications = [
        notification(T0 + 8, alert(GONE, station_id="a"), alert(GONE, station_id="b")),
        notification(T0 + 12, alert(NEW, station_id="c")),
        # A later batch lists the earlier one again: that names nothing new.
        notification(T0 + 20, alert(GONE, station_id="a"), alert(GONE, "t2", station_id="x")),
    ]
    records.append(change(T0 + 15, removed=["x"]))
    ledger = reckon(records, notifications, {}, FLEET)
    assert ledger.findings == []
    assert sorted(ledger.latencies) == [5.0, 7.0, 8.0, 8.0]
    assert (ledger.expected, ledger.named, ledger.excused) == (4, 4, 0)


def test_a_station_that_did_not_change_that_way_is_false() -> None:
    records = [change(T0, renamed=["r"]), change(T0 + 1, removed=["a"])]
    notifications = [
        notification(T0 + 3, alert(GONE, station_id="r")),
        notification(T0 + 4, alert(NEW, station_id="a")),
        notification(T0 + 5, alert(GONE, station_id="a")),
    ]
    ledger = reckon(records, notifications, {}, FLEET)
    assert [(f.kind, f.alertname, f.station, f.detail.split("; ")[0]) for f in ledger.findings] == [
        ("false", GONE, "r", "never removed (renamed)"),
        ("false", NEW, "a", "never added (removed)"),
    ]


def test_a_false_name_says_when_it_arrived_and_which_faults_came_before() -> None:
    fault = Step(1.0, "status_503", {"faults": [{"kind": "status", "status": 503}]}, 2.0)
    records = [change(T0, renamed=["r"]), Record(fault, T0 + 1, T0 + 1.01, T0, ended=T0 + 3)]
    ledger = reckon(records, [notification(T0 + 9, alert(GONE, station_id="r"))], {}, FLEET)
    (finding,) = ledger.findings
    assert finding.detail == (
        "never removed (renamed); startsAt t1, arrived at 9.0 s; faults before: status_503 "
        "{'faults': [{'kind': 'status', 'status': 503}]} 1.0-3.0 s"
    )


def test_a_station_named_before_its_change_is_false_and_missed() -> None:
    records = [change(T0 + 10, removed=["a"])]
    ledger = reckon(records, [notification(T0 + 2, alert(GONE, station_id="a"))], {}, FLEET)
    assert [(f.kind, f.detail.split("; ")[0]) for f in ledger.findings] == [
        ("false", "named 8.0 s before it was removed"),
        ("missed", "never named"),
    ]


def test_a_change_named_late_or_never_is_missed_unless_the_station_lived_briefly() -> None:
    records = [
        change(T0, removed=["late", "never"], added=["brief"]),
        change(T0 + MIN_LIFETIME - 1, removed=["brief"]),
    ]
    notifications = [notification(T0 + BOUND + 1, alert(GONE, station_id="late"))]
    ledger = reckon(records, notifications, {}, FLEET)
    assert sorted((f.kind, f.station, f.detail.split("; ")[0]) for f in ledger.findings) == [
        ("missed", "late", f"named {BOUND + 1:.1f} s after"),
        ("missed", "never", "never named"),
    ]
    assert (ledger.expected, ledger.named, ledger.excused) == (2, 1, 2)


def test_one_change_named_by_two_instances_is_a_duplicate() -> None:
    records = [change(T0, removed=["a"])]
    notifications = [
        notification(T0 + 5, alert(GONE, "t1", station_id="a")),
        notification(T0 + 9, alert(GONE, "t1", station_id="a")),
        notification(T0 + 30, alert(GONE, "t2", station_id="a")),
    ]
    ledger = reckon(records, notifications, {}, FLEET)
    assert [(f.kind, f.station) for f in ledger.findings] == [("duplicate", "a")]
    assert "named again 25.0 s after its first naming" in ledger.findings[0].detail


def test_any_other_fleet_alert_is_false_and_resolved_alerts_are_ignored() -> None:
    records = [change(T0, removed=["a"])]
    notifications = [
        notification(T0 + 5, alert(GONE, station_id="a")),
        notification(T0 + 6, alert(GONE, "t0", "resolved", station_id="zz")),
        notification(T0 + 7, alert(LARGELY)),
        notification(T0 + 8, alert("BeenergisedStationsDisappearedUnnamed")),
    ]
    ledger = reckon(records, notifications, {}, FLEET)
    assert [(f.kind, f.alertname) for f in ledger.findings] == [
        ("false", LARGELY),
        ("false", "BeenergisedStationsDisappearedUnnamed"),
    ]


def test_the_earlier_rules_names_are_read_from_the_description() -> None:
    records = [change(T0, removed=["a", "b", "c"])]
    old = alert("BeenergisedStationsDisappeared")
    old["annotations"]["description"] = (
        "3 charging station(s) of mandant m disappeared from the be.ENERGISED CPO API in the "
        "last 15 minutes. Stations: Station 1 r1 (cp_1), Station 2 (cp_2), Other (cp_9) and "
        "1 more."
    )
    names = {("Station 1 r1", "cp_1"): "a", ("Station 1", "cp_1"): "a", ("Station 2", "cp_2"): "b"}
    # The earlier large-share page listed names too: it is one page, paged twice, not names.
    pages = [alert(LARGELY, starts_at) for starts_at in ("t1", "t2")]
    for page in pages:
        page["annotations"]["description"] = old["annotations"]["description"]
    records.append(change(T0 + 1, removed=[f"z{n}" for n in range(30)]))
    stations = notification(T0 + 5, *(alert(GONE, station_id=f"z{n}") for n in range(30)))
    notifications = [notification(T0 + 5, old), stations]
    notifications += [notification(T0 + 6 + n, page) for n, page in enumerate(pages)]
    ledger = reckon(records, notifications, names, FLEET)
    assert sorted((f.kind, f.station, f.detail.split("; ")[0]) for f in ledger.findings) == [
        (
            "duplicate",
            "-",
            "paged again 1.0 s after the page before (startsAt t2, before t1), "
            "the share removed over 30% all along",
        ),
        ("false", "?Other (cp_9)", "never removed (not changed)"),
        ("missed", "c", "never named"),
    ]
    assert ledger.named == 2 + 30


def removal(at: float, count: int, prefix: str) -> Record:
    return change(at, removed=[f"{prefix}{n}" for n in range(count)])


def test_the_large_share_page_is_judged_by_the_share_of_the_fleet_removed() -> None:
    batches = ((T0, 15, "a"), (T0 + 100, 10, "b"), (T0 + 200, 10, "c"))
    records = [removal(*batch) for batch in batches]
    stations = [
        notification(at + 5, *(alert(GONE, station_id=f"{prefix}{n}") for n in range(count)))
        for at, count, prefix in batches
    ]
    early = notification(T0 + 50, alert(LARGELY, "t1"))  # 15% gone: false
    due = notification(T0 + 110, alert(LARGELY, "t2"))  # 25% gone: justified
    assert 0.15 <= LARGE_SHARE[0] < 0.25 < LARGE_SHARE[1] <= 0.35
    ledger = reckon(records, [*stations, early, due], {}, FLEET)
    assert [(f.kind, f.alertname, f.detail.split("; ")[0]) for f in ledger.findings] == [
        ("false", LARGELY, "15% of the fleet removed in the window before it, not over 20%")
    ]
    # 35% gone by T0 + 200 and no page: missed, unless one came within the bound.
    ledger = reckon(records, stations, {}, FLEET)
    assert [(f.kind, f.alertname) for f in ledger.findings] == [("missed", LARGELY)]
    late = notification(T0 + 200 + BOUND + 1, alert(LARGELY))
    assert [f.kind for f in reckon(records, [*stations, late], {}, FLEET).findings] == ["missed"]
    assert reckon(records, [*stations, due], {}, FLEET).findings == []
    # Paged again while over 30% was gone all along: a duplicate. After a page at 25% it may
    # have resolved in between: not counted.
    crossed = notification(T0 + 210, alert(LARGELY, "t3"))
    again = notification(T0 + 300, alert(LARGELY, "t4"))
    ledger = reckon(records, [*stations, crossed, again], {}, FLEET)
    assert [(f.kind, f.alertname) for f in ledger.findings] == [("duplicate", LARGELY)]
    assert "paged again 90.0 s after the page before" in ledger.findings[0].detail
    assert reckon(records, [*stations, due, again], {}, FLEET).findings == []
