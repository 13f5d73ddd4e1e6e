"""Slow clients end to end: the real exporter process, under a low open-file limit, against a
crowd of connections that trickle their request heads (slowloris), and a single client that
trickles past the head deadline. Scrapes must still be answered, with threads and CPU bounded,
and every refusal counted in beenergised_web_requests_refused_total."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from tests.helpers import (
    E2E_CLIENT,
    ExporterProcess,
    SimulatorProcess,
    SlowHeads,
    env_for,
    proc_cpu_seconds,
    proc_threads,
    samples,
    value,
    wait_until,
)

pytestmark = pytest.mark.e2e

OPEN_FILES = 256  # ulimit -n of the exporter
CROWD = 320  # slow clients: more than the exporter has file descriptors
TRICKLE = 1.0  # seconds between two bytes of one slow client
SCRAPES = 10
SCRAPE_EVERY = 0.4  # seconds
MAX_REQUESTS = 40  # --web.max-requests by default


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorProcess]:
    client_id, secret = E2E_CLIENT
    process = SimulatorProcess(
        "--stations", "20", "--client-id", client_id, "--client-secret", secret
    )
    yield process
    process.stop()


def start_exporter(simulator: SimulatorProcess, *args: str) -> ExporterProcess:
    exporter = ExporterProcess(
        ["--refresh.interval=1s", *args], env_for(simulator), open_files=OPEN_FILES
    )
    wait_until(lambda: exporter.get("/readyz").status_code == 200, what="a first refresh")
    return exporter


def refused(exporter: ExporterProcess, reason: str) -> float:
    metrics = samples(exporter.get("/metrics").text)
    return value(metrics, "beenergised_web_requests_refused_total", reason=reason) or 0.0


def port_of(exporter: ExporterProcess) -> int:
    return int(exporter.url.rsplit(":", 1)[1])


def test_a_crowd_of_slow_clients_does_not_keep_scrapes_out(simulator):
    exporter = start_exporter(simulator)  # every web setting at its default
    try:
        pid = exporter.popen.pid
        threads_before = proc_threads(pid)
        with SlowHeads(port_of(exporter), CROWD, TRICKLE) as crowd:
            wait_until(lambda: crowd.opened >= CROWD, timeout=10, what="the slow clients")
            cpu_before, start = proc_cpu_seconds(pid), time.monotonic()
            answered, threads = 0, [threads_before]
            pace = threading.Event()
            for n in range(SCRAPES):
                pace.wait(max(0.0, start + n * SCRAPE_EVERY - time.monotonic()))
                with contextlib.suppress(requests.RequestException):
                    response = requests.get(exporter.url + "/metrics", timeout=2)
                    answered += response.status_code == 200
                threads.append(proc_threads(pid))
            window = time.monotonic() - start
            cpu = proc_cpu_seconds(pid) - cpu_before
        assert answered >= 8, f"only {answered} of {SCRAPES} scrapes answered"
        assert max(threads) <= threads_before + MAX_REQUESTS, f"threads: {threads}"
        # one core spinning in accept() would use about the whole window
        assert cpu < 0.5 * window, f"{cpu:.2f} CPU seconds in {window:.2f} s"
        assert refused(exporter, "too_many_connections") > 0
        assert "Traceback" not in exporter.output
    finally:
        exporter.stop()


def trickle_until_cut(sock: socket.socket, every: float, limit: int) -> bytes | None:
    """Send a byte every ``every`` seconds until the server answers (its answer) or closes
    (b""); None if it has not after ``limit`` bytes."""
    for _ in range(limit):
        if select.select([sock], [], [], every)[0]:
            try:
                return sock.recv(4096)
            except ConnectionResetError:
                return b""
        try:
            sock.sendall(b"a")
        except OSError:
            return b""
    return None


def test_a_client_trickling_its_head_is_cut_at_the_deadline(simulator):
    exporter = start_exporter(simulator, "--web.read-header-timeout=1s")
    try:
        before = refused(exporter, "header_timeout")
        with socket.create_connection(("127.0.0.1", port_of(exporter)), timeout=5) as sock:
            start = time.monotonic()
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            answer = trickle_until_cut(sock, every=0.1, limit=50)  # no read waits long
            elapsed = time.monotonic() - start
        assert answer is not None, "a client sending a byte every 0.1 s was never cut"
        assert 0.9 < elapsed < 3.0, f"cut after {elapsed:.2f} s, not at the 1 s deadline"
        assert answer == b"" or answer.startswith(b"HTTP/1.0 408 Request Timeout\r\n"), answer
        wait_until(
            lambda: refused(exporter, "header_timeout") == before + 1,
            timeout=5,
            what="the header timeout to be counted",
        )
        assert exporter.get("/healthz").status_code == 200
    finally:
        exporter.stop()
