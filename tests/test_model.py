from collections import Counter
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.model import (
    DATA_ISSUES,
    FOLDED_FIRMWARE,
    UNKNOWN_FIRMWARE,
    Change,
    FirmwareTarget,
    Snapshot,
    Station,
    data_issues,
    diff,
    repeated,
)


def station(sid: str, firmware: str = "1.0") -> Station:
    return Station(sid, f"Station {sid}", f"cp_{sid}", firmware, f"SN{sid}")


def test_snapshot_counts_per_firmware_with_unknown_for_empty_versions():
    snapshot = Snapshot.build([station("a", "1.0"), station("b", "1.0"), station("c", "")], 0.0)
    assert len(snapshot) == 3
    assert dict(snapshot.by_firmware) == {"1.0": 2, UNKNOWN_FIRMWARE: 1}


def test_snapshot_keeps_the_first_of_duplicate_ids():
    snapshot = Snapshot.build([station("a", "1.0"), station("a", "2.0")], 0.0)
    assert len(snapshot) == 1
    assert snapshot.stations["a"].firmware_version == "1.0"


def test_snapshot_is_read_only():
    snapshot = Snapshot.build([station("a")], 0.0)
    try:
        snapshot.stations["b"] = station("b")  # type: ignore[index]
    except TypeError:
        pass
    else:
        raise AssertionError("snapshot stations must not be writable")
    assert "b" not in snapshot.stations


def test_diff_reports_added_removed_and_firmware_changed_in_that_order():
    old = Snapshot.build([station("a", "1.0"), station("b", "1.0"), station("c", "1.0")], 0.0)
    new = Snapshot.build([station("b", "2.0"), station("c", "1.0"), station("d", "")], 1.0)
    assert diff(old, new) == (
        Change("added", "d", "Station d", "cp_d", "", ""),
        Change("removed", "a", "Station a", "cp_a", "1.0", ""),
        Change("firmware_changed", "b", "Station b", "cp_b", "1.0", "2.0"),
    )


def test_diff_of_identical_snapshots_is_empty():
    old = Snapshot.build([station("a")], 0.0)
    assert diff(old, Snapshot.build([station("a")], 1.0)) == ()


def test_data_issues_count_each_station_with_a_problem():
    stations = [
        Station("a", "A", "cp_1", "1.0", "SN", has_sim_data=False),
        Station("b", "B", "cp_1", "", "SN"),
        Station("c", "C", "cp_1", "1.0", "SN"),
        Station("d", "D", "cp_2", "", "SN", has_sim_data=False),
        Station("e", "E", "", "1.0", "SN"),
        Station("f", "F", "", "1.0", "SN"),  # no identity is not a shared identity
    ]
    assert dict(Snapshot.build(stations, 0.0).data_issues) == {
        "no_firmware_version": 2,
        "no_sim_data": 2,
        "duplicate_charge_box_identity": 3,
        "invalid_text": 0,
        "text_too_long": 0,
        "duplicate_station_id": 0,
        "firmware_version_folded": 0,
    }


def test_repaired_text_and_repeated_ids_are_data_issues():
    repaired = Station("x", "X\ufffd", "", "1.0", "SN", repairs=("invalid_text",))
    both = Station("y", "Y", "", "1.0", "SN", repairs=("invalid_text", "text_too_long"))
    rows = [repaired, both, station("a"), station("a"), station("a"), station("b"), station("b")]
    snapshot = Snapshot.build(rows, 0.0)
    assert list(snapshot.stations) == ["x", "y", "a", "b"]  # each id once
    issues = snapshot.data_issues
    assert (issues["invalid_text"], issues["text_too_long"]) == (2, 1)
    assert issues["duplicate_station_id"] == 2  # "a" and "b", however often each came


def test_a_clean_fleet_has_zero_of_every_issue():
    snapshot = Snapshot.build([station("a"), station("b")], 0.0)
    assert dict(snapshot.data_issues) == dict.fromkeys(DATA_ISSUES, 0)


@pytest.mark.parametrize(
    ("target", "version", "on_target"),
    [
        ("5.2.1", "5.2.1", True),
        ("5.2.1", "5.2.10", False),
        ("5.2.1", "5x2x1", False),
        (r"/5\.2\..*/", "5.2.10", True),
        (r"/5\.2\..*/", "15.2.1", False),  # the whole version must match
        (r"/5\.2\..*/", "5.2", False),
        ("/.*/", "", False),  # no version is never on target
        (" 5.2.1 ", "5.2.1", True),
    ],
)
def test_firmware_target_matches_exactly_or_by_whole_regex(target, version, on_target):
    assert FirmwareTarget.parse(target).matches(version) is on_target


