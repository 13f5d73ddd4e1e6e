"""Hostile text from the API: repaired where it enters (parse_station, decode_json), counted as
a data issue, and harmless in every output even if some got past; a station the API itself
lists twice is published once; and the simulator faults that produce all of it."""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator

import pytest
import requests
import responses
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from exporter.api import STATIONS_PATH, CpoClient
from exporter.auth import TokenSource
from exporter.check import ISSUE_MEANINGS
from exporter.errors import PaginationError
from exporter.exposition import Exposition
from exporter.http import Deadline, RetryPolicy
from exporter.logs import JsonFormatter, LogfmtFormatter
from exporter.metrics import FleetCollector
from exporter.model import (
    DATA_ISSUES,
    MAX_TEXT_LENGTH,
    Change,
    MandantState,
    Secret,
    Snapshot,
    Station,
)
from exporter.session import BoundedSession
from exporter.simulator import (
    CONTROL_LABEL_SUFFIX,
    LONG_LABEL_LENGTH,
    Fault,
    Inventory,
    Simulator,
)
from exporter.stationchanges import StationChanges
from exporter.stations import decode_json, parse_page, parse_station
from exporter.web import ExporterApp

FFFD = "\ufffd"
RAW_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029]")


def row(sid: object = "a", **attributes: object) -> dict:
    values = {
        "label": "Station A",
        "chargeBoxIdentity": "cp_a",
        "firmwareVersion": "1.0",
        "serialnumber": "SN1",
        "iccid": "1",
        "imsi": "2",
    }
    return {"type": "charging_stations", "id": sid, "attributes": values | attributes}


# Repair at the boundary: parse_station


@pytest.mark.parametrize(
    ("label", "repaired"),
    [
        ("Ost\ud800", f"Ost{FFFD}"),  # a lone surrogate (JSON "\ud800")
        ("M\udcfcnchen", f"M{FFFD}nchen"),  # a byte that is not UTF-8, via decode_json
        ("a\rb\x1b[2Kc", f"a{FFFD}b{FFFD}[2Kc"),  # CR and ESC
        ("tab\tnew\nline\x00", f"tab{FFFD}new{FFFD}line{FFFD}"),
        ("del\x7f c1\x85\x9b", f"del{FFFD} c1{FFFD}{FFFD}"),
    ],
)
def test_invalid_characters_become_the_replacement_character(label, repaired):
    station = parse_station(row(label=label))
    assert station.label == repaired
    assert station.repairs == ("invalid_text",)
    station.label.encode()  # encodable now


@pytest.mark.parametrize("name", ["chargeBoxIdentity", "firmwareVersion", "serialnumber"])
def test_every_text_attribute_kept_is_repaired(name):
    station = parse_station(row(**{name: "x\x1by"}))
    values = (station.charge_box_identity, station.firmware_version, station.serial_number)
    assert f"x{FFFD}y" in values
    assert station.repairs == ("invalid_text",)


def test_printable_text_is_not_touched():
    label = "Ladepark Süd \u2013 Säule 3\u00a0(Nord) 充電 🚗"  # dash, NBSP, CJK, emoji
    station = parse_station(row(label=label))
    assert station.label == label
    assert station.repairs == ()


def test_text_at_the_limit_is_kept_and_longer_text_is_cut_with_an_ellipsis():
    exact = "x" * MAX_TEXT_LENGTH
    assert parse_station(row(label=exact)).label == exact
    long = parse_station(row(label="y" * (MAX_TEXT_LENGTH + 1), serialnumber="\x1b" * 10_000))
    assert long.label == "y" * (MAX_TEXT_LENGTH - 1) + "…"
    assert long.serial_number == FFFD * (MAX_TEXT_LENGTH - 1) + "…"
    assert long.repairs == ("invalid_text", "text_too_long")


any_text = st.text(st.characters(blacklist_categories=()), max_size=300)  # surrogates too


@settings(max_examples=300, deadline=None)
@given(any_text, any_text, any_text)
def test_whatever_the_text_a_station_is_safe_to_show(sid, label, serial):
    sent = (sid or "x", label, serial)
    station = parse_station(row(sent[0], label=label, serialnumber=serial))
    shown = (station.id, station.label, station.serial_number)
    for text in shown:
        text.encode()  # UTF-8 can encode it
        assert not RAW_CONTROL.search(text.replace("\u2028", "").replace("\u2029", ""))
        assert len(text) <= MAX_TEXT_LENGTH
    assert bool(station.repairs) == (shown != sent)


