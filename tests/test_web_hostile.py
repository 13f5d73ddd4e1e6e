"""Hostile scrapers against the web surface: HEAD, Accept-Encoding, gzip members, 405, huge
query values, unexpected errors, dual-stack listening, the web config's empty and costly
cases, and a flood of wrong passwords. Real HTTP servers on loopback addresses."""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import logging
import socket
import threading
import zlib
from collections.abc import Callable, Iterator

import bcrypt
import pytest
from prometheus_client import CollectorRegistry, Gauge

from exporter.errors import ConfigError
from exporter.exposition import Exposition
from exporter.listeners import listen
from exporter.metrics import FleetCollector
from exporter.model import Change, MandantState, Snapshot, Station
from exporter.refused import RefusedRequests
from exporter.stationchanges import StationChanges
from exporter.web import (
    OPENMETRICS,
    TEXT_FORMAT,
    ExporterApp,
    accepts_gzip,
    accepts_openmetrics,
    serve,
)
from exporter.webauth import BasicAuth, TooManyLogins, client_key
from exporter.webconfig import MAX_BCRYPT_COST, load_web_config
from tests.helpers import ipv6_loopback, wait_until

PASSWORD = b"right-Password-1"
HASH = bcrypt.hashpw(PASSWORD, bcrypt.gensalt(rounds=4))
STATIONS = [
    Station(f"id-{i}", f"Station {i}", f"cp_{i}", f"1.{i % 3}", f"SN{i}") for i in range(50)
]
PATHS = ["/metrics", "/healthz", "/readyz", "/changes", "/changes?limit=0", "/", "/nope"]


def basic(credentials: bytes) -> str:
    return "Basic " + base64.b64encode(credentials).decode()


READY = [
    MandantState(name="north", snapshot=Snapshot.build(STATIONS, 0.0), up=True, last_success=0.0)
]


def states() -> list[MandantState]:
    return READY


def live_registry() -> CollectorRegistry:
    """Per-scrape metrics with a fixed value, so two bodies can be compared byte for byte."""
    registry = CollectorRegistry()
    Gauge("process_fixed_bytes", "A live metric.", registry=registry).set(42)
    return registry


def exposition() -> Exposition:
    return Exposition(FleetCollector(), states, live_registry())


@pytest.fixture
def start() -> Iterator[Callable[..., int]]:
    """Serves an ExporterApp on 127.0.0.1 (or ``host``); returns the port."""
    servers = []

    def start(app: ExporterApp | None = None, host: str = "127.0.0.1") -> int:
        station_changes = StationChanges(max_entries=5)
        station_changes.record("north", 1.0, [Change("added", "s1", "S 1", "cp_s1", "", "1.0")])
        app = app or ExporterApp(exposition(), states, station_changes)
        server, thread = serve(app, [listen(host, 0)])
        servers.append((server, thread))
        return server.server_address[1]

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    """One server of the plain app for the tests that only read."""
    station_changes = StationChanges(max_entries=5)
    station_changes.record("north", 1.0, [Change("added", "s1", "S 1", "cp_s1", "", "1.0")])
    server, thread = serve(
        ExporterApp(exposition(), states, station_changes), [listen("127.0.0.1", 0)]
    )
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(5)


