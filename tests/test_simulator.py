"""Tests of exporter/simulator/ over real HTTP on 127.0.0.1."""

from __future__ import annotations

import base64
import http.client
import json
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, quote_plus, urlsplit

import pytest
import requests

from exporter.simulator import FIRMWARE_MIX, Inventory, RequestRecord, Simulator
from exporter.simulator.inventory import spread_mix

STATIONS = "/api/cpoapi/v1/charging_stations/"
GRANT = {"grant_type": "client_credentials"}
CLIENT = {"client_id": "demo-client", "client_secret": "demo-secret"}
TIMEOUT = 5


class FakeClock:
    """A settable stand-in for time.monotonic."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sim(clock: FakeClock) -> Iterator[Simulator]:
    with Simulator(Inventory(size=25, seed=1), clock=clock) as simulator:
        yield simulator


def get_token(sim: Simulator) -> str:
    response = requests.post(sim.token_url, data=GRANT | CLIENT, timeout=TIMEOUT)
    assert response.status_code == 200
    return response.json()["access_token"]


def get_stations(sim: Simulator, token: str | None, query: str = "") -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(f"{sim.api_url}{STATIONS}{query}", headers=headers, timeout=TIMEOUT)


def raw_get(sim: Simulator, path: str, token: str) -> dict:
    """GET ``path`` exactly as written (requests would percent-encode the brackets)."""
    connection = http.client.HTTPConnection(urlsplit(sim.api_url).netloc, timeout=TIMEOUT)
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        response = connection.getresponse()
        assert response.status == 200
        return json.loads(response.read())
    finally:
        connection.close()


def offset_of(link: str) -> int:
    return int(parse_qs(urlsplit(link).query)["page[offset]"][0])


# Token endpoint


def basic(client_id: str, secret: str) -> dict[str, str]:
    credentials = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {credentials}"}


@pytest.mark.parametrize("form_encode", [True, False], ids=["rfc6749-encoded", "plain"])
def test_token_via_basic_auth(form_encode: bool) -> None:
    secret = "p@ss word:+/x"
    encode = quote_plus if form_encode else str
    with Simulator(Inventory(size=1), client_secret=secret) as sim:
        response = requests.post(
            sim.token_url,
            data=GRANT,
            headers=basic(encode("demo-client"), encode(secret)),
            timeout=TIMEOUT,
        )
        assert response.status_code == 200
        body = response.json()
        assert body["token_type"] == "Bearer"
        assert body["expires_in"] == 3600
        assert get_stations(sim, body["access_token"]).status_code == 200
        assert sim.tokens_issued == 1


def test_token_via_form_body(sim: Simulator) -> None:
    response = requests.post(sim.token_url, data=GRANT | CLIENT, timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert get_stations(sim, response.json()["access_token"]).status_code == 200


def test_token_via_query_string_like_the_quickstart_curl(sim: Simulator) -> None:
    response = requests.post(
        sim.token_url,
        params=GRANT | CLIENT,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=TIMEOUT,
    )
    assert response.status_code == 200
    assert get_stations(sim, response.json()["access_token"]).status_code == 200


@pytest.mark.parametrize(
    ("data", "headers"),
    [
        (GRANT | CLIENT | {"client_secret": "wrong"}, {}),
        (GRANT, basic("demo-client", "wrong")),
        (GRANT, {"Authorization": "Basic not-base64!"}),
        (GRANT, {}),
    ],
    ids=["wrong-form-secret", "wrong-basic-secret", "malformed-basic", "missing"],
)
def test_bad_client_credentials_are_invalid_client(
    sim: Simulator, data: dict[str, str], headers: dict[str, str]
) -> None:
    response = requests.post(sim.token_url, data=data, headers=headers, timeout=TIMEOUT)
    assert response.status_code == 401
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {"error": "invalid_client"}
    assert sim.tokens_issued == 0


@pytest.mark.parametrize("grant", [{"grant_type": "password"}, {}], ids=["password", "missing"])
def test_other_grants_are_unsupported(sim: Simulator, grant: dict[str, str]) -> None:
    response = requests.post(sim.token_url, data=grant | CLIENT, timeout=TIMEOUT)
    assert response.status_code == 400
    assert response.json() == {"error": "unsupported_grant_type"}


def test_token_expires_after_ttl(clock: FakeClock) -> None:
    with Simulator(Inventory(size=3), token_ttl=0.2, clock=clock) as sim:
        token = get_token(sim)
        assert get_stations(sim, token).status_code == 200
        clock.now += 0.19
        assert get_stations(sim, token).status_code == 200
        clock.now += 0.01
        assert get_stations(sim, token).status_code == 401


def test_expires_in_is_rounded_up() -> None:
    with Simulator(Inventory(size=1), token_ttl=0.2) as sim:
        response = requests.post(sim.token_url, data=GRANT | CLIENT, timeout=TIMEOUT)
        assert response.json()["expires_in"] == 1


def test_revoke_tokens_forces_401_until_a_new_token(sim: Simulator) -> None:
    old = [get_token(sim), get_token(sim)]
    assert sim.revoke_tokens() == 2
    assert all(get_stations(sim, token).status_code == 401 for token in old)
    assert get_stations(sim, get_token(sim)).status_code == 200
    assert sim.tokens_issued == 3


# Stations endpoint


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": "Bearer "},
        {"Authorization": "Basic x"},
    ],
    ids=["none", "unknown", "empty", "basic"],
)
def test_stations_without_a_valid_token_are_401(sim: Simulator, headers: dict[str, str]) -> None:
    response = requests.get(sim.api_url + STATIONS, headers=headers, timeout=TIMEOUT)
    assert response.status_code == 401
    assert response.headers["Content-Type"] == "application/vnd.api+json"
    assert response.json() == {"errors": [{"status": "401", "title": "Unauthorized"}]}


def test_bare_token_is_accepted_like_the_quickstart_curl(sim: Simulator) -> None:
    response = requests.get(
        sim.api_url + STATIONS, headers={"Authorization": get_token(sim)}, timeout=TIMEOUT
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("demanded", "bearer", "lower_case", "bare"),
    [("any", 200, 200, 200), ("bearer", 200, 200, 401), ("raw", 401, 401, 200)],
)
def test_the_simulator_demands_the_form_of_the_header_it_is_told(
    demanded: str, bearer: int, lower_case: int, bare: int
) -> None:
    with Simulator(Inventory(size=3), authorization=demanded) as sim:
        token = get_token(sim)
        statuses = [
            requests.get(
                sim.api_url + STATIONS, headers={"Authorization": value}, timeout=TIMEOUT
            ).status_code
            for value in (f"Bearer {token}", f"bearer {token}", token, "Bearer nope", "nope")
        ]
    assert statuses == [bearer, lower_case, bare, 401, 401]


def test_an_unknown_form_of_the_header_is_refused() -> None:
    with pytest.raises(ValueError, match="authorization must be one of"):
        Simulator(Inventory(size=1), authorization="basic")


def test_pagination_walk_collects_every_station_once(sim: Simulator) -> None:
    token = get_token(sim)
    ids: list[str] = []
    pages = []
    for _ in range(10):
        response = get_stations(sim, token, f"?page[limit]=7&page[offset]={len(ids)}")
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/vnd.api+json"
        body = response.json()
        pages.append(body)
        ids += [row["id"] for row in body["data"]]
        if body["meta"]["pagination"]["lastPage"]:
            break
    assert ids == [station["id"] for station in sim.inventory.stations()]
    assert len(set(ids)) == 25
    assert [page["meta"]["pagination"] for page in pages] == [
        {"total": 25, "offset": offset, "limit": 7, "lastPage": offset == 21}
        for offset in (0, 7, 14, 21)
    ]
    assert [offset_of(page["links"]["next"]) for page in pages[:-1]] == [7, 14, 21]
    assert "next" not in pages[-1]["links"]
    assert pages[-1]["links"]["current"] == (
        f"{sim.api_url}{STATIONS}?page%5Blimit%5D=7&page%5Boffset%5D=21"
    )


def test_station_resource_objects_have_the_quickstart_shape(sim: Simulator) -> None:
    row = get_stations(sim, get_token(sim), "?page[limit]=1").json()["data"][0]
    assert row["type"] == "charging_stations"
    assert set(row["attributes"]) == {
        "label",
        "chargeBoxIdentity",
        "iccid",
        "imsi",
        "serialnumber",
        "firmwareVersion",
    }
    assert row["attributes"]["label"] == "Station 1"
    assert row["attributes"]["chargeBoxIdentity"] == "cp_1"


def test_default_limit_and_no_trailing_slash(sim: Simulator) -> None:
    response = requests.get(
        sim.api_url + STATIONS.rstrip("/"),
        headers={"Authorization": f"Bearer {get_token(sim)}"},
        timeout=TIMEOUT,
    )
    assert response.status_code == 200
    assert len(response.json()["data"]) == 10
    assert response.json()["meta"]["pagination"]["limit"] == 10


def test_percent_encoded_and_raw_brackets_are_equal(sim: Simulator) -> None:
    token = get_token(sim)
    raw = raw_get(sim, STATIONS + "?page[limit]=3&page[offset]=5", token)
    encoded = raw_get(sim, STATIONS + "?page%5Blimit%5D=3&page%5Boffset%5D=5", token)
    assert raw == encoded
    assert raw["meta"]["pagination"]["offset"] == 5
    assert len(raw["data"]) == 3


def test_limit_above_max_is_clamped() -> None:
    with Simulator(Inventory(size=25), max_page_limit=10) as sim:
        body = get_stations(sim, get_token(sim), "?page[limit]=50").json()
        assert len(body["data"]) == 10
        assert body["meta"]["pagination"] == {
            "total": 25,
            "offset": 0,
            "limit": 10,
            "lastPage": False,
        }
        assert offset_of(body["links"]["next"]) == 10


def test_offset_past_the_end_is_an_empty_last_page(sim: Simulator) -> None:
    body = get_stations(sim, get_token(sim), "?page[offset]=30").json()
    assert body["data"] == []
    assert body["meta"]["pagination"]["lastPage"] is True
    assert "next" not in body["links"]


def test_quickstart_next_links_skip_records_like_the_sample() -> None:
    with Simulator(Inventory(size=25), quickstart_next_links=True) as sim:
        body = get_stations(sim, get_token(sim), "?page[limit]=1&page[offset]=0").json()
        assert body["meta"]["pagination"] == {
            "total": 25,
            "offset": 0,
            "limit": 1,
            "lastPage": False,
        }
        assert body["links"]["next"] == (
            f"{sim.api_url}{STATIONS}?page%5Blimit%5D=1&page%5Boffset%5D=10"
        )


@pytest.mark.parametrize(
    "query",
    [
        "?page[limit]=abc",
        "?page[limit]=-1",
        "?page[limit]=1.5",
        "?page[limit]=",
        "?page[limit]=0",
        "?page[offset]=-3",
        "?page%5Boffset%5D=x",
    ],
)
def test_bad_page_parameters_are_400(sim: Simulator, query: str) -> None:
    response = get_stations(sim, get_token(sim), query)
    assert response.status_code == 400
    assert response.headers["Content-Type"] == "application/vnd.api+json"
    assert response.json()["errors"][0]["status"] == "400"


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/"), ("GET", "/oauth2/token"), ("POST", STATIONS)]
)
def test_unknown_routes_are_404_json(sim: Simulator, method: str, path: str) -> None:
    response = requests.request(method, sim.api_url + path, timeout=TIMEOUT)
    assert response.status_code == 404
    assert response.json()["errors"][0]["status"] == "404"


def test_request_log_records_method_path_and_status(sim: Simulator) -> None:
    token = get_token(sim)
    get_stations(sim, token, "?page%5Blimit%5D=2")
    get_stations(sim, None)
    requests.get(sim.api_url + "/_sim/state", timeout=TIMEOUT)
    assert sim.requests == [
        RequestRecord("POST", "/oauth2/token", 200),
        RequestRecord("GET", f"{STATIONS}?page%5Blimit%5D=2", 200),
        RequestRecord("GET", STATIONS, 401),
    ]


def test_server_logs_nothing(sim: Simulator, capfd: pytest.CaptureFixture[str]) -> None:
    requests.post(sim.token_url, params=GRANT | CLIENT, timeout=TIMEOUT)
    get_stations(sim, "bad-token")
    out, err = capfd.readouterr()
    assert "demo-secret" not in out + err
    assert err == ""


def test_latency_delays_api_requests_but_not_control_requests(sim: Simulator) -> None:
    sim.latency = 0.1
    started = time.monotonic()
    get_token(sim)
    assert time.monotonic() - started >= 0.1
    sim.latency = 30
    try:
        state = requests.get(sim.api_url + "/_sim/state", timeout=2)
        assert state.status_code == 200
    finally:
        sim.latency = 0


def test_stop_is_quick_and_drops_keep_alive_connections() -> None:
    sim = Simulator(Inventory(size=1)).start()
    session = requests.Session()
    assert session.get(sim.api_url + "/_sim/state", timeout=TIMEOUT).status_code == 200
    started = time.monotonic()
    sim.stop()
    assert time.monotonic() - started < 1
    with pytest.raises(requests.ConnectionError):
        session.get(sim.api_url + "/_sim/state", timeout=TIMEOUT)


# Inventory


def test_same_seed_same_fleet_and_same_changes() -> None:
    def run(seed: int) -> list[object]:
        inventory = Inventory(size=20, seed=seed)
        changes = [inventory.add(3), inventory.remove(4), inventory.rollout("3.0.0", 5)]
        return [*changes, inventory.stations()]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_stations_are_well_formed_and_follow_the_mix() -> None:
    inventory = Inventory(size=50, firmware_mix={"1.0": 1, "2.0": 0}, seed=3)
    stations = inventory.stations()
    assert len(inventory) == 50
    assert len({station["id"] for station in stations}) == 50
    assert [s["attributes"]["label"] for s in stations[:2]] == ["Station 1", "Station 2"]
    assert inventory.firmware_counts() == {"1.0": 50}
    assert set(Inventory(size=100).firmware_counts()) == set(FIRMWARE_MIX)


def test_a_spread_mix_gives_a_fleet_of_many_firmware_versions() -> None:
    assert spread_mix(3) == {"9.0.0": 1.0, "9.0.1": 1.0, "9.0.2": 1.0}
    with pytest.raises(ValueError, match="versions must be >= 1"):
        spread_mix(0)
    counts = Inventory(size=20_000, firmware_mix=spread_mix(2_000), seed=1).firmware_counts()
    assert 1_990 < len(counts) <= 2_000 and sum(counts.values()) == 20_000


def test_add_remove_rollout() -> None:
    inventory = Inventory(size=10, firmware_mix={"1.0": 1}, seed=2)
    added = inventory.add(2)
    assert [s["id"] for s in inventory.stations()[-2:]] == added
    assert inventory.stations()[-1]["attributes"]["chargeBoxIdentity"] == "cp_12"

    removed = inventory.remove(3)
    remaining = {s["id"] for s in inventory.stations()}
    assert len(removed) == 3
    assert remaining.isdisjoint(removed)
    assert len(inventory) == 9

    rolled = inventory.rollout("2.0", 4)
    assert len(rolled) == 4
    assert inventory.firmware_counts() == {"1.0": 5, "2.0": 4}
    assert set(inventory.rollout("3.0", 10, from_version="2.0")) == set(rolled)
    assert inventory.firmware_counts() == {"1.0": 5, "3.0": 4}
    assert inventory.rollout("3.0", 10, from_version="3.0") == []

    assert len(inventory.remove(100)) == 9
    assert len(inventory) == 0


def test_rename_counts_a_suffix_up_and_leaves_the_fingerprint() -> None:
    inventory = Inventory(size=3, seed=2)
    history = inventory.history()
    [first] = inventory.rename(1)
    label = {s["id"]: s["attributes"]["label"] for s in inventory.stations()}
    serial = label[first].removesuffix(" r1")
    assert label[first] == f"{serial} r1" and serial.startswith("Station ")
    assert sorted(inventory.rename(3)) == sorted(label)
    assert sorted(s["attributes"]["label"] for s in inventory.stations()) == sorted(
        f"{text.removesuffix(' r1')} r{2 if station_id == first else 1}"
        for station_id, text in label.items()
    )
    assert inventory.history() == history  # a label is not in the fingerprint
    assert len(inventory.rename(5)) == 3
    assert inventory.rename(0) == []


def test_add_at_start_and_remove_first_shift_the_order() -> None:
    inventory = Inventory(size=3, seed=2)
    before = [s["id"] for s in inventory.stations()]
    [first] = inventory.add(1, at_start=True)
    assert [s["id"] for s in inventory.stations()] == [first, *before]
    assert inventory.stations()[0]["attributes"]["label"] == "Station 4"
    assert inventory.remove_first(2) == [first, before[0]]
    assert [s["id"] for s in inventory.stations()] == before[1:]
    assert inventory.remove_first(5) == before[1:]
    assert inventory.remove_first() == []


@pytest.mark.parametrize(
    ("mix", "size"), [({}, 1), ({"1.0": -1, "2.0": 2}, 1), ({"1.0": 0}, 1), (None, -1)]
)
def test_bad_inventory_arguments_are_rejected(mix: dict[str, float] | None, size: int) -> None:
    with pytest.raises(ValueError):
        Inventory(size=size, firmware_mix=mix)


def test_churn_step_is_small_and_only_moves_firmware_forward() -> None:
    order = ["2.4.1", "2.5.0", "3.0.0-rc1"]
    inventory = Inventory(size=30, seed=5)
    for _ in range(20):
        before = {s["id"]: s["attributes"]["firmwareVersion"] for s in inventory.stations()}
        inventory.churn_step()
        after = {s["id"]: s["attributes"]["firmwareVersion"] for s in inventory.stations()}
        assert len(before) - 1 <= len(after) <= len(before) + 2
        kept = before.keys() & after.keys()
        moved = [i for i in kept if before[i] != after[i]]
        assert len(moved) <= 3
        assert all(order.index(after[i]) > order.index(before[i]) for i in moved)
    assert inventory.stations() != Inventory(size=30, seed=5).stations()


class SignallingInventory(Inventory):
    """An Inventory that reports each churn step, so a test can wait for one."""

    def __init__(self) -> None:
        super().__init__(size=5)
        self.churned = threading.Event()

    def churn_step(self) -> None:
        super().churn_step()
        self.churned.set()


def test_churn_thread_churns_until_stop() -> None:
    inventory = SignallingInventory()
    with Simulator(inventory, churn_interval=0.01):
        assert inventory.churned.wait(timeout=TIMEOUT)
    inventory.churned.clear()
    assert not inventory.churned.wait(timeout=0.05)


# Control endpoints


def test_control_state_and_inventory(sim: Simulator) -> None:
    get_token(sim)
    state = requests.get(sim.api_url + "/_sim/state", timeout=TIMEOUT).json()
    assert state == {
        "stations": 25,
        "tokens_issued": 1,
        "firmware": sim.inventory.firmware_counts(),
        "requests": 1,
    }
    labels = {s["id"]: s["attributes"]["label"] for s in sim.inventory.stations()}
    change = {
        "add": 3,
        "remove": 2,
        "rollout": {"to": "3.0.0", "count": 5, "from": None},
        "rename": 4,
    }
    response = requests.post(sim.api_url + "/_sim/inventory", json=change, timeout=TIMEOUT)
    assert response.status_code == 200
    body = response.json()
    keys = ("added", "removed", "rolled_out", "renamed")
    assert [len(body[key]) for key in keys] == [3, 2, 5, 4]
    renamed = {s["id"]: s["attributes"]["label"] for s in sim.inventory.stations()}
    assert set(body["renamed"]).isdisjoint(body["removed"])
    assert {i: renamed[i] for i in body["renamed"]} == {
        i: f"{labels.get(i, renamed[i].removesuffix(' r1'))} r1" for i in body["renamed"]
    }
    assert len(sim.inventory) == 26
    assert sim.inventory.firmware_counts()["3.0.0"] == 5
    assert sim.requests == [RequestRecord("POST", "/oauth2/token", 200)]


@pytest.mark.parametrize(
    "body",
    [
        {"add": -1},
        {"remove": "2"},
        {"rollout": {"count": 1}},
        {"rollout": {"to": "1", "from": 3}},
        {"add": 1, "rename": -1},
    ],
)
def test_control_inventory_rejects_bad_input_without_changing_anything(
    sim: Simulator, body: dict[str, object]
) -> None:
    before = sim.inventory.stations()
    response = requests.post(sim.api_url + "/_sim/inventory", json=body, timeout=TIMEOUT)
    assert response.status_code == 400
    assert "error" in response.json()
    assert sim.inventory.stations() == before


def test_control_revoke_latency_and_requests(sim: Simulator) -> None:
    token = get_token(sim)
    revoked = requests.post(sim.api_url + "/_sim/revoke_tokens", timeout=TIMEOUT)
    assert revoked.json() == {"revoked": 1}
    assert get_stations(sim, token).status_code == 401

    latency = requests.post(sim.api_url + "/_sim/latency", json={"seconds": 0.02}, timeout=TIMEOUT)
    assert latency.status_code == 200
    assert sim.latency == 0.02
    bad = requests.post(sim.api_url + "/_sim/latency", json={"seconds": -1}, timeout=TIMEOUT)
    assert bad.status_code == 400

    log = requests.get(sim.api_url + "/_sim/requests", timeout=TIMEOUT).json()
    assert log == [
        {"method": "POST", "path": "/oauth2/token", "status": 200},
        {"method": "GET", "path": STATIONS, "status": 401},
    ]
    unknown = requests.get(sim.api_url + "/_sim/nope", timeout=TIMEOUT)
    assert unknown.status_code == 404


# Standalone process


def read_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The process's first stdout line, or fail after ``timeout`` seconds."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        assert selector.select(timeout), "the simulator printed nothing"
    return process.stdout.readline()


@pytest.mark.e2e
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_standalone_process(signum: signal.Signals) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "exporter.simulator", "--port", "0", "--stations", "4"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        line = read_line(process, timeout=TIMEOUT)
        assert line.startswith("simulator listening on http://127.0.0.1:")
        api_url = line.split()[-1]
        token = requests.post(
            api_url + "/oauth2/token", data=GRANT, auth=("demo-client", "demo-secret"), timeout=5
        ).json()["access_token"]
        response = requests.get(
            api_url + STATIONS, headers={"Authorization": f"Bearer {token}"}, timeout=TIMEOUT
        )
        assert response.json()["meta"]["pagination"]["total"] == 4
        process.send_signal(signum)
        assert process.wait(timeout=TIMEOUT) == 0
        assert process.stdout is not None
        assert process.stdout.read() == ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=TIMEOUT)


# HTTPS with a private CA, and secret rotation


def test_serves_https_with_the_given_certificate(tmp_path: Path) -> None:
    from tests.helpers import private_ca

    ca, server = private_ca(tmp_path)
    with Simulator(Inventory(size=3), tls_cert_file=str(server), tls_key_file=str(server)) as sim:
        assert sim.api_url.startswith("https://127.0.0.1:")
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(sim.api_url + "/_sim/state", timeout=TIMEOUT)
        with pytest.raises(requests.ConnectionError):  # plain HTTP to the TLS port
            requests.get(sim.api_url.replace("https", "http") + "/_sim/state", timeout=TIMEOUT)
        response = requests.post(sim.token_url, data=GRANT | CLIENT, timeout=TIMEOUT, verify=ca)
        token = response.json()["access_token"]
        stations = requests.get(
            f"{sim.api_url}{STATIONS}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=TIMEOUT,
            verify=ca,
        )
        assert stations.json()["meta"]["pagination"]["total"] == 3
        assert stations.json()["links"]["current"].startswith(sim.api_url)


def test_the_client_secret_can_be_rotated(sim: Simulator) -> None:
    get_token(sim)
    response = requests.post(
        sim.api_url + "/_sim/client_secret", json={"client_secret": "rotated"}, timeout=TIMEOUT
    )
    assert response.json() == {"rotated": True}
    old = requests.post(sim.token_url, data=GRANT | CLIENT, timeout=TIMEOUT)
    assert old.status_code == 401
    new = requests.post(
        sim.token_url, data=GRANT | CLIENT | {"client_secret": "rotated"}, timeout=TIMEOUT
    )
    assert new.status_code == 200
    bad = requests.post(sim.api_url + "/_sim/client_secret", json={"client_secret": ""}, timeout=5)
    assert bad.status_code == 400


@pytest.mark.e2e
def test_the_command_line_serves_https(tmp_path: Path) -> None:
    from tests.helpers import SimulatorProcess, private_ca

    ca, server = private_ca(tmp_path)
    process = SimulatorProcess("--tls-cert-file", str(server), "--tls-key-file", str(server))
    try:
        assert process.url.startswith("https://")
        assert requests.get(process.url + "/_sim/state", timeout=TIMEOUT, verify=ca).ok
    finally:
        assert process.stop() == 0