def test_a_repaired_id_stays_unique_and_the_same_in_every_refresh():
    first = parse_station(row("id\ud800"))
    second = parse_station(row("id\udcff"))
    assert first.id.startswith(f"id{FFFD}#") and second.id.startswith(f"id{FFFD}#")
    assert first.id != second.id  # the same repaired text, different ids as sent
    assert parse_station(row("id\ud800")).id == first.id
    assert first.repairs == ("invalid_text",)
    prefix = "s" * (MAX_TEXT_LENGTH + 100)
    long_ids = {parse_station(row(prefix + tail)).id for tail in ("1", "2")}
    assert len(long_ids) == 2
    assert all(len(sid) == MAX_TEXT_LENGTH for sid in long_ids)
    assert parse_station(row(prefix)).repairs == ("text_too_long",)


def test_a_repaired_station_is_reused_when_unchanged():
    old = parse_station(row(label="bad\x1b"))
    known = {old.id: old}
    assert parse_station(row(label="bad\x1b"), known) is old
    assert parse_station(row(label="bad\ufffd"), known) is not old  # honest U+FFFD: no repair
    assert parse_station(row(label="bad\ufffd"), known).repairs == ()


def test_text_holding_the_separator_of_a_stored_station_is_never_taken_for_it():
    held = parse_station(row(label="x", chargeBoxIdentity="y", serialnumber="z"))
    known = {"a": held}
    # the same three texts joined by the separator, but cut in other places
    shifted = parse_station(row(label="x\x1fy", chargeBoxIdentity="z", serialnumber=""), known)
    assert shifted is not held
    assert (shifted.label, shifted.charge_box_identity) == ("x\ufffdy", "z")
    assert shifted.repairs == ("invalid_text",)
    assert parse_station(row(label="x", chargeBoxIdentity="y", serialnumber="z"), known) is held


def test_a_schema_drift_message_shows_a_bounded_id():
    with pytest.raises(Exception, match="attribute label is a list") as info:
        parse_station(row("i" * 100_000, label=["x"]))
    assert len(str(info.value)) < MAX_TEXT_LENGTH + 100


# Bytes that are not UTF-8: decode_json


def test_bytes_that_are_not_utf8_arrive_as_lone_surrogates_and_are_repaired():
    body = json.dumps({"data": [row(label="@")]}).encode().replace(b"@", b"M\xfcnchen \xff")
    document = decode_json(body)
    assert document["data"][0]["attributes"]["label"] == "M\udcfcnchen \udcff"
    stations, _ = parse_page(document)
    assert stations[0].label == f"M{FFFD}nchen {FFFD}"
    assert stations[0].repairs == ("invalid_text",)


@pytest.mark.parametrize("body", [b"", b"{", b"\xff", b"[" * 100_000 + b"]" * 100_000])
def test_what_is_not_json_is_a_value_error(body):
    with pytest.raises(ValueError):
        decode_json(body)


@responses.activate
def test_the_client_decodes_pages_as_utf8_whatever_the_content_type_says():
    api = "https://mandant.example.test"
    responses.post(
        "https://auth.example.test/token",
        json={"access_token": "tok", "expires_in": 3600, "token_type": "Bearer"},
    )
    document = {"data": [row(label="@")], "meta": {"pagination": {"total": 1}}}
    body = json.dumps(document).encode().replace(b"@", b"K\xf6ln")
    responses.get(api + STATIONS_PATH, body=body, content_type="application/vnd.api+json")
    session = BoundedSession()
    tokens = TokenSource(
        token_url="https://auth.example.test/token",
        client_id="id",
        client_secret=Secret("secret"),
        auth_method="basic",
        session=session,
        retry=RetryPolicy(attempts=1),
    )
    client = CpoClient(
        api_url=api, tokens=tokens, session=session, page_limit=10, retry=RetryPolicy(attempts=1)
    )
    [station] = client.stations(Deadline(10))
    assert station.label == f"K{FFFD}ln"


# Defence in depth: text that got past parsing breaks no output


BAD = "bad\ud800\r\x1b[2K\x9b"


