import json
import logging

from exporter.logs import JsonFormatter, LogfmtFormatter
from exporter.model import Change
from exporter.stationchanges import StationChanges


def change(sid: str, kind: str = "added") -> Change:
    return Change(kind, sid, f"Station {sid}", f"cp_{sid}", "1.0" if kind != "added" else "", "2.0")


def test_entries_are_numbered_and_read_newest_first():
    log = StationChanges(max_entries=10)
    log.record("north", 10.0, [change("a"), change("b", "removed")])
    log.record("south", 20.0, [change("c", "firmware_changed")])
    entries = log.latest()
    assert [(e.id, e.mandant, e.change.station_id) for e in entries] == [
        (3, "south", "c"),
        (2, "north", "b"),
        (1, "north", "a"),
    ]
    assert [e.id for e in log.latest(mandant="north", kind="removed")] == [2]
    assert [e.id for e in log.latest(limit=2)] == [3, 2]
    assert log.latest(mandant="east") == []


def test_the_ring_is_bounded_and_drops_the_oldest():
    log = StationChanges(max_entries=3)
    log.record("north", 1.0, [change(str(i)) for i in range(5)])
    assert [e.change.station_id for e in log.latest()] == ["4", "3", "2"]
    assert [e.id for e in log.latest()] == [5, 4, 3]


def test_one_structured_log_line_per_change(caplog):
    caplog.set_level(logging.INFO, logger="exporter.changelog")
    StationChanges(max_entries=2).record(
        "north",
        1.0,
        [
            Change("firmware_changed", "id-1", "Hof Süd", "cp_1", "2.4.1", "2.5.0"),
            Change("removed", "id-2", "Station 2", "cp_2", "2.4.1", ""),
        ],
    )
    first, second = caplog.records
    line = LogfmtFormatter().format(first)
    assert " source=exporter.changelog " in line  # log pipelines may select by it
    assert 'msg="station firmware changed" id=1 mandant=north kind=firmware_changed' in line
    assert 'station_id=id-1 label="Hof Süd" charge_box_identity=cp_1' in line
    assert line.endswith("firmware_from=2.4.1 firmware_to=2.5.0")
    fields = json.loads(JsonFormatter().format(second))
    assert fields["msg"] == "station removed"
    assert (fields["kind"], fields["station_id"], fields["firmware_to"]) == ("removed", "id-2", "")


def test_fields_never_replace_the_standard_keys(caplog):
    caplog.set_level(logging.INFO, logger="test")
    logging.getLogger("test").info("hello", extra={"fields": {"msg": "forged", "level": "error"}})
    fields = json.loads(JsonFormatter().format(caplog.records[0]))
    assert (fields["msg"], fields["level"]) == ("hello", "info")


def test_one_refresh_logs_and_keeps_at_most_max_entries_changes(caplog):
    """An API that swaps its whole fleet must not write a log line per station: the last
    ``max_entries`` changes (removals come last) are logged and kept, one warning says so."""
    caplog.set_level(logging.INFO, logger="exporter.changelog")
    log = StationChanges(max_entries=100)
    log.record("north", 1.0, [change(str(i)) for i in range(5000)])
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        "mandant north: 5000 changes in one refresh; only the last 100 are logged and kept "
        "(--changes.max-entries), the change counters count all"
    ]
    logged = [r for r in caplog.records if r.levelno == logging.INFO]
    assert [r.fields["station_id"] for r in logged] == [str(i) for i in range(4900, 5000)]
    assert [e.id for e in log.latest(limit=2)] == [5000, 4999]
    log.record("north", 2.0, [change("next")])
    assert log.latest(limit=1)[0].id == 5001