@pytest.mark.parametrize("text", ["", "  ", "/5.(2/"])
def test_firmware_target_rejects_empty_and_broken_patterns(text):
    with pytest.raises(ValueError):
        FirmwareTarget.parse(text)


def test_stations_on_target_counts_per_version():
    fleet = [station("a", "5.2.1"), station("b", "5.2.2"), station("c", "5.1.0"), station("d", "")]
    snapshot = Snapshot.build(fleet, 0.0)
    assert FirmwareTarget.parse(r"/5\.2\..*/").stations_on_target(snapshot) == 2
    assert FirmwareTarget.parse("5.1.0").stations_on_target(snapshot) == 1
    assert FirmwareTarget.parse("unknown").stations_on_target(snapshot) == 0


def test_a_fleet_is_listed_by_exactly_its_own_station_objects_once_each():
    a, b = station("a"), station("b")
    fleet = Snapshot.build([a, b], 0.0)
    assert fleet.listed_by([a, b])
    assert not fleet.listed_by([b, a])  # another order: checked the long way
    assert not fleet.listed_by([a, a])  # as many rows, but b is missing
    assert not fleet.listed_by([a, station("b")])  # equal, not the same object
    assert not fleet.listed_by([a])
    repeated = Snapshot.build([a, b, a], 0.0)  # the API listed a twice
    assert not repeated.listed_by([a, b])  # the issue it counted has gone: a new snapshot


def test_a_station_keeps_its_texts_apart_in_one_string():
    s = Station("x", "Hof Süd", "cp_1", "1.0", "SN1", has_sim_data=False, repairs=("invalid_text",))
    assert (s.label, s.charge_box_identity, s.serial_number) == ("Hof Süd", "cp_1", "SN1")
    assert (s.has_sim_data, s.repairs) == (False, ("invalid_text",))
    assert s.issues == ("no_sim_data", "invalid_text")
    assert s == Station("x", "Hof Süd", "cp_1", "1.0", "SN1", False, ("invalid_text",))
    assert s != Station("x", "Hof Süd", "cp_1", "1.0", "SN2", False, ("invalid_text",))
    # stations with the same issues share one tuple of them
    assert (
        Station("y", "", "", "", "", has_sim_data=False).issues
        is Station("z", "", "", "", "", has_sim_data=False).issues
    )
    with pytest.raises(AttributeError):
        s.id = "y"  # type: ignore[misc]


def test_an_unchanged_fleet_has_no_changes():
    fleet = Snapshot.build([station("a")], 0.0)
    assert diff(fleet, replace(fleet, taken_at=1.0)) == ()


@given(st.lists(st.sampled_from(["", "cp_1", "cp_2", "cp_3", "Ä", "cp_10"]), max_size=40))
def test_stations_sharing_an_identity_are_counted_exactly(identities):
    fleet = [Station(str(i), "", identity, "1.0", "") for i, identity in enumerate(identities)]
    counts = Counter(identity for identity in identities if identity)
    expected = sum(n for n in counts.values() if n > 1)
    assert data_issues(fleet)["duplicate_charge_box_identity"] == expected


def test_identities_that_only_share_a_bit_of_the_bitmap_are_not_counted(monkeypatch):
    monkeypatch.setattr("exporter.model._BITMAP_BITS", 8)  # every hash collides
    fleet = [Station(str(i), "", f"cp_{i % 50}", "1.0", "") for i in range(60)]
    assert data_issues(fleet)["duplicate_charge_box_identity"] == 20  # cp_0 .. cp_9, twice each
    unique = [Station(str(i), "", f"cp_{i}", "1.0", "") for i in range(60)]
    assert data_issues(unique)["duplicate_charge_box_identity"] == 0


@given(st.lists(st.sampled_from(["", "a", "b", "c", "Ä", "a1"]), max_size=40))
def test_repeated_counts_exactly_the_keys_that_come_more_than_once(keys):
    counts = Counter(key for key in keys if key)
    assert repeated(keys, str) == {key: n for key, n in counts.items() if n > 1}


# --- firmware labels beyond the bound (issue 19) ---------------------------------------------


def versions(*counts: tuple[str, int]) -> list[Station]:
    """Stations with the versions and counts given, ids unique."""
    return [station(f"{version}-{i}", version) for version, n in counts for i in range(n)]


def test_a_fleet_within_the_bound_keeps_every_version_and_folds_nothing():
    snapshot = Snapshot.build(versions(("1.0", 3), ("2.0", 1), ("", 2)), 0.0, max_versions=3)
    assert snapshot.firmware.counts is snapshot.by_firmware
    assert (snapshot.firmware.folded, snapshot.data_issues["firmware_version_folded"]) == (0, 0)


