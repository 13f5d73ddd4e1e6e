"""Hostile scrapers end to end: the real exporter process, serving the real simulator's fleet.

The hostile party here is the scraper, not the API, so the faults are requests: HEAD, odd
Accept-Encoding values, a reader of one gzip member only, a 4,301-digit query value, other
methods, IPv6 clients, an empty web config file, a bcrypt cost of 31 and a wrong-password flood.
"""

from __future__ import annotations

import base64
import os
import socket
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest

from tests.helpers import (
    ExporterProcess,
    Process,
    SimulatorProcess,
    env_for,
    ipv6_loopback,
    wait_until,
)

pytestmark = pytest.mark.e2e

SECRET = "web-hostile-Secret-5c1d"
STATIONS = 30


def api_env(simulator: SimulatorProcess) -> dict[str, str]:
    return env_for(simulator, ("demo-client", SECRET))


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorProcess]:
    process = SimulatorProcess("--stations", str(STATIONS), "--client-secret", SECRET)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def exporter(simulator: SimulatorProcess) -> Iterator[ExporterProcess]:
    process = ExporterProcess(["--refresh.interval=1s"], api_env(simulator))
    try:
        wait_until(lambda: process.get("/readyz").status_code == 200, what="a first refresh")
        yield process
    finally:
        process.stop()


def port_of(process: ExporterProcess) -> int:
    return int(process.url.rsplit(":", 1)[1])


