"""Tests of exporter/listeners.py: the sockets bound to listen addresses, and the sockets of
systemd's socket activation (the whole protocol, with a real child process, is in
tests/test_listen_e2e.py)."""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Iterator

import pytest

from exporter import listeners
from exporter.errors import ConfigError
from exporter.listeners import address_text, addresses_text, listen, systemd_sockets
from tests.helpers import ipv6_loopback


@pytest.fixture
def opened() -> Iterator[list[socket.socket]]:
    """Sockets a test opened, closed after it."""
    sockets: list[socket.socket] = []
    yield sockets
    for sock in sockets:
        sock.close()


def test_the_address_shown_is_where_it_listens(opened: list[socket.socket]) -> None:
    for host, shown in [("", "[::]"), ("127.0.0.1", "127.0.0.1"), ("::1", "[::1]")]:
        if ":" in shown and not ipv6_loopback():
            continue
        sock = listen(host, 0)
        opened.append(sock)
        assert address_text(sock) == f"{shown}:{sock.getsockname()[1]}"
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    ports = [sock.getsockname()[1] for sock in opened]
    assert addresses_text(opened[:1]) == address_text(opened[0])
    assert addresses_text(opened[-2:]) == " and ".join(map(address_text, opened[-2:]))
    if len(opened) == 3:
        assert addresses_text(opened) == (
            f"[::]:{ports[0]}, 127.0.0.1:{ports[1]} and [::1]:{ports[2]}"
        )


def test_without_ipv6_an_empty_host_listens_on_ipv4(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, opened: list[socket.socket]
) -> None:
    bound = listeners._bound

    def no_ipv6(family: int, host: str, port: int, dual_stack: bool = False) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return bound(family, host, port, dual_stack)

    monkeypatch.setattr(listeners, "_bound", no_ipv6)
    caplog.set_level(logging.INFO, logger="exporter.listeners")
    opened.append(listen("", 0))
    assert address_text(opened[0]).startswith("0.0.0.0:")
    assert "listening on IPv4 only" in caplog.text


def test_a_port_in_use_is_an_error_not_a_fallback(opened: list[socket.socket]) -> None:
    opened.append(listen("127.0.0.1", 0))
    with pytest.raises(OSError) as caught:
        listen("", opened[0].getsockname()[1])
    assert caught.value.errno == errno.EADDRINUSE


@pytest.mark.parametrize(
    ("variables", "problem"),
    [
        ({}, "no sockets from systemd (LISTEN_PID and LISTEN_FDS are not set)"),
        ({"LISTEN_FDS": "1"}, "no sockets from systemd (LISTEN_PID and LISTEN_FDS are not set)"),
        ({"LISTEN_PID": "1", "LISTEN_FDS": "1"}, "are for process '1', not this one"),
        ({"LISTEN_PID": "self", "LISTEN_FDS": "0"}, "LISTEN_FDS is '0', expected the number"),
        ({"LISTEN_PID": "self", "LISTEN_FDS": "x"}, "LISTEN_FDS is 'x', expected the number"),
    ],
)
def test_socket_activation_without_its_sockets_is_a_configuration_error(
    variables: dict[str, str], problem: str
) -> None:
    environ = {
        key: str(os.getpid()) if value == "self" else value for key, value in variables.items()
    }
    environ |= {"LISTEN_FDNAMES": "x", "PATH": "/bin"}
    with pytest.raises(ConfigError) as caught:
        systemd_sockets(environ)
    assert str(caught.value).startswith("--web.systemd-socket: ")
    assert problem in str(caught.value)
    assert environ == {"PATH": "/bin"}, "the activation variables are not passed on"


def test_an_inherited_descriptor_must_be_a_listening_tcp_socket(
    opened: list[socket.socket],
) -> None:
    server = listen("127.0.0.1", 0)
    opened.append(server)
    taken = listeners._inherited(os.dup(server.fileno()))
    opened.append(taken)
    assert taken.getsockname() == server.getsockname()
    assert not taken.get_inheritable()
    reader, writer = os.pipe()
    for fd, what in [
        (socket.socket().detach(), "is not a listening TCP socket"),
        (socket.socket(type=socket.SOCK_DGRAM).detach(), "is not a listening TCP socket"),
        (reader, "is not a socket"),
    ]:
        with pytest.raises(ConfigError) as caught:
            listeners._inherited(fd)
        assert f"file descriptor {fd} from systemd {what}" in str(caught.value)
        os.close(fd)
    os.close(writer)
