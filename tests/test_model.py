from exporter.model import UNKNOWN_FIRMWARE, Snapshot, Station, diff


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


def test_diff_reports_added_removed_and_firmware_changes():
    old = Snapshot.build([station("a", "1.0"), station("b", "1.0"), station("c", "1.0")], 0.0)
    new = Snapshot.build([station("b", "2.0"), station("c", "1.0"), station("d", "1.0")], 1.0)
    change = diff(old, new)
    assert change.added == ("d",)
    assert change.removed == ("a",)
    assert change.firmware_changed == ("b",)


def test_diff_of_identical_snapshots_is_empty():
    old = Snapshot.build([station("a")], 0.0)
    change = diff(old, Snapshot.build([station("a")], 1.0))
    assert (change.added, change.removed, change.firmware_changed) == ((), (), ())
