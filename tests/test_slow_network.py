"""Slow and oversized answers: the simulator's drip and oversized faults, the wall-clock bound
and size limit of every request (exporter/http.py), the token endpoint's limits and the
refresh overrun counter. Real HTTP on 127.0.0.1 against the in-process simulator, except where
``responses`` stands in for urllib3's own errors."""

from __future__ import annotations

import gzip
import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import responses
import trustme
import urllib3

from exporter.auth import TokenSource
from exporter.check import hint
from exporter.errors import (
    FAILURE_REASONS,
    ApiConnectionError,
    ApiTimeoutError,
    ResponseTooLargeError,
)
from exporter.http import Deadline, Limits, RetryPolicy, send
from exporter.model import Mandant, Secret
from exporter.refresh import MandantRefresher
from exporter.session import BoundedSession
from exporter.simulator import DRIP_BYTES, OVERSIZED_BYTES, Fault, Inventory, Simulator

STATIONS = "/api/cpoapi/v1/charging_stations/"
ONCE = RetryPolicy(attempts=1)
BOUND = 0.5  # seconds: the request bound in these tests
FAST = Limits(request_timeout=BOUND)
SLACK = 1.0  # seconds a cut may take beyond its bound on a busy machine


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(Inventory(size=30, seed=3)) as simulator:
        yield simulator


def token(sim: Simulator) -> str:
    return requests.post(
        sim.token_url,
        data={"grant_type": "client_credentials"},
        auth=("demo-client", "demo-secret"),
        timeout=5,
    ).json()["access_token"]


def page_url(sim: Simulator) -> str:
    return f"{sim.api_url}{STATIONS}?page%5Blimit%5D=10&page%5Boffset%5D=0"


def fetch(
    sim: Simulator,
    session: requests.Session | None = None,
    limits: Limits = FAST,
    deadline: float = 60.0,
    counted: list[str] | None = None,
) -> bytes:
    answer = send(
        session or BoundedSession(),
        "GET",
        page_url(sim),
        endpoint="charging_stations",
        what="stations",
        on_response=lambda _, code: (counted if counted is not None else []).append(code),
        deadline=Deadline(deadline),
        retry=ONCE,
        limits=limits,
        headers={"Authorization": f"Bearer {token(sim)}"},
    )
    assert answer.status_code == 200
    return answer.body


def raw_request(sim: Simulator, tok: str) -> socket.socket:
    """A GET of the first page on a raw socket, for watching bytes arrive."""
    host, port = sim.api_url.removeprefix("http://").split(":")
    conn = socket.create_connection((host, int(port)), timeout=5)
    conn.sendall(
        f"GET {STATIONS}?page%5Blimit%5D=10 HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {tok}\r\nConnection: close\r\n\r\n".encode()
    )
    return conn


def receive_all(conn: socket.socket) -> bytes:
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    return data


# --- the simulator's faults ---------------------------------------------------------------------


def test_drip_sends_the_body_a_few_bytes_at_a_time_until_cleared(sim: Simulator) -> None:
    normal = requests.get(page_url(sim), headers={"Authorization": f"Bearer {token(sim)}"})
    tok = token(sim)
    sim.add_fault(Fault("drip", seconds=30))
    with raw_request(sim, tok) as conn:
        head = b""
        while b"\r\n\r\n" not in head:
            head += conn.recv(1)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert f"Content-Length: {len(normal.content)}".encode() in head
        assert len(conn.recv(65536)) == DRIP_BYTES  # one piece, then a pause
        conn.settimeout(0.3)
        with pytest.raises(TimeoutError):
            conn.recv(65536)
        sim.clear_faults()  # the rest comes at once
        conn.settimeout(5)
        rest = receive_all(conn)
    assert json.loads(normal.content[:DRIP_BYTES] + rest) == normal.json()