def request(
    port: int,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    host: str = "127.0.0.1",
    source: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and the exact bytes the server sent after them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.settimeout(15)
        if source:
            sock.bind((source, 0))
        sock.connect((host, port))
        lines = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        sock.sendall(f"{method} {path} HTTP/1.0\r\nHost: x\r\n{lines}\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *fields = head.decode("latin-1").split("\r\n")
    parsed = {}
    for field in fields:
        name, _, value = field.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return int(status.split()[1]), parsed, body


def one_member(body: bytes) -> bytes:
    """What ``curl --compressed`` shows: the first gzip member; nothing may follow it."""
    reader = zlib.decompressobj(31)
    text = reader.decompress(body) + reader.flush()
    assert reader.eof and reader.unused_data == b"", "a second gzip member, which curl drops"
    return text


def test_head_metrics_sends_headers_only(exporter):
    port = port_of(exporter)
    status, headers, body = request(port, "HEAD", "/metrics")
    assert status == 200 and body == b""
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    assert int(headers["content-length"]) > 1000  # the length a GET would get
    _, _, get_body = request(port, "GET", "/metrics")
    assert b"beenergised_up" in get_body
    # process_* values change between two scrapes, and with them a few bytes of length
    assert abs(int(headers["content-length"]) - len(get_body)) < 200


def test_gzip_q_0_gets_plain_text(exporter):
    port = port_of(exporter)
    status, headers, body = request(port, "GET", "/metrics", {"Accept-Encoding": "gzip;q=0"})
    assert status == 200 and "content-encoding" not in headers
    assert b"beenergised_up" in body


def test_gzip_is_one_member_with_everything(exporter):
    port = port_of(exporter)
    for accept in ["text/plain", "application/openmetrics-text"]:
        status, headers, body = request(
            port,
            "GET",
            "/metrics",
            {"Accept-Encoding": "gzip, deflate, br", "Accept": accept},
        )
        assert status == 200 and headers["content-encoding"] == "gzip"
        text = one_member(body)
        # the cached fleet first, then the live process metrics, all in the one member
        assert b"beenergised_charging_station_info{" in text
        assert text.rindex(b"\nprocess_cpu_seconds_total") > text.rindex(
            b"\nbeenergised_exporter_build_info"
        )
        assert b"\nbeenergised_config_last_reload_successful 1" in text
        assert text.endswith(b"\n# EOF\n") is accept.startswith("application/openmetrics")


def test_huge_changes_limit_is_a_400_and_the_exporter_keeps_serving(exporter):
    port = port_of(exporter)
    status, headers, body = request(port, "GET", "/changes?limit=" + "7" * 4301)
    assert status == 400 and headers["content-type"] == "application/json"
    assert b"limit must be a whole number" in body and b"Traceback" not in body
    assert "Traceback" not in exporter.output
    status, _, _ = request(port, "GET", "/changes?limit=3")
    assert status == 200


def test_other_methods_get_405_with_allow(exporter):
    for method in ["POST", "PUT", "DELETE"]:
        status, headers, body = request(port_of(exporter), method, "/metrics")
        assert (status, headers.get("allow"), body) == (405, "GET, HEAD", b"method not allowed\n")


def exporter_command(*args: str) -> tuple[list[str], dict[str, str]]:
    """The console script with ``args``; the environment without our settings."""
    script = str(Path(sys.executable).with_name("beenergised-exporter"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BEENERGISED_")}
    return [script, "--log.level=debug", *args], env


def test_default_address_is_dual_stack_and_an_empty_web_config_is_a_warning(simulator, tmp_path):
    if not ipv6_loopback():
        pytest.skip("this machine has no IPv6 loopback (::1), so dual-stack cannot be shown")
    web = tmp_path / "web.yml"
    web.write_text("# TLS and users to come\n")
    args, env = exporter_command("--web.listen-address=:0", f"--web.config.file={web}")
    process = Process(args, env | api_env(simulator))
    try:
        port = int(process.wait_for_line(r"listening on \[::\]:(\d+)").group(1))
        assert f"{web}: the web config file sets neither tls_server_config nor " in process.output
        assert "served without TLS and without basic auth" in process.output
        for host in ["127.0.0.1", "::1"]:
            status, _, body = request(port, "GET", "/healthz", host=host)
            assert (status, body) == (200, b"ok\n"), host
            status, _, _ = request(port, "HEAD", "/metrics", host=host)
            assert status == 200, host
    finally:
        process.stop()


def web_config(tmp_path: Path, users: dict[str, bytes]) -> Path:
    path = tmp_path / "web.yml"
    lines = "".join(f"  {name}: {hashed.decode()}\n" for name, hashed in users.items())
    path.write_text("basic_auth_users:\n" + lines)
    return path


def test_a_bcrypt_cost_of_31_is_refused_at_once(simulator, tmp_path):
    hashed = bcrypt.gensalt(rounds=31) + b"O" * 31  # well-formed; bcrypt never runs on it
    path = web_config(tmp_path, {"mallory": hashed})
    args, env = exporter_command(f"--web.config.file={path}")
    process = Process(args, env | api_env(simulator))
    try:
        assert process.popen.wait(timeout=10) == 2  # by itself: no bcrypt run at cost 31
    finally:
        process.stop()
    assert process.lines == [
        f"beenergised-exporter: {path}: basic_auth_users.mallory: bcrypt cost 31 is above the "
        "maximum of 14 (each step doubles the time of a check); hash again, e.g. with "
        "htpasswd -nBC 10 \"\" | tr -d ':\\n'"
    ]


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_a_wrong_password_flood_does_not_starve_a_right_login(simulator, tmp_path):
    """Twenty threads send wrong passwords from 127.0.0.1 without pause; a right password,
    not yet cached, from 127.0.0.2 is answered while at most two wrong ones finish."""
    password = "flood-Right-1"
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10))
    path = web_config(tmp_path, {"alice": hashed, "bob": hashed})
    exporter = ExporterProcess([f"--web.config.file={path}"], api_env(simulator))
    port = port_of(exporter)
    stop = threading.Event()
    finished: list[tuple[float, int]] = []  # (when, status) of each wrong attempt
    threads = [threading.Thread(target=lambda: flood(), daemon=True) for _ in range(20)]

    def flood() -> None:
        for attempt in range(5000):
            if stop.is_set():
                return
            try:
                status, _, _ = request(port, "GET", "/metrics", basic("alice", f"no-{attempt}"))
            except OSError:
                continue
            finished.append((time.monotonic(), status))

    try:
        # before: a right login is answered
        assert request(port, "GET", "/readyz", basic("alice", password))[0] in (200, 503)
        for thread in threads:
            thread.start()
        wait_until(lambda: sum(s == 401 for _, s in finished) >= 5, what="the flood to run")
        # during: bob's first login (not cached) from another address
        sent = time.monotonic()
        status, _, body = request(
            port, "GET", "/metrics", basic("bob", password), source="127.0.0.2"
        )
        answered = time.monotonic()
        assert status == 200 and b"beenergised_up" in body
        checked_meanwhile = [s for when, s in list(finished) if sent < when < answered and s == 401]
        assert len(checked_meanwhile) <= 2, len(checked_meanwhile)
        assert {s for _, s in finished} <= {401, 429}
        refused = sum(s == 429 for _, s in finished)
        wait_until(lambda: sum(s == 429 for _, s in finished) > refused, what="the flood to go on")
    finally:
        stop.set()
        for thread in threads:
            if thread.ident is not None:
                thread.join(20)
        # after: the exporter answers normally
        assert request(port, "GET", "/metrics", basic("bob", password))[0] == 200
        assert "Traceback" not in exporter.output
        exporter.stop()