def states_with_bad_text() -> list[MandantState]:
    bad = Station("bad", BAD, BAD, BAD, BAD)
    good = Station("good", "Station G", "cp_g", "2.0", "SN")
    return [
        MandantState(name="hostile", snapshot=Snapshot.build([bad], 0.0), up=True),
        MandantState(name="fine", snapshot=Snapshot.build([good], 0.0), up=True),
    ]


def exposition_of(states: list[MandantState]) -> Exposition:
    return Exposition(FleetCollector(), lambda: states, CollectorRegistry())


@pytest.mark.parametrize("openmetrics", [False, True])
def test_metrics_render_text_that_utf8_cannot_encode_as_a_question_mark(openmetrics, caplog):
    exposition = exposition_of(states_with_bad_text())
    with caplog.at_level(logging.ERROR, "exporter.exposition"):
        text = b"".join(exposition.body(openmetrics=openmetrics)).decode()
    assert "cannot encode" in caplog.text  # the firmware label went through the fallback
    if not openmetrics:
        families = {f.name: f for f in text_string_to_metric_families(text)}
        info = families["beenergised_charging_station_info"].samples
        assert {s.labels["mandant"] for s in info} == {"hostile", "fine"}
        by_firmware = families["beenergised_charging_stations_by_firmware"].samples
        assert {s.labels["firmware_version"] for s in by_firmware} == {
            "bad?\r\x1b[2K\x9b",
            "2.0",
        }
    assert 'label="Station G"' in text


def call(app: ExporterApp, path: str, query: str = "") -> tuple[str, bytes]:
    answer: list[str] = []
    body = app(
        {"PATH_INFO": path, "QUERY_STRING": query, "REQUEST_METHOD": "GET"},
        lambda status, headers, exc_info=None: answer.append(status),
    )
    return answer[0], b"".join(body)


def test_the_landing_page_and_changes_render_text_that_utf8_cannot_encode():
    states = states_with_bad_text()
    station_changes = StationChanges(max_entries=5)
    station_changes.record("hostile", 0.0, [Change("added", "bad", BAD, BAD, "", BAD)])
    app = ExporterApp(exposition_of(states), lambda: states, station_changes)
    status, page = call(app, "/")
    assert status == "200 OK" and b"bad?" in page
    status, body = call(app, "/changes")
    assert status == "200 OK"
    assert json.loads(body)["changes"][0]["label"] == "bad?\r\x1b[2K\x9b"


def record(message: str, fields: dict | None = None) -> logging.LogRecord:
    entry = logging.LogRecord("exporter.changelog", logging.INFO, __file__, 1, message, (), None)
    if fields is not None:
        entry.fields = fields
    return entry


def test_logfmt_escapes_every_control_character_so_no_line_can_be_forged():
    line = LogfmtFormatter().format(record("station added", {"label": BAD + "\u2028\x7f\t"}))
    assert not RAW_CONTROL.search(line)
    assert 'label="bad\\ud800\\r\\u001b[2K\\u009b\\u2028\\u007f\\t"' in line
    assert LogfmtFormatter().format(record("plain")).endswith(" msg=plain")
    assert LogfmtFormatter().format(record("a=b")).endswith(' msg="a=b"')


def test_json_logs_escape_what_json_dumps_leaves_raw():
    line = JsonFormatter().format(record("station added", {"label": BAD + "\x7f\u2028"}))
    assert not RAW_CONTROL.search(line)
    assert json.loads(line)["label"] == BAD + "\x7f\u2028"


# A station the API lists twice


def test_a_snapshot_keeps_the_first_of_a_repeated_id_and_counts_it_once():
    a1, a2 = Station("a", "first", "", "1", ""), Station("a", "second", "", "1", "")
    snapshot = Snapshot.build([a1, Station("b", "B", "", "1", ""), a2, a2], 0.0)
    assert snapshot.stations["a"] is a1 and len(snapshot) == 2
    assert snapshot.data_issues["duplicate_station_id"] == 1


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    with Simulator(Inventory(size=9, seed=3), max_page_limit=4) as sim:
        yield sim


def client_of(sim: Simulator, concurrency: int = 1) -> CpoClient:
    session = BoundedSession(concurrency)
    tokens = TokenSource(
        token_url=sim.token_url,
        client_id="demo-client",
        client_secret=Secret("demo-secret"),
        auth_method="basic",
        session=session,
    )
    return CpoClient(
        api_url=sim.api_url,
        tokens=tokens,
        session=session,
        page_limit=4,
        concurrency=concurrency,
    )