def test_drip_of_the_headers_sends_the_status_line_a_few_bytes_at_a_time(sim: Simulator) -> None:
    tok = token(sim)
    sim.add_fault(Fault("drip", part="headers", seconds=30))
    with raw_request(sim, tok) as conn:
        assert conn.recv(65536) == b"HT"
        conn.settimeout(0.3)
        with pytest.raises(TimeoutError):
            conn.recv(65536)
        sim.clear_faults()
        conn.settimeout(5)
        answer = b"HT" + receive_all(conn)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert len(json.loads(body)["data"]) == 10


def test_oversized_pads_the_page_to_its_size_as_valid_json(sim: Simulator) -> None:
    normal = requests.get(page_url(sim), headers={"Authorization": f"Bearer {token(sim)}"})
    sim.add_fault(Fault("oversized", size=1_000_000, times=1))
    padded = requests.get(page_url(sim), headers={"Authorization": f"Bearer {token(sim)}"})
    assert len(padded.content) == int(padded.headers["Content-Length"]) == 1_000_000
    document = padded.json()
    assert set(document.pop("padding")) == {"x"}
    assert document == normal.json()


def test_oversized_defaults_to_50_mb_and_works_on_the_token_endpoint(sim: Simulator) -> None:
    tok = token(sim)
    sim.add_fault(Fault("oversized", times=1))
    with requests.get(page_url(sim), headers={"Authorization": f"Bearer {tok}"}, stream=True) as r:
        assert int(r.headers["Content-Length"]) == OVERSIZED_BYTES == 50_000_000
    sim.add_fault(Fault("oversized", endpoint="token", size=100_000, times=1))
    response = requests.post(
        sim.token_url,
        data={"grant_type": "client_credentials"},
        auth=("demo-client", "demo-secret"),
    )
    assert len(response.content) == 100_000
    assert response.json()["token_type"] == "Bearer"


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ({"kind": "drip", "seconds": -1}, "seconds for a drip fault"),
        ({"kind": "drip", "part": "trailers"}, "part of a drip fault must be one of ('body', "),
        ({"kind": "latency", "seconds": 1, "part": "body"}, "part is for drip faults, not for"),
        ({"kind": "oversized", "size": 0}, "size must be an integer from 1"),
        ({"kind": "oversized", "size": 2**31}, "size must be an integer from 1"),
        ({"kind": "oversized", "size": "1MB"}, "size must be an integer"),
        ({"kind": "drip", "size": 10}, "size is for oversized faults"),
        ({"kind": "oversized", "seconds": 1}, "seconds is for latency, hang and drip faults"),
    ],
)
def test_bad_drip_and_oversized_faults_are_refused(sim: Simulator, fault: dict, message: str):
    response = requests.post(sim.api_url + "/_sim/faults", json=fault, timeout=5)
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert sim.faults == []


# --- the wall-clock bound of one request --------------------------------------------------------


@pytest.mark.parametrize("part", ["body", "headers"])
def test_a_dripping_answer_is_cut_at_the_request_bound(sim: Simulator, part: str) -> None:
    sim.add_fault(Fault("drip", part=part, seconds=0.05))  # 40 bytes/s: minutes for a page
    counted: list[str] = []
    started = time.monotonic()
    with pytest.raises(ApiTimeoutError, match=r"within 0\.5s \(--api\.request-timeout\)"):
        fetch(sim, counted=counted)
    assert BOUND <= time.monotonic() - started < BOUND + SLACK
    assert counted == ["error"]


def test_the_refresh_deadline_bounds_a_request_below_the_request_bound(sim: Simulator) -> None:
    sim.add_fault(Fault("drip", seconds=0.05))
    started = time.monotonic()
    with pytest.raises(ApiTimeoutError, match="refresh deadline reached"):
        fetch(sim, limits=Limits(request_timeout=30), deadline=BOUND)
    assert time.monotonic() - started < BOUND + SLACK


