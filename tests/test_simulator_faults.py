"""Tests of the simulator's fault injection, token listing, fleet history and custom stations,
switched through the /_sim/ control endpoints over real HTTP on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.client
import json
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from exporter.simulator import (
    FAULT_KINDS,
    HISTORY_LENGTH,
    Fault,
    Inventory,
    RequestRecord,
    Simulator,
    fingerprint,
)
from tests.helpers import SimulatorProcess, wait_until

STATIONS = "/api/cpoapi/v1/charging_stations/"
TOKEN = "/oauth2/token"
FORM = "grant_type=client_credentials&client_id=demo-client&client_secret=demo-secret"
TIMEOUT = 5
PROMPT = 2  # seconds a woken hang may take to end


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(Inventory(size=25, seed=1)) as simulator:
        yield simulator


def switch_on(api_url: str, **fault: object) -> int:
    response = requests.post(api_url + "/_sim/faults", json=fault, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()["id"]


def switch_off(api_url: str) -> None:
    response = requests.delete(api_url + "/_sim/faults", timeout=TIMEOUT)
    assert response.status_code == 200
    assert requests.get(api_url + "/_sim/faults", timeout=TIMEOUT).json() == {"faults": []}


def post_token(api_url: str) -> requests.Response:
    return requests.post(
        api_url + TOKEN,
        data=FORM,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=TIMEOUT,
    )


def get_token(api_url: str) -> str:
    response = post_token(api_url)
    assert response.status_code == 200
    return response.json()["access_token"]


def get_page(api_url: str, token: str, limit: int = 10, offset: int = 0) -> requests.Response:
    return requests.get(
        f"{api_url}{STATIONS}?page[limit]={limit}&page[offset]={offset}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=TIMEOUT,
    )


def ids(response: requests.Response) -> list[str]:
    return [row["id"] for row in response.json()["data"]]


def assert_normal(sim: Simulator) -> None:
    """Tokens and pages are as without faults."""
    response = get_page(sim.api_url, get_token(sim.api_url))
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/vnd.api+json"
    body = response.json()
    assert ids(response) == [station["id"] for station in sim.inventory.stations()[:10]]
    assert body["meta"]["pagination"]["total"] == len(sim.inventory)


def request_for(endpoint: str, api_url: str) -> tuple[str, str, dict[str, str], str | None]:
    if endpoint == "token":
        return "POST", TOKEN, {"Content-Type": "application/x-www-form-urlencoded"}, FORM
    return "GET", STATIONS, {"Authorization": f"Bearer {get_token(api_url)}"}, None


def connect(api_url: str) -> http.client.HTTPConnection:
    return http.client.HTTPConnection(urlsplit(api_url).netloc, timeout=TIMEOUT)


class Call(threading.Thread):
    """One raw HTTP request in a thread, so that a test can end a hang while it waits."""

    def __init__(self, api_url: str, endpoint: str) -> None:
        super().__init__(daemon=True)
        self.api_url = api_url
        self.request = request_for(endpoint, api_url)
        self.status: int | None = None
        self.error: Exception | None = None

    def run(self) -> None:
        method, path, headers, body = self.request
        connection = connect(self.api_url)
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            self.status = response.status
            response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.error = exc
        finally:
            connection.close()


def remaining_times(sim: Simulator) -> int | None:
    return sim.faults[0]["remaining_times"] if sim.faults else None


def test_fault_kinds_are_exactly_the_documented_ones() -> None:
    assert set(FAULT_KINDS) == {
        "status",
        "latency",
        "hang",
        "disconnect",
        "truncated",
        "html",
        "wrong_content_type",
        "no_data",
        "no_meta",
        "null_attributes",
        "wrong_types",
        "data_not_list",
        "revoke_token",
        "expire_token",
        "insert_rows",
        "delete_rows",
        "total_drift",
        "duplicate_rows",
        "skip_row",
        "echo_secret",
        "huge_error",
        "expires_in_nan",
        "expires_in_infinity",
        "expires_in_1e400",
        "expires_in_negative",
        "expires_in_string",
        "redirect",
        "surrogate_label",
        "non_utf8_label",
        "control_label",
        "long_label",
        "duplicate_station",
        "drip",
        "oversized",
        "endless",
        "endless_wide",
        "new_fleet",
    }
    assert len(FAULT_KINDS) == len(set(FAULT_KINDS))


# Faults that answer instead of the API


@pytest.mark.parametrize(
    ("status", "retry_after"),
    [
        (429, "1"),
        (500, None),
        (502, None),
        (503, "Wed, 21 Oct 2015 07:28:00 GMT"),
        (504, None),
        (400, None),
        (403, None),
    ],
)
def test_status_on_stations(sim: Simulator, status: int, retry_after: str | None) -> None:
    token = get_token(sim.api_url)
    switch_on(sim.api_url, kind="status", status=status, retry_after=retry_after)
    response = get_page(sim.api_url, token)
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/vnd.api+json"
    assert response.headers.get("Retry-After") == retry_after
    [error] = response.json()["errors"]
    assert error["status"] == str(status)
    assert error["title"]
    switch_off(sim.api_url)
    assert_normal(sim)


@pytest.mark.parametrize(
    ("status", "retry_after", "error"),
    [
        (500, None, "temporarily_unavailable"),
        (503, "2", "temporarily_unavailable"),
        (429, "1", "temporarily_unavailable"),
        (400, None, "invalid_client"),
        (401, None, "invalid_client"),
        (403, None, "unauthorized_client"),
    ],
)
def test_status_on_token(sim: Simulator, status: int, retry_after: str | None, error: str) -> None:
    switch_on(sim.api_url, kind="status", endpoint="token", status=status, retry_after=retry_after)
    response = post_token(sim.api_url)
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers.get("Retry-After") == retry_after
    assert response.json() == {"error": error}
    assert sim.tokens_issued == 0
    switch_off(sim.api_url)
    assert_normal(sim)


@pytest.mark.parametrize(
    ("status", "shown"), [(None, "502 Bad Gateway"), (503, "503 Service Unavailable")]
)
def test_html_error_page(sim: Simulator, status: int | None, shown: str) -> None:
    token = get_token(sim.api_url)
    switch_on(sim.api_url, kind="html", status=status)
    response = get_page(sim.api_url, token)
    assert response.status_code == (status or 200)
    assert response.headers["Content-Type"] == "text/html"
    assert response.text == f"<html><body><h1>{shown}</h1></body></html>"
    switch_off(sim.api_url)
    assert_normal(sim)


def test_html_on_token(sim: Simulator) -> None:
    switch_on(sim.api_url, kind="html", endpoint="token", status=502)
    response = post_token(sim.api_url)
    assert (response.status_code, response.headers["Content-Type"]) == (502, "text/html")
    assert sim.tokens_issued == 0


# Faults in time


def test_latency_delays_then_answers_normally(sim: Simulator) -> None:
    token = get_token(sim.api_url)
    switch_on(sim.api_url, kind="latency", seconds=0.2)
    started = time.monotonic()
    response = get_page(sim.api_url, token)
    assert time.monotonic() - started >= 0.2
    assert response.status_code == 200
    assert len(ids(response)) == 10
    switch_off(sim.api_url)
    assert_normal(sim)


def test_clearing_ends_a_latency_in_progress_with_a_normal_answer(sim: Simulator) -> None:
    switch_on(sim.api_url, kind="latency", endpoint="token", seconds=30, times=2)
    call = Call(sim.api_url, "token")
    call.start()
    wait_until(lambda: remaining_times(sim) == 1, TIMEOUT, "the request to take the fault")
    sim.clear_faults()
    call.join(PROMPT)
    assert not call.is_alive()
    assert (call.status, call.error) == (200, None)


@pytest.mark.parametrize("endpoint", ["stations", "token"])
def test_hang_is_ended_at_once_by_clear_faults(sim: Simulator, endpoint: str) -> None:
    switch_on(sim.api_url, kind="hang", endpoint=endpoint, times=2)
    call = Call(sim.api_url, endpoint)
    call.start()
    wait_until(lambda: remaining_times(sim) == 1, TIMEOUT, "the request to take the fault")
    assert call.is_alive()
    started = time.monotonic()
    switch_off(sim.api_url)
    call.join(PROMPT)
    assert not call.is_alive()
    assert time.monotonic() - started < PROMPT
    assert call.status is None
    assert isinstance(call.error, http.client.RemoteDisconnected)
    assert sim.requests[-1].status == 0
    assert_normal(sim)


def test_hang_is_ended_at_once_by_stop() -> None:
    sim = Simulator(Inventory(size=3)).start()
    sim.add_fault(Fault("hang", times=2))
    call = Call(sim.api_url, "stations")
    call.start()
    wait_until(lambda: remaining_times(sim) == 1, TIMEOUT, "the request to take the fault")
    started = time.monotonic()
    sim.stop()
    call.join(PROMPT)
    assert not call.is_alive()
    assert time.monotonic() - started < PROMPT
    assert isinstance(call.error, ConnectionError)


def test_hang_ends_by_itself_after_its_seconds(sim: Simulator) -> None:
    switch_on(sim.api_url, kind="hang", seconds=0.1)
    call = Call(sim.api_url, "stations")
    started = time.monotonic()
    call.start()
    call.join(TIMEOUT)
    assert not call.is_alive()
    assert time.monotonic() - started >= 0.1
    assert isinstance(call.error, http.client.RemoteDisconnected)


# Faults in the body


@pytest.mark.parametrize("endpoint", ["stations", "token"])
def test_disconnect_after_half_the_body(sim: Simulator, endpoint: str) -> None:
    method, path, headers, body = request_for(endpoint, sim.api_url)
    switch_on(sim.api_url, kind="disconnect", endpoint=endpoint)
    connection = connect(sim.api_url)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        assert response.status == 200
        length = int(response.getheader("Content-Length"))
        with pytest.raises(http.client.IncompleteRead) as incomplete:
            response.read()
    finally:
        connection.close()
    assert len(incomplete.value.partial) == length // 2 > 0
    switch_off(sim.api_url)
    assert_normal(sim)


@pytest.mark.parametrize("endpoint", ["stations", "token"])
def test_truncated_is_valid_http_with_half_a_json_body(sim: Simulator, endpoint: str) -> None:
    token = get_token(sim.api_url)
    normal = get_page(sim.api_url, token)
    switch_on(sim.api_url, kind="truncated", endpoint=endpoint)
    response = post_token(sim.api_url) if endpoint == "token" else get_page(sim.api_url, token)
    assert response.status_code == 200
    assert int(response.headers["Content-Length"]) == len(response.content)
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.content)
    if endpoint == "stations":
        assert response.content == normal.content[: len(normal.content) // 2]
    switch_off(sim.api_url)
    assert_normal(sim)


@pytest.mark.parametrize("endpoint", ["stations", "token"])
def test_wrong_content_type(sim: Simulator, endpoint: str) -> None:
    token = get_token(sim.api_url)
    switch_on(sim.api_url, kind="wrong_content_type", endpoint=endpoint)
    response = post_token(sim.api_url) if endpoint == "token" else get_page(sim.api_url, token)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/plain"
    expected_keys = {"access_token", "expires_in", "token_type"} if endpoint == "token" else None
    body = response.json()
    assert set(body) == (expected_keys or {"data", "meta", "links"})
    switch_off(sim.api_url)
    assert_normal(sim)


def test_no_data(sim: Simulator) -> None:
    token = get_token(sim.api_url)
    switch_on(sim.api_url, kind="no_data")
    body = get_page(sim.api_url, token).json()
    assert set(body) == {"meta", "links"}
    assert body["meta"]["pagination"]["total"] == 25
    switch_off(sim.api_url)
    assert_normal(sim)


def test_no_meta(sim: Simulator) -> None:
    token = get_token(sim.api_url)
    switch_on(sim.api_url, kind="no_meta")
    body = get_page(sim.api_url, token).json()
    assert set(body) == {"data"}
    assert len(body["data"]) == 10
    switch_off(sim.api_url)
    assert_normal(sim)


def test_null_attributes(sim: Simulator) -> None:
    token = get_token(sim.api_url)
    switch_on(sim.api_url, kind="null_attributes")
    rows = get_page(sim.api_url, token).json()["data"]
    assert len(rows) == 10
    assert all(row["attributes"] is None and row["id"] for row in rows)
    switch_off(sim.api_url)
    assert_normal(sim)


def test_wrong_types(sim: Simulator) -> None:
    token = get_token(sim.api_url)
    switch_on(sim.api_url, kind="wrong_types")
    body = get_page(sim.api_url, token).json()
    values = [value for row in body["data"] for value in row["attributes"].values()]
    assert len(body["data"]) == 10
    assert len(values) == 60
    assert not any(isinstance(value, str) for value in values)
    assert {type(value) for value in values} == {int, list, dict, bool}
    assert body["meta"]["pagination"]["total"] == "25"
    switch_off(sim.api_url)
    assert_normal(sim)


def test_data_not_list(sim: Simulator) -> None:
    token = get_token(sim.api_url)
    switch_on(sim.api_url, kind="data_not_list")
    data = get_page(sim.api_url, token).json()["data"]
    assert isinstance(data, dict)
    assert data["id"] == sim.inventory.stations()[0]["id"]
    switch_off(sim.api_url)
    assert_normal(sim)


# Faults of tokens


@pytest.mark.parametrize(
    ("kind", "state"), [("revoke_token", "revoked"), ("expire_token", "expired")]
)
def test_token_lost_on_page_3(sim: Simulator, kind: str, state: str) -> None:
    token = get_token(sim.api_url)
    switch_on(sim.api_url, kind=kind, times=1, after=2)
    assert [get_page(sim.api_url, token, 10, offset).status_code for offset in (0, 10, 20)] == [
        200,
        200,
        401,
    ]
    assert sim.faults == []
    renewed = get_token(sim.api_url)
    assert get_page(sim.api_url, renewed, 10, 20).status_code == 200
    listing = requests.get(sim.api_url + "/_sim/tokens", timeout=TIMEOUT).json()
    assert listing["issued"] == [token, renewed]
    assert listing[state] == [token]
    assert listing["valid"] == [renewed]
    assert_normal(sim)


@pytest.mark.parametrize("kind", ["revoke_token", "expire_token"])
def test_token_lost_when_a_new_one_is_requested(sim: Simulator, kind: str) -> None:
    old = get_token(sim.api_url)
    switch_on(sim.api_url, kind=kind, endpoint="token", times=1)
    new = get_token(sim.api_url)
    assert get_page(sim.api_url, old).status_code == 401
    assert get_page(sim.api_url, new).status_code == 200


def test_tokens_listing_shows_every_token_in_order(sim: Simulator) -> None:
    issued = [get_token(sim.api_url) for _ in range(3)]
    sim.revoke_tokens()
    issued.append(get_token(sim.api_url))
    assert sim.expire_tokens() == 1
    issued.append(get_token(sim.api_url))
    listing = requests.get(sim.api_url + "/_sim/tokens", timeout=TIMEOUT).json()
    assert listing == {
        "issued": issued,
        "valid": issued[4:],
        "expired": issued[3:4],
        "revoked": issued[:3],
    }
    assert len(set(issued)) == 5
    assert sim.tokens == listing


# Faults of pagination


def test_insert_rows_shifts_the_rows_and_grows_the_total(sim: Simulator) -> None:
    token = get_token(sim.api_url)
    history = len(sim.inventory.history())
    switch_on(sim.api_url, kind="insert_rows", times=1, after=1)
    first = get_page(sim.api_url, token, 5, 0)
    second = get_page(sim.api_url, token, 5, 5)
    assert first.json()["meta"]["pagination"]["total"] == 25
    assert second.json()["meta"]["pagination"]["total"] == 26
    assert ids(second)[0] == ids(first)[-1]  # the row seen last is seen again
    assert requests.get(sim.api_url + "/_sim/state", timeout=TIMEOUT).json()["stations"] == 26
    assert sim.inventory.stations()[1]["id"] == ids(first)[0]
    assert len(sim.inventory.history()) == history + 1
    switch_off(sim.api_url)
    assert_normal(sim)


def test_delete_rows_shifts_the_rows_and_shrinks_the_total(sim: Simulator) -> None:
    token = get_token(sim.api_url)
    before = [station["id"] for station in sim.inventory.stations()]
    switch_on(sim.api_url, kind="delete_rows", times=1, after=1)
    first = get_page(sim.api_url, token, 5, 0)
    second = get_page(sim.api_url, token, 5, 5)
    assert ids(first) == before[:5]
    assert second.json()["meta"]["pagination"]["total"] == 24
    assert ids(second) == before[6:11]  # before[5] is never seen
    assert requests.get(sim.api_url + "/_sim/state", timeout=TIMEOUT).json()["stations"] == 24
    assert before[0] not in {station["id"] for station in sim.inventory.stations()}
    switch_off(sim.api_url)
    assert_normal(sim)


def test_total_drift_reports_one_too_many(sim: Simulator) -> None:
    token = get_token(sim.api_url)
    normal = get_page(sim.api_url, token, 10, 20).json()
    switch_on(sim.api_url, kind="total_drift")
    drifted = get_page(sim.api_url, token, 10, 20).json()
    assert drifted["meta"]["pagination"]["total"] == 26
    assert drifted["data"] == normal["data"]
    assert len(sim.inventory) == 25
    switch_off(sim.api_url)
    assert_normal(sim)


def test_duplicate_rows_repeats_the_previous_pages_last_row(sim: Simulator) -> None:
    token = get_token(sim.api_url)
    all_ids = [station["id"] for station in sim.inventory.stations()]
    switch_on(sim.api_url, kind="duplicate_rows", after=1)
    first = get_page(sim.api_url, token, 10, 0)
    second = get_page(sim.api_url, token, 10, 10)
    assert ids(first) == all_ids[:10]
    assert ids(second) == [all_ids[9], *all_ids[11:20]]
    assert second.json()["meta"]["pagination"]["total"] == 25
    switch_off(sim.api_url)
    assert_normal(sim)


def test_skip_row_starts_a_later_page_one_row_late_with_the_total_unchanged(
    sim: Simulator,
) -> None:
    token = get_token(sim.api_url)
    all_ids = [station["id"] for station in sim.inventory.stations()]
    switch_on(sim.api_url, kind="skip_row")
    first = get_page(sim.api_url, token, 10, 0)
    pages = [get_page(sim.api_url, token, 10, offset) for offset in (10, 20)]
    assert ids(first) == all_ids[:10]
    assert [ids(page) for page in pages] == [all_ids[11:21], all_ids[21:]]
    assert [page.json()["meta"]["pagination"]["total"] for page in pages] == [25, 25]
    assert pages[-1].json()["meta"]["pagination"]["lastPage"] is True
    assert len(sim.inventory) == 25
    switch_off(sim.api_url)
    assert_normal(sim)


@pytest.mark.parametrize(("per_page", "rows"), [(None, 10), (40, 40)])
def test_endless_lists_new_stations_without_end(
    sim: Simulator, per_page: int | None, rows: int
) -> None:
    token = get_token(sim.api_url)
    switch_on(sim.api_url, kind="endless", per_page=per_page)
    pages = [get_page(sim.api_url, token, 10, offset) for offset in (0, rows, 10**9)]
    for page in pages:
        assert len(page.json()["data"]) == rows
        assert page.json()["meta"]["pagination"]["lastPage"] is False
        assert "total" not in page.json()["meta"]["pagination"]
    listed = ids(pages[0]) + ids(pages[1]) + ids(pages[2])
    assert len(set(listed)) == 3 * rows
    assert not set(listed) & {station["id"] for station in sim.inventory.stations()}
    assert ids(get_page(sim.api_url, token, 10, 0)) == ids(pages[0])  # the same in every read
    switch_off(sim.api_url)
    assert_normal(sim)


def test_new_fleet_lists_other_stations_in_every_read(sim: Simulator) -> None:
    token = get_token(sim.api_url)
    switch_on(sim.api_url, kind="new_fleet")
    reads = [[get_page(sim.api_url, token, 10, offset) for offset in (0, 10, 20)] for _ in range(2)]
    listings = [[sid for page in read for sid in ids(page)] for read in reads]
    for listing, read in zip(listings, reads, strict=True):
        assert len(set(listing)) == len(sim.inventory) == 25
        assert {page.json()["meta"]["pagination"]["total"] for page in read} == {25}
        assert read[-1].json()["meta"]["pagination"]["lastPage"] is True
    assert not set(listings[0]) & set(listings[1])
    switch_off(sim.api_url)
    assert_normal(sim)


# Switching faults


def test_after_and_times_are_counted_per_fault(sim: Simulator) -> None:
    token = get_token(sim.api_url)
    fault_id = switch_on(sim.api_url, kind="status", status=500, times=2, after=1)
    listing = requests.get(sim.api_url + "/_sim/faults", timeout=TIMEOUT).json()
    assert listing == {
        "faults": [
            {
                "id": fault_id,
                "kind": "status",
                "endpoint": "stations",
                "status": 500,
                "retry_after": None,
                "seconds": None,
                "times": 2,
                "after": 1,
                "part": None,
                "size": None,
                "per_page": None,
                "remaining_after": 1,
                "remaining_times": 2,
            }
        ]
    }
    statuses = []
    remaining = []
    for _ in range(4):
        statuses.append(get_page(sim.api_url, token).status_code)
        remaining.append([(f["remaining_after"], f["remaining_times"]) for f in sim.faults])
    assert statuses == [200, 500, 500, 200]
    assert remaining == [[(0, 2)], [(0, 1)], [], []]
    assert post_token(sim.api_url).status_code == 200  # another endpoint is not counted


def test_first_matching_fault_applies_and_each_counts_its_own_after(sim: Simulator) -> None:
    token = get_token(sim.api_url)
    token_fault = sim.add_fault(Fault("status", endpoint="token", status=503))
    gateway = sim.add_fault(Fault("status", status=502, after=1, times=1))
    drift = sim.add_fault(Fault("total_drift"))
    assert token_fault < gateway < drift
    first, second, third = (get_page(sim.api_url, token) for _ in range(3))
    assert first.json()["meta"]["pagination"]["total"] == 26  # gateway still counting
    assert second.status_code == 502
    assert third.json()["meta"]["pagination"]["total"] == 26
    assert post_token(sim.api_url).status_code == 503
    assert [fault["id"] for fault in sim.faults] == [token_fault, drift]
    sim.clear_faults()
    assert sim.faults == []
    assert_normal(sim)


@pytest.mark.parametrize("path", ["/_sim/faults/clear", "/_sim/faults/"])
def test_clear_by_post_and_trailing_slash(sim: Simulator, path: str) -> None:
    switch_on(sim.api_url, kind="no_data")
    switch_on(sim.api_url, kind="disconnect", endpoint="token")
    method = "POST" if path.endswith("clear") else "DELETE"
    response = requests.request(method, sim.api_url + path, timeout=TIMEOUT)
    assert response.json() == {"cleared": 2}
    assert sim.faults == []
    assert_normal(sim)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"kind": "nope"}, "unknown fault kind 'nope'"),
        ({"kind": ["status"]}, "unknown fault kind ['status']"),
        ({}, "a fault needs a kind"),
        ({"kind": "status"}, "status must be an integer from 400 to 599, got None"),
        ({"kind": "status", "status": 200}, "status must be an integer from 400 to 599"),
        ({"kind": "status", "status": "500"}, "status must be an integer"),
        ({"kind": "html", "status": 99}, "status must be an integer from 200 to 599"),
        ({"kind": "latency"}, "seconds for a latency fault must be a number"),
        ({"kind": "latency", "seconds": -1}, "seconds for a latency fault"),
        ({"kind": "hang", "seconds": True}, "seconds for a hang fault"),
        ({"kind": "hang", "seconds": 1e300}, "seconds for a hang fault must be a number from 0"),
        ({"kind": "truncated", "seconds": 1}, "seconds is for latency, hang and drip faults"),
        (
            {"kind": "latency", "seconds": 1, "status": 500},
            "status is for status, html and redirect faults, not for latency",
        ),
        ({"kind": "truncated", "endpoint": "tokens"}, "endpoint must be 'stations' or 'token'"),
        ({"kind": "insert_rows", "endpoint": "token"}, "works on the stations endpoint only"),
        ({"kind": "no_data", "endpoint": "token"}, "works on the stations endpoint only"),
        ({"kind": "disconnect", "times": 0}, "times must be an integer >= 1"),
        ({"kind": "disconnect", "times": 1.5}, "times must be an integer >= 1"),
        ({"kind": "disconnect", "after": -1}, "after must be an integer >= 0"),
        ({"kind": "disconnect", "after": None}, "after must be an integer >= 0"),
        ({"kind": "disconnect", "retry_after": "1"}, "retry_after is for status faults"),
        (
            {"kind": "status", "status": 503, "retry_after": "1\r\nX-Injected: 1"},
            "retry_after must be a header value",
        ),
        ({"kind": "status", "status": 503, "retry_after": 1}, "retry_after must be"),
        ({"kind": "disconnect", "colour": "red"}, "unknown fault fields ['colour']"),
        ({"kind": "disconnect", "per_page": 5}, "per_page is for endless faults"),
        ({"kind": "endless", "per_page": 0}, "per_page must be an integer from 1 to 100000"),
        ([{"kind": "disconnect"}], "the request body must be a JSON object"),
    ],
)
def test_bad_fault_specs_are_400_and_change_nothing(
    sim: Simulator, body: object, message: str
) -> None:
    response = requests.post(sim.api_url + "/_sim/faults", json=body, timeout=TIMEOUT)
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert sim.faults == []


def test_bad_faults_raise_value_error_in_python() -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        Fault("slow")
    with pytest.raises(ValueError, match="stations endpoint only"):
        Fault("duplicate_rows", endpoint="token")


def test_faults_leave_no_trace_on_stderr(sim: Simulator, capfd: pytest.CaptureFixture[str]) -> None:
    for kind in ("disconnect", "truncated", "html"):
        sim.add_fault(Fault(kind, endpoint="token", times=1))
        with pytest.raises(requests.RequestException):
            post_token(sim.api_url).json()
    sim.add_fault(Fault("hang", seconds=0, times=1))
    with pytest.raises(requests.ConnectionError):
        get_page(sim.api_url, "any")
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


# Fleet fingerprints and history


def test_fingerprint_is_sha256_of_the_sorted_id_firmware_lines() -> None:
    expected = hashlib.sha256(b"a\t1.0\nb\t2.0").hexdigest()
    assert fingerprint([("b", "2.0"), ("a", "1.0")]) == expected
    assert fingerprint(iter([("a", "1.0"), ("b", "2.0")])) == expected


def test_history_has_one_entry_per_change() -> None:
    inventory = Inventory(size=6, seed=4)
    pairs = [(s["id"], s["attributes"]["firmwareVersion"]) for s in inventory.stations()]
    assert inventory.history() == [inventory.fingerprint()] == [fingerprint(pairs)]
    inventory.add(2)
    inventory.rollout("9.0", 3)
    inventory.remove(1)
    inventory.add(0)  # no change, no entry
    inventory.rollout("9.0", 1, from_version="none")
    with inventory.lock:  # one change made of several
        inventory.add(1, at_start=True)
        inventory.remove_first(2)
    inventory.churn_step()
    history = inventory.history()
    assert len(history) == 6
    assert len(set(history)) == 6
    assert history[-1] == inventory.fingerprint()
    assert Inventory(size=0).history() == [fingerprint([])]


def test_same_fleet_same_fingerprint() -> None:
    assert Inventory(size=10, seed=9).fingerprint() == Inventory(size=10, seed=9).fingerprint()
    assert Inventory(size=10, seed=8).fingerprint() != Inventory(size=10, seed=9).fingerprint()
    inventory = Inventory(size=4, firmware_mix={"1.0": 1})
    original = inventory.fingerprint()
    assert len(inventory.rollout("2.0", 4)) == 4
    assert len(inventory.rollout("1.0", 4)) == 4
    assert inventory.history() == [original, inventory.history()[1], original]
    rows = [{"id": "a", "attributes": {"firmwareVersion": "1"}}, {"id": "b", "attributes": {}}]
    in_order, other_order = Inventory(size=0), Inventory(size=0)
    in_order.add_custom(rows)
    other_order.add_custom(
        [{**row, "attributes": {**row["attributes"], "label": "x"}} for row in rows[::-1]]
    )
    assert (
        in_order.fingerprint() == other_order.fingerprint() == fingerprint([("a", "1"), ("b", "")])
    )


def test_history_is_bounded() -> None:
    inventory = Inventory(size=1, firmware_mix={"1.0": 1})
    for step in range(HISTORY_LENGTH + 10):
        inventory.rollout(str(step % 2), 1)
    history = inventory.history()
    assert len(history) == HISTORY_LENGTH
    assert history[-1] == inventory.fingerprint()


def test_history_endpoint_and_one_entry_per_control_change(sim: Simulator) -> None:
    change = {"add": 2, "remove": 1, "rollout": {"to": "9.0", "count": 2}}
    assert requests.post(sim.api_url + "/_sim/inventory", json=change, timeout=TIMEOUT).ok
    response = requests.get(sim.api_url + "/_sim/history", timeout=TIMEOUT)
    assert response.json() == {"fingerprints": sim.inventory.history()}
    assert len(response.json()["fingerprints"]) == 2
    assert response.json()["fingerprints"][-1] == sim.inventory.fingerprint()


# Custom stations

TRICKY: dict[str, Any] = {
    "label": 'quote " backslash \\ newline \n tab \t carriage \r end',
    "chargeBoxIdentity": "Ladesäule ⚡ 充电站 🚗 \u0000 \u2028",
    "iccid": "",
    "imsi": None,
    "serialnumber": "x" * 300,
    "firmwareVersion": "2.4.1",
    "power": 22.5,
    "connectors": 2,
    "nested": {"list": [1, "two", None, {"three": 3}], "flag": False},
}


def test_custom_stations_round_trip_exactly(sim: Simulator) -> None:
    rows = [
        {"id": "custom-1", "attributes": TRICKY},
        {"attributes": {}},
        {"id": "", "attributes": {"firmwareVersion": None}},
        {"id": "custom-1", "attributes": {"firmwareVersion": 3}},
    ]
    response = requests.post(
        sim.api_url + "/_sim/inventory", json={"stations": rows}, timeout=TIMEOUT
    )
    assert response.status_code == 200
    added = response.json()["added"]
    assert added[0] == "custom-1"
    assert added[2:] == ["", "custom-1"]
    assert len(added[1]) == 36  # a generated UUID
    token = get_token(sim.api_url)
    served = get_page(sim.api_url, token, 100, 25).json()["data"]
    assert served == [
        {"type": "charging_stations", "id": station_id, "attributes": row["attributes"]}
        for station_id, row in zip(added, rows, strict=True)
    ]
    state = requests.get(sim.api_url + "/_sim/state", timeout=TIMEOUT).json()
    assert state["stations"] == 29
    assert state["firmware"][""] == 2  # no firmwareVersion at all, and null
    assert state["firmware"]["3"] == 1
    assert sim.inventory.history()[-1] == sim.inventory.fingerprint()
    assert len(sim.inventory.history()) == 2


def test_custom_stations_in_python_are_copies() -> None:
    inventory = Inventory(size=1)
    attributes = {"nested": {"a": [1]}}
    [station_id] = inventory.add_custom([{"attributes": attributes}])
    attributes["nested"]["a"].append(2)
    served = inventory.stations()[-1]
    served["attributes"]["nested"]["a"].append(3)
    assert inventory.stations()[-1] == {
        "type": "charging_stations",
        "id": station_id,
        "attributes": {"nested": {"a": [1]}},
    }
    inventory.churn_step()  # copes with stations without a firmwareVersion
    inventory.rollout("9.9", 10)


@pytest.mark.parametrize(
    ("stations", "message"),
    [
        ("not a list", "stations must be a list"),
        ([1], "stations[0] must be an object"),
        ([{"attributes": {}}, {"attributes": "x"}], "stations[1].attributes must be an object"),
        ([{"id": 5, "attributes": {}}], "stations[0].id must be a string"),
        ([{"attributes": {}, "type": "x"}], "stations[0] has unknown keys ['type']"),
    ],
)
def test_bad_custom_stations_are_400_and_change_nothing(
    sim: Simulator, stations: object, message: str
) -> None:
    before = sim.inventory.stations()
    body = {"add": 1, "stations": stations}
    response = requests.post(sim.api_url + "/_sim/inventory", json=body, timeout=TIMEOUT)
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert sim.inventory.stations() == before
    assert len(sim.inventory.history()) == 1


# The standalone process, as the end-to-end tests drive it


@pytest.mark.e2e
def test_standalone_process_switches_faults_over_http() -> None:
    process = SimulatorProcess("--stations", "12")
    try:
        url = process.url
        token = get_token(url)
        switch_on(url, kind="status", status=503, retry_after="1", times=1)
        failed = get_page(url, token)
        assert (failed.status_code, failed.headers["Retry-After"]) == (503, "1")
        assert get_page(url, token).status_code == 200

        switch_on(url, kind="hang", times=2)
        call = Call(url, "stations")
        call.start()
        wait_until(
            lambda: (
                requests.get(url + "/_sim/faults", timeout=TIMEOUT).json()["faults"][0][
                    "remaining_times"
                ]
                == 1
            ),
            TIMEOUT,
            "the request to take the fault",
        )
        switch_off(url)
        call.join(PROMPT)
        assert not call.is_alive()
        assert isinstance(call.error, http.client.RemoteDisconnected)
        assert get_page(url, token).json()["meta"]["pagination"]["total"] == 12
        log = requests.get(url + "/_sim/requests", timeout=TIMEOUT).json()
        assert [record["status"] for record in log] == [200, 503, 200, 200, 0, 200]
        assert RequestRecord(**log[0]) == RequestRecord("POST", TOKEN, 200)
    finally:
        assert process.stop() == 0
    assert "demo-secret" not in process.output
    assert process.lines == [f"simulator listening on {url}"]


def test_endless_wide_lists_new_stations_of_the_widest_text_without_end(sim: Simulator) -> None:
    token = get_token(sim.api_url)
    switch_on(sim.api_url, kind="endless_wide")
    page = get_page(sim.api_url, token, 10, 10**6).json()
    assert len(page["data"]) == 10
    assert page["meta"]["pagination"]["lastPage"] is False
    assert "total" not in page["meta"]["pagination"]
    for station in page["data"]:
        for name in ("label", "chargeBoxIdentity", "serialnumber", "firmwareVersion"):
            text = station["attributes"][name]
            assert len(text) == 256 and text.startswith("\U0001f600" * 255)
    assert len({station["attributes"]["firmwareVersion"] for station in page["data"]}) == 10
    switch_off(sim.api_url)
    assert_normal(sim)