def test_versions_beyond_the_bound_fold_into_one_label_and_are_counted():
    fleet = versions(("a", 5), ("b", 4), ("c", 4), ("d", 2), ("e", 1), ("", 3))
    snapshot = Snapshot.build(fleet, 0.0, max_versions=3)
    assert dict(snapshot.firmware.counts) == {"a": 5, "b": 4, "c": 4, FOLDED_FIRMWARE: 6}
    assert sum(snapshot.firmware.counts.values()) == len(snapshot) == 19
    assert snapshot.data_issues["firmware_version_folded"] == snapshot.firmware.folded == 6
    assert snapshot.firmware.folded_versions == 3  # d, e and unknown
    assert dict(snapshot.by_firmware)["d"] == 2  # the exact counts stay


def test_ties_at_the_bound_are_broken_by_name_whatever_the_order_the_api_lists():
    fleet = versions(("z", 2), ("m", 2), ("b", 2), ("k", 2))
    for rows in (fleet, fleet[::-1], fleet[2:] + fleet[:2]):
        assert set(Snapshot.build(rows, 0.0, max_versions=2).firmware.counts) == {
            "b",
            "k",
            FOLDED_FIRMWARE,
        }


def test_the_target_version_keeps_its_series_even_when_it_is_the_rarest():
    fleet = versions(("1.0", 50), ("1.1", 40), ("1.2", 30), ("2.0", 1))
    snapshot = Snapshot.build(fleet, 0.0, 2, FirmwareTarget.parse("2.0"))
    assert dict(snapshot.firmware.counts) == {"2.0": 1, "1.0": 50, FOLDED_FIRMWARE: 70}


def test_versions_on_a_regex_target_come_first_and_the_target_count_stays_exact():
    fleet = versions(("5.2.1", 1), ("5.2.2", 2), ("5.2.3", 3), ("4.0", 100))
    target = FirmwareTarget.parse(r"/5\.2\..*/")
    snapshot = Snapshot.build(fleet, 0.0, 2, target)
    assert dict(snapshot.firmware.counts) == {"5.2.3": 3, "5.2.2": 2, FOLDED_FIRMWARE: 101}
    assert target.stations_on_target(snapshot) == 6  # 5.2.1 is folded, yet on target


def test_a_version_that_is_literally_the_folded_label_is_counted_as_folded():
    snapshot = Snapshot.build(versions(("1.0", 2), (FOLDED_FIRMWARE, 3)), 0.0, max_versions=5)
    assert dict(snapshot.firmware.counts) == {"1.0": 2, FOLDED_FIRMWARE: 3}
    assert snapshot.data_issues["firmware_version_folded"] == 3


@given(
    st.lists(st.sampled_from(["1", "2", "3", "4", "5", "", FOLDED_FIRMWARE]), max_size=60),
    st.integers(min_value=1, max_value=6),
    st.sampled_from([None, "4", "/[12]/"]),
    st.randoms(use_true_random=False),
)
def test_folding_is_exact_bounded_and_independent_of_the_order(labels, bound, target, random):
    fleet = [station(str(i), label) for i, label in enumerate(labels)]
    parsed = FirmwareTarget.parse(target) if target else None
    snapshot = Snapshot.build(fleet, 0.0, bound, parsed)
    counts = dict(snapshot.firmware.counts)
    assert sum(counts.values()) == len(fleet)
    assert len(set(counts) - {FOLDED_FIRMWARE}) <= bound
    assert counts.get(FOLDED_FIRMWARE, 0) == snapshot.data_issues["firmware_version_folded"]
    random.shuffle(fleet)
    assert dict(Snapshot.build(fleet, 0.0, bound, parsed).firmware.counts) == counts
    kept = [n for label, n in counts.items() if label != FOLDED_FIRMWARE]
    folded = [
        n
        for label, n in snapshot.by_firmware.items()
        if label not in counts and not (parsed and parsed.matches_label(label))
    ]
    if folded and not parsed:
        assert min(kept) >= max(folded)  # never a rarer version kept over a more common one


def test_a_snapshot_is_folded_again_only_for_other_settings():
    snapshot = Snapshot.build(versions(("a", 3), ("b", 2), ("c", 1)), 0.0, max_versions=2)
    assert snapshot.folded(2, None) is snapshot
    wider = snapshot.folded(3, None)
    assert dict(wider.firmware.counts) == {"a": 3, "b": 2, "c": 1}
    assert wider.data_issues["firmware_version_folded"] == 0
    assert wider.stations is snapshot.stations
    targeted = snapshot.folded(2, FirmwareTarget.parse("c"))
    assert set(targeted.firmware.counts) == {"c", "a", FOLDED_FIRMWARE}
    assert targeted.data_issues["firmware_version_folded"] == 2
