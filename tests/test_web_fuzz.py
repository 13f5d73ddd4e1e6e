"""A fuzzer for the request head: hostile request lines, header fields, lengths, bytes, methods
and framing, against the real server on 127.0.0.1 (in this process), plain, with basic auth
and over TLS.

Every connection must end within the head deadline plus a margin, with a well-formed answer
(or none, for bytes that hold no request) and never a 500; nothing may reach the error log;
and after every example a normal scrape is still answered. The cases the fuzzer found, and the
hostile heads worth keeping, are the parametrized tests at the top.
"""

from __future__ import annotations

import base64
import itertools
import logging
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from exporter.exposition import Exposition
from exporter.listeners import listen
from exporter.metrics import FleetCollector
from exporter.model import MandantState, Snapshot, Station
from exporter.refused import RefusedRequests
from exporter.stationchanges import StationChanges
from exporter.web import ExporterApp, serve
from exporter.webauth import BasicAuth, WebConfig
from exporter.webheads import MAX_HEAD
from exporter.webserver import Server, ServerLimits

HEADER_TIMEOUT = 0.3
"""The fuzzed servers' head deadline: an incomplete head costs this much of the test's time."""
ENDS_WITHIN = HEADER_TIMEOUT + 5.0
"""Seconds in which every connection must have ended, however hostile its head."""
PASSWORD = b"fuzz-Password-1"
USERS = {"prometheus": bcrypt.hashpw(PASSWORD, bcrypt.gensalt(rounds=4))}
STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9]) [^\r\n]*\r\n")

STATIONS = [Station(f"id-{i}", f"Station {i}", f"cp_{i}", "1.0", f"SN{i}") for i in range(5)]
READY = [MandantState("north", Snapshot.build(STATIONS, 0.0), up=True, last_success=0.0)]


@dataclass
class Served:
    """A running server and how to reach it."""

    server: Server
    thread: threading.Thread
    port: int
    refused: RefusedRequests
    tls: ssl.SSLContext | None = None  # the client side, when the server speaks TLS
    auth: str | None = None  # the Authorization value a normal scrape needs

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=ENDS_WITHIN)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        if self.tls is not None:
            return self.tls.wrap_socket(sock, server_hostname="127.0.0.1")
        return sock