def raw(port: int, request: bytes, host: str = "127.0.0.1") -> tuple[bytes, dict[str, str], bytes]:
    """Status line, headers and the exact bytes after them, as the server sent them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.settimeout(5)
        sock.connect((host, port))
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def get(port: int, path: str, method: str = "GET", **headers: str):
    text = "".join(f"{name.replace('_', '-')}: {value}\r\n" for name, value in headers.items())
    return raw(port, f"{method} {path} HTTP/1.0\r\n{text}\r\n".encode())


# HEAD


@pytest.mark.parametrize("path", PATHS)
def test_head_has_the_status_and_headers_of_get_and_no_body(port, path):
    status, headers, body = get(port, path)
    head_status, head_headers, head_body = get(port, path, "HEAD")
    assert head_body == b""
    assert head_status == status
    assert int(head_headers["content-length"]) == len(body) > 0
    del headers["date"], head_headers["date"]
    assert head_headers == headers


def test_head_of_gzipped_metrics_gives_the_gzip_length(port):
    _, headers, body = get(port, "/metrics", Accept_Encoding="gzip")
    _, head_headers, head_body = get(port, "/metrics", "HEAD", Accept_Encoding="gzip")
    assert head_body == b"" and head_headers["content-encoding"] == "gzip"
    assert int(head_headers["content-length"]) == len(body) == int(headers["content-length"])


# Accept-Encoding


@pytest.mark.parametrize(
    ("header", "gzipped"),
    [
        ("gzip", True),
        ("GZip", True),
        ("x-gzip", True),
        (" gzip ; Q=0.5 ", True),
        ("gzip;q=0.001", True),
        ("br;q=1.0, gzip;q=0.5", True),
        ("*", True),
        ("*;q=0, gzip", True),
        ("gzip;q=0", False),
        ("gzip; q=0.000", False),
        ("gzip;q=0, *", False),
        ("*;q=0", False),
        ("identity", False),
        ("identity;q=1, gzip;q=0", False),
        ("deflate, br", False),
        ("gzipped", False),
        ("", False),
        ("gzip;q=2", False),  # not a q-value: not acceptable
        ("gzip;q=nan", False),
        ("gzip;q=1e0", False),
        ("gzip;q=", False),
    ],
)
def test_accept_encoding_with_q_values(header, gzipped):
    assert accepts_gzip(header) is gzipped


PROMETHEUS_2 = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
PROMETHEUS_3 = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,"
    "application/openmetrics-text;version=0.0.1;q=0.4,"
    "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1"
)


@pytest.mark.parametrize(
    ("header", "openmetrics"),
    [
        (PROMETHEUS_2, True),
        (PROMETHEUS_3, True),
        ("application/openmetrics-text", True),
        ("Application/OpenMetrics-Text; Version=1.0.0", True),
        ("text/plain, application/openmetrics-text", True),  # as prometheus_client reads it
        ("text/plain;version=1.0.0, application/openmetrics-text", False),
        ("application/openmetrics-text;version=0.0.1", False),
        ("application/openmetrics-text;version=2.0.0", False),
        ("text/plain", False),
        ("*/*", False),
        ("", False),
        # prometheus_client's choose_encoder raises TypeError on these (a 500 before)
        ("application/openmetrics-text;version=\xff", False),
        ("application/openmetrics-text;version=1.x", True),
        ("text/plain;version=a.b.c", False),
        ("application/openmetrics-text;version=", False),
        (";;,,=;version", False),
    ],
)
def test_accept_chooses_the_format(header, openmetrics):
    assert accepts_openmetrics(header) is openmetrics


@pytest.mark.parametrize(
    "accept", ["application/openmetrics-text;version=1.x", "text/plain;version=ÿ"]
)
def test_an_odd_accept_version_gets_an_answer_that_names_its_format(port, accept):
    status, headers, body = get(port, "/metrics", Accept=accept)
    assert status == b"HTTP/1.0 200 OK"
    if "openmetrics" in accept:
        assert headers["content-type"] == OPENMETRICS and body.endswith(b"# EOF\n")
    else:
        assert headers["content-type"] == TEXT_FORMAT and b"# EOF" not in body


def test_gzip_q_0_gets_plain_text(port):
    _, headers, body = get(port, "/metrics", Accept_Encoding="gzip;q=0, identity")
    assert "content-encoding" not in headers
    assert b"beenergised_up" in body
    _, headers, body = get(port, "/metrics", Accept_Encoding="identity;q=0.5, GZIP;q=1")
    assert headers["content-encoding"] == "gzip"
    assert b"beenergised_up" in gzip.decompress(body)


# One gzip member


def first_member(body: bytes) -> bytes:
    """What a client that reads one gzip member only (curl --compressed) gets; the body must
    end with that member."""
    reader = zlib.decompressobj(31)
    text = reader.decompress(body) + reader.flush()
    assert reader.eof, "the gzip member is cut short"
    assert reader.unused_data == b"", "bytes after the first gzip member"
    return text


@pytest.mark.parametrize("openmetrics", [False, True])
def test_gzip_body_is_one_member_holding_everything(openmetrics):
    subject = exposition()
    plain = b"".join(subject.body(openmetrics=openmetrics))
    packed = b"".join(subject.body(openmetrics=openmetrics, gzipped=True))
    assert first_member(packed) == gzip.decompress(packed) == plain
    assert b"process_fixed_bytes 42.0" in plain
    assert plain.endswith(b"# EOF\n") is openmetrics
    assert b"beenergised_charging_station_info{" in plain


def test_the_fleet_is_compressed_once_per_rendering():
    subject = exposition()
    first = list(subject.body(gzipped=True))
    second = list(subject.body(gzipped=True))
    assert len(first) > 1
    assert all(a is b for a, b in zip(first[:-1], second[:-1], strict=True))


def test_parallel_gzip_scrapes_each_get_a_whole_member():
    subject = exposition()
    plain = b"".join(subject.body())
    results: list[bytes] = []
    failures: list[BaseException] = []

    def scrape() -> None:
        try:
            for _ in range(30):
                results.append(first_member(b"".join(subject.body(gzipped=True))))
        except BaseException as e:  # reported by the main thread
            failures.append(e)

    threads = [threading.Thread(target=scrape) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert failures == []
    assert len(results) == 8 * 30 and set(results) == {plain}


def test_gzip_over_http_is_one_member_with_the_process_metrics(port):
    _, headers, body = get(
        port,
        "/metrics",
        Accept_Encoding="gzip",
        Accept="application/openmetrics-text; version=1.0.0",
    )
    assert headers["content-encoding"] == "gzip"
    text = first_member(body)
    assert b"process_fixed_bytes 42.0\n# EOF\n" in text and text.endswith(b"# EOF\n")


# /changes limit, 405, unexpected errors


@pytest.mark.parametrize("limit", ["9" * 4301, "1" + "0" * 9, "0" * 10 + "1", "-1", "0x10"])
def test_changes_refuses_huge_or_odd_limits_with_400(port, limit):
    status, headers, body = get(port, f"/changes?limit={limit}")
    assert status == b"HTTP/1.0 400 Bad Request"
    assert headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert "limit must be a whole number from 1 to 999999999" in error
    assert len(error) < 120  # the text is shortened, not echoed whole


def test_changes_limit_above_the_ring_gives_the_whole_ring(port):
    status, _, body = get(port, "/changes?limit=999999999")
    assert status == b"HTTP/1.0 200 OK"
    assert [c["id"] for c in json.loads(body)["changes"]] == [1]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "BREW"])
@pytest.mark.parametrize("path", ["/metrics", "/", "/changes"])
def test_405_says_which_methods_are_allowed(port, method, path):
    status, headers, body = get(port, path, method)
    assert status == b"HTTP/1.0 405 Method Not Allowed"
    assert headers["allow"] == "GET, HEAD"
    assert body == b"method not allowed\n"


def test_an_unexpected_error_is_a_plain_500_and_one_log_line(start, caplog, capfd):
    def broken() -> list[MandantState]:
        raise RuntimeError("secret detail of the failure")

    app = ExporterApp(exposition(), broken, StationChanges(5))
    caplog.set_level(logging.DEBUG, logger="exporter.web")
    port = start(app)
    status, headers, body = get(port, "/readyz")
    assert status == b"HTTP/1.0 500 Internal Server Error"
    assert body == b"internal error\n"
    assert headers["content-length"] == str(len(body))
    head_status, _, head_body = get(port, "/readyz", "HEAD")
    assert head_status == status and head_body == b""
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        "error answering GET /readyz",
        "error answering HEAD /readyz",
    ]
    assert all(r.exc_info and "secret detail" in str(r.exc_info[1]) for r in errors)
    assert "Traceback" not in capfd.readouterr().err


# Dual-stack


def test_an_empty_host_listens_on_ipv6_and_ipv4(start):
    if not ipv6_loopback():
        pytest.skip("this machine has no IPv6 loopback (::1), so dual-stack cannot be shown")
    port = start(host="")
    for host in ["127.0.0.1", "::1"]:
        status, _, body = raw(port, b"GET /healthz HTTP/1.0\r\n\r\n", host)
        assert (status, body) == (b"HTTP/1.0 200 OK", b"ok\n"), host


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),  # an IPv4 client of a dual-stack socket
        ("2001:db8::1", "2001:db8::/64"),
        ("2001:db8::ffff:1", "2001:db8::/64"),
        ("2001:db8:0:1::1", "2001:db8:0:1::/64"),
        ("", ""),
    ],
)
def test_clients_are_told_apart_by_ipv4_address_or_ipv6_slash_64(address, key):
    assert client_key(address) == key


# The web config file: empty, and bcrypt costs


@pytest.mark.parametrize("text", ["", "# only a comment\n\n", "{}\n", "basic_auth_users: {}\n"])
def test_a_web_config_that_sets_nothing_warns(tmp_path, text):
    path = tmp_path / "web.yml"
    path.write_text(text)
    config = load_web_config(str(path))
    assert config.ssl_context is None and not config.users
    assert config.warnings == (
        f"{path}: the web config file sets neither tls_server_config nor basic_auth_users, "
        "so the endpoints are served without TLS and without basic auth",
    )


def hash_of_cost(cost: int) -> bytes:
    """A well-formed bcrypt hash of any cost, made without running bcrypt."""
    return bcrypt.gensalt(rounds=cost) + b"O" * 31


def test_bcrypt_costs_above_the_maximum_are_refused_naming_the_user(tmp_path):
    for cost in (MAX_BCRYPT_COST + 1, 31):
        hashed = hash_of_cost(cost).decode()
        path = tmp_path / "web.yml"
        path.write_text(f"basic_auth_users:\n  ok: {HASH.decode()}\n  carol: {hashed}\n")
        with pytest.raises(ConfigError) as caught:
            load_web_config(str(path))
        message = str(caught.value)
        assert message.startswith(
            f"{path}: basic_auth_users.carol: bcrypt cost {cost} is above the maximum of 14 "
        )
        assert hashed not in message and hashed[7:29] not in message


def test_high_bcrypt_costs_are_accepted_with_a_warning(tmp_path):
    path = tmp_path / "web.yml"
    high, fine = hash_of_cost(MAX_BCRYPT_COST), hash_of_cost(12)
    path.write_text(f"basic_auth_users:\n  dave: {high.decode()}\n  erin: {fine.decode()}\n")
    config = load_web_config(str(path))
    assert set(config.users) == {"dave", "erin"}
    assert len(config.warnings) == 1
    assert config.warnings[0].startswith(
        f"{path}: basic_auth_users.dave: bcrypt cost 14 makes every login"
    )
    assert high.decode() not in config.warnings[0]


def test_basic_auth_starts_without_running_bcrypt(monkeypatch):
    calls: list[object] = []
    monkeypatch.setattr(bcrypt, "hashpw", lambda *args: calls.append(args))
    monkeypatch.setattr(bcrypt, "checkpw", lambda *args: calls.append(args))
    BasicAuth({"alice": hash_of_cost(31)})
    assert calls == []


# A flood of wrong passwords


class SlowBcrypt:
    """bcrypt.checkpw that records each password it checks; while ``hold`` is clear, the run
    in progress waits, so the test decides when the queue moves."""

    def __init__(self) -> None:
        self.checked: list[bytes] = []
        self.running = threading.Event()
        self.hold = threading.Event()
        self._real = bcrypt.checkpw

    def __call__(self, password: bytes, hashed: bytes) -> bool:
        self.running.set()
        assert self.hold.wait(15), "the test never released bcrypt"
        self.checked.append(password)
        return self._real(password, hashed)


@pytest.fixture
def slow_bcrypt(monkeypatch) -> Iterator[SlowBcrypt]:
    slow = SlowBcrypt()
    monkeypatch.setattr(bcrypt, "checkpw", slow)
    yield slow
    slow.hold.set()


def waiting_in(auth: BasicAuth) -> int:
    """How many password checks wait for their turn."""
    return len(auth._queue._first) + len(auth._queue._last)


def test_one_client_has_one_check_at_a_time_and_the_rest_get_refused_at_once(slow_bcrypt):
    auth = BasicAuth({"alice": HASH})
    first = threading.Thread(target=auth.check, args=(basic(b"alice:wrong-0"), "192.0.2.1"))
    first.start()
    assert slow_bcrypt.running.wait(5)
    for i in range(1, 50):
        with pytest.raises(TooManyLogins):
            auth.check(basic(b"alice:wrong-%d" % i), "192.0.2.1")
    with pytest.raises(TooManyLogins):  # the same client through a dual-stack socket
        auth.check(basic(b"alice:wrong"), "::ffff:192.0.2.1")
    slow_bcrypt.hold.set()
    first.join(5)
    assert slow_bcrypt.checked == [b"wrong-0"]
    assert auth.check(basic(b"alice:wrong-again"), "192.0.2.1") is False  # its turn is over


def test_the_queue_of_waiting_clients_is_bounded(slow_bcrypt):
    auth = BasicAuth({"alice": HASH})
    waiting = auth._queue.MAX_WAITING
    threads = [
        threading.Thread(target=auth.check, args=(basic(b"alice:wrong"), f"192.0.2.{n}"))
        for n in range(1 + waiting)  # one running, the rest waiting
    ]
    for thread in threads:
        thread.start()
    wait_until(lambda: waiting_in(auth) == waiting, what="a full queue")
    with pytest.raises(TooManyLogins):
        auth.check(basic(b"alice:" + PASSWORD), "198.51.100.1")
    slow_bcrypt.hold.set()
    for thread in threads:
        thread.join(10)
    assert len(slow_bcrypt.checked) == 1 + waiting
    assert auth.check(basic(b"alice:" + PASSWORD), "198.51.100.1") is True


def test_a_right_password_waits_for_one_check_per_other_client_however_big_the_flood(
    start, slow_bcrypt
):
    """Three addresses flood wrong passwords from 30 threads; a fourth client's right password
    is checked after at most one run of each of them, then the flood goes on."""
    auth = BasicAuth({"alice": HASH})
    station_changes = StationChanges(5)
    port = start(ExporterApp(exposition(), states, station_changes, auth=auth))
    flooders = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    stop = threading.Event()
    answers: dict[int, int] = {}
    lock = threading.Lock()

    def flood(number: int) -> None:
        source = flooders[number % len(flooders)]
        for attempt in range(10_000):
            if stop.is_set():
                return
            status = login(port, source, b"alice:wrong-%d-%d" % (number, attempt))
            with lock:
                answers[status] = answers.get(status, 0) + 1

    threads = [threading.Thread(target=flood, args=(n,), daemon=True) for n in range(30)]
    for thread in threads:
        thread.start()
    assert slow_bcrypt.running.wait(5)
    # Each flooding address has one check running or waiting; every other attempt gets 429.
    wait_until(lambda: answers.get(429, 0) >= 300, what="the flood to be refused 300 times")
    wait_until(lambda: waiting_in(auth) == len(flooders) - 1, what="a queue")
    right: list[int] = []
    client = threading.Thread(
        target=lambda: right.append(login(port, "127.0.0.5", b"alice:" + PASSWORD))
    )
    client.start()
    wait_until(lambda: waiting_in(auth) == len(flooders), what="the right login to wait")
    slow_bcrypt.hold.set()
    client.join(10)
    assert right == [200]
    ahead = slow_bcrypt.checked.index(PASSWORD)
    assert ahead <= len(flooders), slow_bcrypt.checked[: ahead + 1]
    # The flood did not drain first: it is still being answered after the right login.
    refused = answers.get(429, 0)
    wait_until(lambda: answers.get(429, 0) > refused + 100, what="the flood to go on")
    stop.set()
    for thread in threads:
        thread.join(10)
    assert answers.get(401, 0) >= 1 and set(answers) <= {401, 429}


def login(port: int, source: str, credentials: bytes) -> int:
    """The status of GET /metrics with basic auth, sent from the loopback address ``source``."""
    connection = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=15, source_address=(source, 0)
    )
    try:
        connection.request("GET", "/metrics", headers={"Authorization": basic(credentials)})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def test_the_429_answer(start, slow_bcrypt):
    auth = BasicAuth({"alice": HASH})
    refused = RefusedRequests()
    port = start(ExporterApp(exposition(), states, StationChanges(5), auth=auth, refused=refused))
    held = threading.Thread(target=login, args=(port, "127.0.0.1", b"alice:wrong"))
    held.start()
    assert slow_bcrypt.running.wait(5)
    status, headers, body = get(port, "/metrics", Authorization=basic(b"alice:" + PASSWORD))
    assert status == b"HTTP/1.0 429 Too Many Requests"
    assert headers["retry-after"] == "1"
    assert body == b"too many logins at once; try again\n"
    slow_bcrypt.hold.set()
    held.join(5)
    status, _, _ = get(port, "/metrics", Authorization=basic(b"alice:" + PASSWORD))
    assert status == b"HTTP/1.0 200 OK"
    # the held wrong password, then the refused right one
    counts = {s.labels["reason"]: s.value for s in next(iter(refused.collect())).samples}
    assert {reason: n for reason, n in counts.items() if n} == {
        "unauthorized": 1,
        "too_many_logins": 1,
    }
