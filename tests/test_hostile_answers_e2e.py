"""Hostile answers of the token endpoint and the API, end to end: the real exporter process
against a raw socket double (tests/rawhttp.py) that sends what no server library would.

- A token that cannot go into a header (outside Latin-1, or with CR LF) fails the refresh
  with reason ``auth`` and a message that says so, is never kept, and the mandant is up
  within one interval after the token endpoint hands out a good one.
- A 503 with ``Retry-After: \\xb2`` (a Unicode digit) is retried like any 503.
- A body that does not decode (a bad gzip stream, broken chunked framing) fails the refresh
  with reason ``parse`` and says why, once per refresh: not "cannot connect", four times.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

import pytest

from tests.helpers import ExporterProcess, samples, wait_until
from tests.rawhttp import FLEET, RawServer, Reply, Request, http, stations_answer, token_answer

pytestmark = pytest.mark.e2e

SECRET = "hostile-Secret-5e8c1"
MANDANT = "127.0.0.1"  # the exporter names the mandant after the API host
INTERVAL = 2.0  # seconds: --refresh.interval
SLACK = 3.0  # seconds a refresh may start late on a busy machine (jitter is 10%)


class Double:
    """The token endpoint and the stations listing; ``token`` is what the token endpoint
    hands out; ``api`` holds raw answers sent before the listing's (``keep`` repeats the
    last one until cleared)."""

    def __init__(self) -> None:
        self.token = "good-token-1"
        self.api: deque[bytes] = deque()
        self.keep: bytes | None = None
        self._lock = threading.Lock()

    def __call__(self, request: Request) -> Reply:
        if request.path == "/oauth2/token":
            return Reply(token_answer(self.token, expires_in=3600))
        with self._lock:
            if self.api:
                return Reply(self.api.popleft())
            if self.keep is not None:
                return Reply(self.keep)
        return Reply(stations_answer(request))


@pytest.fixture
def start(exporter_process: Callable[..., ExporterProcess]) -> Iterator[Callable[..., Stack]]:
    servers: list[RawServer] = []

    def start_stack(double: Double) -> Stack:
        server = RawServer(double)
        servers.append(server)
        exporter = exporter_process(
            [f"--refresh.interval={INTERVAL:g}s", "--api.request-timeout=2s"],
            {
                "BEENERGISED_API_URL": server.url,
                "BEENERGISED_TOKEN_URL": server.url + "/oauth2/token",
                "BEENERGISED_CLIENT_ID": "hostile-client",
                "BEENERGISED_CLIENT_SECRET": SECRET,
            },
        )
        return Stack(server, exporter)

    yield start_stack
    for server in servers:
        server.close()


class Stack:
    def __init__(self, server: RawServer, exporter: ExporterProcess) -> None:
        self.server = server
        self.exporter = exporter

    def value(self, name: str, **labels: str) -> float:
        metrics = samples(self.exporter.get("/metrics").text)
        return metrics.get((name, frozenset({"mandant": MANDANT, **labels}.items())), 0.0)

    def failures(self, reason: str) -> float:
        return self.value("beenergised_refresh_failures_total", reason=reason)

    def all_failures(self) -> float:
        metrics = samples(self.exporter.get("/metrics").text)
        return sum(v for (n, _), v in metrics.items() if n == "beenergised_refresh_failures_total")

    def requests_to(self, path: str) -> list[Request]:
        return [r for r in list(self.server.requests) if r.path == path]

    def failure_lines(self) -> list[str]:
        return [line for line in self.exporter.lines if "failed (" in line]


POISONS = {"outside Latin-1": "tok\u20acen-1", "CR LF": "tok\r\nX-Injected: 1"}


@pytest.mark.parametrize("poison", POISONS.values(), ids=POISONS.keys())
def test_a_poisoned_token_is_refused_and_the_next_good_one_is_used(start, poison: str):
    double = Double()
    double.token = poison
    running = start(double)
    wait_until(lambda: running.failures("auth") >= 2, what="two auth failures")
    assert running.value("beenergised_up") == 0
    # refused at the token step, every refresh: never kept, never sent
    assert len(running.requests_to("/oauth2/token")) >= 2
    assert running.requests_to("/api/cpoapi/v1/charging_stations/") == []
    failed = running.failure_lines()
    assert "cannot go into an HTTP header" in failed[0], failed[0]
    assert "level=warn" in failed[0]

    double.token = "good-token-2"
    switched = time.monotonic()
    wait_until(
        lambda: running.value("beenergised_up") == 1,
        timeout=INTERVAL + SLACK,
        what="the mandant up within one interval of a good token",
    )
    assert time.monotonic() - switched <= INTERVAL + SLACK
    assert running.value("beenergised_charging_stations") == len(FLEET)
    sent = {
        v
        for r in running.requests_to("/api/cpoapi/v1/charging_stations/")
        for v in r.header("authorization")
    }
    assert sent == {"Bearer good-token-2"}
    log = running.exporter.output
    assert "Traceback" not in log and "unexpected" not in log
    assert "tok\u20acen" not in log and "X-Injected" not in log and "tok\\r" not in log
    assert SECRET not in log


def test_a_unicode_digit_in_retry_after_is_retried(start):
    double = Double()
    double.api.append(http(503, [(b"Retry-After", b"\xb2")]))
    running = start(double)
    wait_until(lambda: running.value("beenergised_up") == 1, what="the first refresh")
    assert (
        running.value("beenergised_api_requests_total", endpoint="charging_stations", code="503")
        == 1
    )
    assert running.all_failures() == 0
    assert "unexpected" not in running.exporter.output
    assert "Traceback" not in running.exporter.output


UNDECODABLE = {
    "bad gzip stream": (
        http(200, [("Content-Type", "application/json"), ("Content-Encoding", "gzip")], b"nope"),
        "could not decode the answer (not a valid 'gzip' stream)",
    ),
    "broken chunked framing": (
        http(200, [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")],
             b"2\r\n{}\r\nzz\r\n", length=False),
        "could not read the answer (broken chunked encoding)",
    ),
}  # fmt: skip


@pytest.mark.parametrize("answer, message", UNDECODABLE.values(), ids=UNDECODABLE.keys())
def test_an_answer_that_does_not_decode_is_a_parse_failure_said_once(
    start, answer: bytes, message: str
):
    double = Double()
    double.keep = answer
    running = start(double)
    wait_until(lambda: running.failures("parse") >= 2, what="two parse failures")
    pages = running.requests_to("/api/cpoapi/v1/charging_stations/")
    failures = running.failures("parse")
    assert len(pages) <= failures + 1  # one request per refresh (one may be in flight)
    assert running.failures("connection") == 0
    assert (
        running.value("beenergised_api_requests_total", endpoint="charging_stations", code="error")
        == 0
    )
    failed = running.failure_lines()
    assert "failed (parse)" in failed[0] and message in failed[0], failed[0]
    assert "cannot connect" not in running.exporter.output

    double.keep = None
    wait_until(lambda: running.value("beenergised_up") == 1, what="recovery")
    assert "Traceback" not in running.exporter.output
