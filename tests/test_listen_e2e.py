"""Where the real exporter listens: on every --web.listen-address given, and on the sockets of
systemd's socket activation (--web.systemd-socket), each with real sockets."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.helpers import ExporterProcess, Process, samples

pytestmark = pytest.mark.e2e

SCRIPT = str(Path(sys.executable).with_name("beenergised-exporter"))
LAUNCHER = """\
import os, sys
fd, pid = int(sys.argv[1]), sys.argv[2]
os.dup2(fd, 3)  # systemd passes the sockets from file descriptor 3
if fd != 3:
    os.close(fd)
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()) if pid == "self" else pid)
os.execv(sys.argv[3], sys.argv[3:])  # the same process, so LISTEN_PID stays true
"""
"""Starts a program as systemd does on socket activation: the listening socket at descriptor 3,
LISTEN_FDS=1 and LISTEN_PID set to the pid the program will run as (``self``) or to another."""


def served(url: str) -> dict[tuple[str, frozenset], float]:
    response = requests.get(url + "/metrics", timeout=5)
    assert response.status_code == 200
    return samples(response.text)


def test_every_listen_address_given_answers(exporter_process) -> None:
    exporter: ExporterProcess = exporter_process(["--demo", "--web.listen-address=127.0.0.1:0"], {})
    line = exporter.wait_for_line(r"listening on 127\.0\.0\.1:(\d+) and 127\.0\.0\.1:(\d+),")
    ports = {int(line.group(1)), int(line.group(2))}
    assert len(ports) == 2
    exporter.wait_for_line("first refresh")
    for port in ports:
        metrics = served(f"http://127.0.0.1:{port}")
        assert metrics[("beenergised_up", frozenset({"mandant": "demo"}.items()))] == 1
    assert exporter.stop() == 0


def start_activated(listener: socket.socket, pid: str = "self") -> Process:
    """The exporter in demo mode, given ``listener`` as systemd gives its socket."""
    fd = listener.fileno()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("BEENERGISED_")}
    return Process(
        [sys.executable, "-c", LAUNCHER, str(fd), pid, SCRIPT, "--demo", "--web.systemd-socket"],
        environment,
        pass_fds=(fd,),
    )


def test_socket_activation_serves_the_socket_systemd_passes() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    exporter = start_activated(listener)
    try:
        listener.close()  # the exporter's copy of the socket is the only one left
        exporter.wait_for_line(rf"listening on 127\.0\.0\.1:{port} \(sockets from systemd\)")
        exporter.wait_for_line("first refresh")
        metrics = served(f"http://127.0.0.1:{port}")
        assert metrics[("beenergised_up", frozenset({"mandant": "demo"}.items()))] == 1
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).text == "ok\n"
    finally:
        assert exporter.stop() == 0
    assert not re.search(r"level=(warn|error)", exporter.output), exporter.output


def test_socket_activation_for_another_process_is_refused() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        exporter = start_activated(listener, pid="1")
        try:
            code = exporter.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            exporter.stop()
            raise
        exporter.stop()
    assert code == 2
    assert (
        "--web.systemd-socket: the sockets systemd passed are for process '1', not this one"
        in exporter.output
    )