class Errors(logging.Handler):
    """The error records of the exporter's loggers: each one is a defect here."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def errors() -> Iterator[Errors]:
    handler = Errors()
    logger = logging.getLogger("exporter")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def start(web_config: WebConfig | None = None, auth: bool = False) -> Served:
    def states() -> list[MandantState]:
        return READY

    refused = RefusedRequests()
    app = ExporterApp(
        Exposition(FleetCollector(), states, CollectorRegistry()),
        states,
        StationChanges(5),
        auth=BasicAuth(USERS) if auth else None,
        refused=refused,
    )
    limits = ServerLimits(max_requests=4, header_timeout=HEADER_TIMEOUT)
    server, thread = serve(app, [listen("127.0.0.1", 0)], web_config, limits)
    return Served(server, thread, server.server_address[1], refused)


def stop(served: Served) -> None:
    served.server.shutdown()
    served.server.server_close()
    served.thread.join(5)


@pytest.fixture(scope="module")
def plain() -> Iterator[Served]:
    served = start()
    yield served
    stop(served)


@pytest.fixture(scope="module")
def with_auth() -> Iterator[Served]:
    served = start(auth=True)
    served.auth = "Basic " + base64.b64encode(b"prometheus:" + PASSWORD).decode()
    yield served
    stop(served)


@pytest.fixture(scope="module")
def over_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    ca = trustme.CA()
    pem = Path(tmp_path_factory.mktemp("fuzz-tls")) / "server.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(pem))
    served = start(WebConfig(ssl_context=context, users={}))
    served.tls = ssl.create_default_context()
    ca.configure_trust(served.tls)
    yield served
    stop(served)


def exchange(served: Served, pieces: list[bytes], half_close: bool) -> bytes:
    """Send ``pieces`` one write each (then end our side, if ``half_close``), and read the
    answer until the server closes; fails if the server keeps the connection open too long."""
    with served.connect() as sock:
        try:
            for piece in pieces:
                sock.sendall(piece)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass  # the server answered before we were done: its answer may still be there
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass  # a close with our unread bytes in the server's buffer is a reset
        except TimeoutError:
            pytest.fail(f"the server held the connection over {ENDS_WITHIN}s: {pieces!r}")
        except ssl.SSLError:
            pass  # a TLS connection cut without close_notify
    return answer


def status_of(answer: bytes) -> int:
    """The status of a well-formed answer; fails on anything else."""
    match = STATUS_LINE.match(answer)
    assert match, f"not an HTTP answer: {answer[:200]!r}"
    head, separator, body = answer.partition(b"\r\n\r\n")
    assert separator, f"an answer without the end of its head: {answer[:200]!r}"
    length = re.search(rb"\r\nContent-Length: ([0-9]+)\r\n", head + b"\r\n", re.IGNORECASE)
    if length and body:  # HEAD gets the length without the body
        assert int(length.group(1)) == len(body), f"Content-Length is not the body: {head!r}"
    return int(match.group(1))


def still_serving(served: Served, errors: Errors) -> None:
    """A normal scrape is answered, the server thread lives and nothing was logged as error."""
    auth = f"Authorization: {served.auth}\r\n" if served.auth else ""
    answer = exchange(served, [f"GET /metrics HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode()], False)
    assert status_of(answer) == 200 and b"beenergised_up" in answer
    assert served.thread.is_alive()
    assert not errors.records, [record.getMessage() for record in errors.records]


# Kept cases: hostile heads and the answer each gets.

GET = b"GET /metrics HTTP/1.0\r\n"
KEPT = [
    (GET + b"\r\n", 200, None),
    (b"GET /metrics HTTP/1.0\n\n", 200, None),  # bare LF
    (b"GET /metrics HTTP/1.0\r\n\n", 200, None),  # mixed
    (b"\r\n\nGET /metrics HTTP/1.0\r\n\r\n", 200, None),  # empty lines first are skipped
    (b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 200, None),
    (b"GET /\xff\xfe\x00 HTTP/1.0\r\n\r\n", 404, None),  # not UTF-8, NUL
    (b"GET http://elsewhere/metrics HTTP/1.1\r\n\r\n", 404, None),  # absolute form
    (b"GET * HTTP/1.1\r\n\r\n", 404, None),
    (b"GET /changes?limit=" + b"9" * 5000 + b" HTTP/1.0\r\n\r\n", 400, None),
    (b"GET /changes?mandant=%ff%00&kind=%0d%0a HTTP/1.0\r\n\r\n", 400, None),
    (b"GET /metrics HTTP/9.9\r\n\r\n", 505, "bad_request"),
    (b"GET /metrics HTTP/1.x\r\n\r\n", 400, "bad_request"),
    (b"GET /metrics HTTP/1.0 extra\r\n\r\n", 400, "bad_request"),
    (b"GET\r\n\r\n", 400, "bad_request"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400, "bad_request"),  # TLS, plain
    (GET + b"X: y\r\n" * 101 + b"\r\n", 431, "bad_request"),  # over 100 fields
    (GET + b"X: " + b"y" * MAX_HEAD + b"\r\n\r\n", 431, "header_too_large"),
    (b"GET /" + b"a" * (MAX_HEAD + 10) + b" HTTP/1.0\r\n\r\n", 431, "header_too_large"),
    (GET + b" folded: continuation\r\nX:\r\n:\r\n\r\n", 200, None),
    (GET + b"Accept-Encoding: gzip;q=1e309, *;q=NaN\r\n\r\n", 200, None),
    (GET + b"Accept: application/openmetrics-text;version=\xff\r\n\r\n", 200, None),
    (GET + b"Authorization: Basic \xff\xfe==\r\n\r\n", 200, None),  # no auth on this server
    (b"POST /metrics HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n", 405, None),
    (b"POST /metrics HTTP/1.1\r\nContent-Length: -1\r\n\r\nbody", 405, None),
    (b"GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 200, None),
    (b"GET /healthz HTTP/1.1\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n", 200, None),  # pipelined
    (b"BREW /metrics HTTP/1.0\r\n\r\n", 405, None),
    (b" \r\n\r\n", 400, "bad_request"),  # an empty request line
    (b"GET /metrics\r\n\r\n", 200, None),  # no version: HTTP/1.0
    (b"POST /metrics\r\n\r\n", 400, "bad_request"),
    (b"GET /metrics HTTP/0.9\r\n\r\n", 505, "bad_request"),  # its answer has no status line
    (b"\x00" * 64 + b"\n\n", 400, "bad_request"),
    (b"\x1c\x85\xa0\r\n\r\n", 400, "bad_request"),  # whitespace to str.split()
]


@pytest.mark.parametrize(("head", "status", "reason"), KEPT)
def test_kept_hostile_heads(plain, errors, head, status, reason):
    before = dict(counts(plain.refused))
    answer = exchange(plain, [head], half_close=False)
    if status is None:
        assert answer == b""
    else:
        assert status_of(answer) == status
    after = counts(plain.refused)
    assert {r: n - before[r] for r, n in after.items() if n != before[r]} == (
        {reason: 1} if reason else {}
    )
    still_serving(plain, errors)


def counts(refused: RefusedRequests) -> dict[str, float]:
    return {s.labels["reason"]: s.value for s in next(iter(refused.collect())).samples}


def test_an_incomplete_head_is_cut_at_the_deadline_with_408(plain, errors):
    before = counts(plain.refused)["header_timeout"]
    answer = exchange(plain, [b"GET /metrics HTTP/1.1\r\nHost: x\r\n"], half_close=False)
    assert status_of(answer) == 408
    assert counts(plain.refused)["header_timeout"] == before + 1
    still_serving(plain, errors)


def test_a_head_ended_by_closing_is_answered(plain, errors):
    answer = exchange(plain, [b"GET /healthz HTTP/1.0\r\n"], half_close=True)
    assert status_of(answer) == 200
    still_serving(plain, errors)


def test_nothing_but_empty_lines_waits_for_the_request_line(plain, errors):
    before = counts(plain.refused)["header_timeout"]
    assert status_of(exchange(plain, [b"\r\n" * 100], half_close=False)) == 408
    assert counts(plain.refused)["header_timeout"] == before + 1
    assert exchange(plain, [b"\r\n\n"], half_close=True) == b""
    still_serving(plain, errors)


# The fuzzer.

TOKENS = st.sampled_from(
    [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"CONNECT", b"TRACE", b"get", b""]
)
TARGETS = st.sampled_from(
    [b"/", b"/metrics", b"/healthz", b"/readyz", b"/changes", b"/changes?limit=3", b"*", b"//"]
)
VERSIONS = st.sampled_from(
    [b"HTTP/1.0", b"HTTP/1.1", b"HTTP/2.0", b"HTTP/1.10", b"HTTP/0.9", b"http/1.1", b"HTTP/"]
)
NAMES = st.sampled_from(
    [
        b"Host",
        b"Accept",
        b"Accept-Encoding",
        b"Authorization",
        b"Content-Length",
        b"Transfer-Encoding",
        b"Connection",
        b"Expect",
        b"Content-Type",
        b"X-Forwarded-For",
        b"",
    ]
)
EOLS = st.sampled_from([b"\r\n", b"\n", b"\r", b" \r\n", b"\r\r\n"])
binary = st.binary(max_size=40)
hostile_bytes = binary | st.sampled_from([b"\x00", b"\xff", b"\r", b"\n", b"%", b"%00", b" "])


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    """A request head built from hostile parts, ended by an empty line."""
    method = draw(TOKENS | st.binary(min_size=1, max_size=12))
    target = draw(TARGETS) + draw(hostile_bytes)
    version = draw(VERSIONS | binary)
    spaces = draw(st.sampled_from([b" ", b"  ", b"\t", b""]))
    eol = draw(EOLS)
    lines = [method + spaces + target + b" " + version]
    for _ in range(draw(st.integers(0, 6))):
        name = draw(NAMES | st.binary(max_size=20))
        value = draw(binary | st.just(b"x" * draw(st.integers(0, 3000))))
        lines.append(name + draw(st.sampled_from([b": ", b":", b" : ", b""])) + value)
    return eol.join(lines) + b"\r\n\r\n" + draw(st.binary(max_size=30))


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets, one write each."""
    points = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)] or [b""]


FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the same examples every run: a seeded generator
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def check(served: Served, errors: Errors, answer: bytes, empty_allowed: bool = False) -> None:
    """Any request gets a well-formed answer, never a 500; no bytes may get none."""
    if answer or not empty_allowed:
        assert status_of(answer) != 500
    still_serving(served, errors)


@FUZZ
@given(head=heads(), cuts=st.lists(st.integers(0, 10_000), max_size=4))
def test_fuzzed_heads(plain, errors, head, cuts):
    answer = exchange(plain, pieces(head, cuts), half_close=False)
    check(plain, errors, answer)


@FUZZ
@given(head=heads(), credentials=st.binary(max_size=60), scheme=st.sampled_from([b"Basic ", b""]))
def test_fuzzed_heads_with_basic_auth(with_auth, errors, head, credentials, scheme):
    authorization = b"Authorization: " + scheme + base64.b64encode(credentials) + b"\r\n"
    first, _, rest = head.partition(b"\n")
    answer = exchange(with_auth, [first + b"\n" + authorization + rest], half_close=False)
    check(with_auth, errors, answer)


@FUZZ
@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(0, 300), max_size=4))
def test_fuzzed_bytes(plain, errors, data, cuts):
    """Any bytes at all, the sender done after them: a request they hold, or none."""
    answer = exchange(plain, pieces(data, cuts), half_close=True)
    check(plain, errors, answer, empty_allowed=not data.lstrip(b"\r\n"))


@settings(FUZZ, max_examples=40)
@given(head=heads(), cuts=st.lists(st.integers(0, 10_000), max_size=3))
def test_fuzzed_heads_over_tls(over_tls, errors, head, cuts):
    answer = exchange(over_tls, pieces(head, cuts), half_close=False)
    check(over_tls, errors, answer)