def test_https_requests_are_cut_at_the_bound_too(sim: Simulator, tmp_path: Path) -> None:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.configure_cert(context)
    sim._server.socket = context.wrap_socket(sim._server.socket, server_side=True)  # type: ignore[union-attr]
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    session = BoundedSession()
    session.verify = str(tmp_path / "ca.pem")
    url = page_url(sim).replace("http://", "https://")
    tok = requests.post(
        sim.token_url.replace("http://", "https://"),
        data={"grant_type": "client_credentials"},
        auth=("demo-client", "demo-secret"),
        verify=session.verify,
        timeout=5,
    ).json()["access_token"]

    def get() -> bytes:
        return send(
            session,
            "GET",
            url,
            endpoint="charging_stations",
            what="stations",
            on_response=lambda *_: None,
            deadline=Deadline(60),
            retry=ONCE,
            limits=FAST,
            headers={"Authorization": f"Bearer {tok}"},
        ).body

    assert len(json.loads(get())["data"]) == 10
    sim.add_fault(Fault("drip", seconds=0.05, times=1))
    started = time.monotonic()
    with pytest.raises(ApiTimeoutError):
        get()
    assert time.monotonic() - started < BOUND + SLACK
    assert len(json.loads(get())["data"]) == 10


def test_a_cut_connection_is_not_reused(sim: Simulator) -> None:
    session = BoundedSession()
    fetch(sim, session)  # a pooled keep-alive connection
    sim.add_fault(Fault("drip", seconds=0.05, times=1))
    with pytest.raises(ApiTimeoutError):
        fetch(sim, session)
    # One attempt only: a reused dead connection would fail it.
    assert json.loads(fetch(sim, session))["meta"]["pagination"]["total"] == 30


def test_a_slow_but_complete_answer_within_the_bound_is_taken(sim: Simulator) -> None:
    sim.latency = 0.2
    assert len(json.loads(fetch(sim))["data"]) == 10


# --- the size limit -----------------------------------------------------------------------------


def test_an_answer_over_the_limit_is_refused_with_reason_too_large(sim: Simulator) -> None:
    sim.add_fault(Fault("oversized", size=2_000_000))
    counted: list[str] = []
    with pytest.raises(ResponseTooLargeError) as caught:
        fetch(sim, limits=Limits(max_response_size=1024 * 1024), counted=counted)
    assert caught.value.reason == "too_large" and "too_large" in FAILURE_REASONS
    assert str(caught.value) == (
        "stations: answer larger than 1 MiB, refused; raise --api.max-response-size if answers "
        "this large are genuine"
    )
    assert counted == ["200"]
    sim.clear_faults()
    assert fetch(sim, limits=Limits(max_response_size=1024 * 1024))  # the same limit, a page


@responses.activate
def test_a_compressed_answer_is_limited_by_its_decoded_size() -> None:
    body = gzip.compress(b" " * 3_000_000)  # 3 MB of JSON whitespace in 3 KB
    responses.get("https://api.example.test/p", body=body, headers={"Content-Encoding": "gzip"})
    with pytest.raises(ResponseTooLargeError, match="larger than 1 MiB"):
        send(
            BoundedSession(),
            "GET",
            "https://api.example.test/p",
            endpoint="charging_stations",
            what="stations",
            on_response=lambda *_: None,
            deadline=Deadline(10),
            limits=Limits(max_response_size=1024 * 1024),
        )


def token_source(sim: Simulator) -> TokenSource:
    return TokenSource(
        token_url=sim.token_url,
        client_id="demo-client",
        client_secret=Secret("demo-secret"),
        auth_method="basic",
        session=BoundedSession(),
        retry=ONCE,
        limits=Limits(request_timeout=BOUND),
    )