@pytest.mark.parametrize("concurrency", [1, 4])
def test_the_simulators_stable_duplicate_is_published_once_and_counted(
    simulator, concurrency, caplog
):
    simulator.add_fault(Fault("duplicate_station"))
    with caplog.at_level(logging.INFO, "exporter.api"):
        rows = client_of(simulator, concurrency).stations(Deadline(10))
    first = simulator.inventory.stations()[0]["id"]
    assert [row.id for row in rows].count(first) == 2 and len(rows) == 10
    snapshot = Snapshot.build(rows, 0.0)
    assert len(snapshot) == 9
    assert snapshot.data_issues["duplicate_station_id"] == 1
    assert "the API's data" in caplog.text


def test_the_simulators_torn_duplicate_is_still_refused(simulator):
    simulator.add_fault(Fault("duplicate_rows"))
    with pytest.raises(PaginationError, match="inconsistent twice in a row"):
        client_of(simulator).stations(Deadline(10))


# The simulator's faults


def raw_page(sim: Simulator, limit: int = 4, offset: int = 0) -> requests.Response:
    token = requests.post(
        sim.token_url,
        data={"grant_type": "client_credentials"},
        auth=("demo-client", "demo-secret"),
        timeout=5,
    ).json()["access_token"]
    return requests.get(
        sim.api_url + STATIONS_PATH,
        params={"page[limit]": limit, "page[offset]": offset},
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
    )


def labels(response: requests.Response) -> list[str]:
    return [row["attributes"]["label"] for row in decode_json(response.content)["data"]]


@pytest.mark.parametrize(
    ("kind", "raw", "suffix"),
    [
        ("surrogate_label", b'\\ud800"', "\ud800"),
        ("non_utf8_label", b' M\xfcnchen \xff"', " M\udcfcnchen \udcff"),
        ("control_label", b'\\r\\u001b[2Klevel=error msg=forged"', CONTROL_LABEL_SUFFIX),
    ],
)
def test_label_faults_change_the_last_row_of_each_page(simulator, kind, raw, suffix):
    normal = labels(raw_page(simulator, 4, 4))
    simulator.add_fault(Fault(kind))
    response = raw_page(simulator, 4, 4)
    assert response.status_code == 200
    assert raw in response.content  # as the API would send it
    assert labels(response) == [*normal[:3], normal[3] + suffix]
    simulator.clear_faults()
    assert labels(raw_page(simulator, 4, 4)) == normal


def test_long_label_adds_many_characters(simulator):
    normal = labels(raw_page(simulator))
    simulator.add_fault(Fault("long_label", times=1))
    faulty = labels(raw_page(simulator))
    assert len(faulty[-1]) == len(normal[-1]) + LONG_LABEL_LENGTH
    assert faulty[:-1] == normal[:-1]


def test_duplicate_station_lists_the_first_station_again_at_the_end_in_every_read(simulator):
    simulator.add_fault(Fault("duplicate_station"))
    for limit in (4, 3):
        pages = [
            decode_json(raw_page(simulator, limit, offset).content)
            for offset in range(0, 10, limit)
        ]
        ids = [row["id"] for page in pages for row in page["data"]]
        assert ids == [s["id"] for s in simulator.inventory.stations()] + [ids[0]]
        assert {page["meta"]["pagination"]["total"] for page in pages} == {10}
    assert len(simulator.inventory) == 9


@pytest.mark.parametrize(
    "kind",
    ["surrogate_label", "non_utf8_label", "control_label", "long_label", "duplicate_station"],
)
def test_the_new_faults_are_for_the_stations_endpoint_only(kind):
    with pytest.raises(ValueError, match="stations endpoint only"):
        Fault(kind, endpoint="token")
    with pytest.raises(ValueError, match="status is for"):
        Fault(kind, status=500)
    assert Fault.from_json({"kind": kind, "times": 2}).times == 2


def test_check_explains_every_data_issue():
    assert set(ISSUE_MEANINGS) == set(DATA_ISSUES)


def test_station_keeps_its_firmware_interned():
    station = parse_station(row(firmwareVersion="9.9\x1b"))
    assert station.firmware_version is sys.intern(f"9.9{FFFD}")