def test_the_token_endpoint_is_bounded_in_time_and_size(sim: Simulator) -> None:
    sim.add_fault(Fault("drip", endpoint="token", seconds=0.05))
    started = time.monotonic()
    with pytest.raises(ApiTimeoutError, match="token endpoint"):
        token_source(sim).token(Deadline(60))
    assert time.monotonic() - started < BOUND + SLACK
    sim.clear_faults()
    sim.add_fault(Fault("oversized", endpoint="token", size=100_000))
    with pytest.raises(
        ResponseTooLargeError, match=r"larger than 64 KiB, refused; a token answer is a few KB"
    ):
        token_source(sim).token(Deadline(60))
    sim.clear_faults()
    assert token_source(sim).token(Deadline(60))


# --- a timeout is reported as a timeout ---------------------------------------------------------


@responses.activate
@pytest.mark.parametrize("wrapped", [False, True])
def test_a_read_timeout_inside_the_body_is_a_timeout_not_a_connection_failure(wrapped) -> None:
    # requests reports a read timeout while reading the body as a ConnectionError.
    inner = urllib3.exceptions.ReadTimeoutError(None, "/p", "Read timed out.")  # type: ignore[arg-type]
    if wrapped:
        inner = urllib3.exceptions.MaxRetryError(None, "/p", inner)  # type: ignore[assignment,arg-type]
    responses.get("https://api.example.test/p", body=requests.ConnectionError(inner))
    with pytest.raises(ApiTimeoutError):
        send(
            BoundedSession(),
            "GET",
            "https://api.example.test/p",
            endpoint="charging_stations",
            what="stations",
            on_response=lambda *_: None,
            deadline=Deadline(10),
        )


def test_a_failure_as_the_deadline_runs_out_is_a_timeout() -> None:
    class Ending(Deadline):
        """Time left before the request, none after it."""

        calls = 0

        def remaining(self) -> float:
            self.calls += 1
            return 5.0 if self.calls == 1 else 0.0

    with responses.RequestsMock() as mock:
        mock.get("https://api.example.test/p", body=requests.ConnectionError("reset"))
        with pytest.raises(ApiTimeoutError, match="refresh deadline"):
            send(
                BoundedSession(),
                "GET",
                "https://api.example.test/p",
                endpoint="charging_stations",
                what="stations",
                on_response=lambda *_: None,
                deadline=Ending(5),
                limits=Limits(request_timeout=30),
            )
        refused = urllib3.exceptions.NewConnectionError(None, "refused")  # type: ignore[arg-type]
        failed = urllib3.exceptions.MaxRetryError(None, "/p", refused)  # type: ignore[arg-type]
        mock.get("https://api.example.test/p", body=requests.ConnectionError(failed))
        with pytest.raises(ApiConnectionError):  # with time left it is what it is
            send(
                BoundedSession(),
                "GET",
                "https://api.example.test/p",
                endpoint="charging_stations",
                what="stations",
                on_response=lambda *_: None,
                deadline=Deadline(5),
                retry=ONCE,
            )


# --- overruns -----------------------------------------------------------------------------------


def test_a_refresh_longer_than_the_interval_counts_an_overrun(sim: Simulator) -> None:
    mandant = Mandant(
        "m", sim.api_url, sim.token_url, "demo-client", Secret("demo-secret"), "basic"
    )
    sim.latency = 0.1  # four requests: token and three pages
    slow = MandantRefresher(mandant, page_limit=10, timeout=30, interval=0.2)
    relaxed = MandantRefresher(mandant, page_limit=10, timeout=30, interval=60)
    for refresher in (slow, relaxed):
        refresher.refresh()
        assert refresher.state.up
    assert slow.state.last_duration is not None and slow.state.last_duration > 0.2
    assert (slow.state.overruns, relaxed.state.overruns) == (1, 0)


def test_the_check_explains_too_large() -> None:
    assert "--api.max-response-size" in hint("too_large", "stations", "answer larger than 8 MiB")
    assert "--api.request-timeout" in hint("timeout", "stations", "timed out")
