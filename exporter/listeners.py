"""The listening sockets of the web server: bound to the addresses of --web.listen-address, or
passed by systemd's socket activation (--web.systemd-socket).

systemd's protocol (sd_listen_fds(3)): the sockets are file descriptors 3, 4, ... of the
process, ``LISTEN_FDS`` says how many and ``LISTEN_PID`` which process they are for (a child
that inherited the variables must not take them). No library needed: it is these few lines.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import MutableMapping, Sequence

from exporter.errors import ConfigError

LOG = logging.getLogger(__name__)

BACKLOG = 128
"""Connections the kernel queues before accept. The default of 5 drops connections when many
scrapers arrive at once, and a dropped SYN costs the client a 1 s (then 3 s) wait."""
SD_LISTEN_FDS_START = 3
"""The first file descriptor systemd passes."""
_NO_IPV6 = (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT)
_ACTIVATION_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on host:port. An empty host listens on every interface, IPv6 and
    IPv4 on one socket as node_exporter does, or IPv4 only on a machine without IPv6."""
    if not host:
        try:
            return _bound(socket.AF_INET6, "::", port, dual_stack=True)
        except OSError as e:
            if e.errno not in _NO_IPV6:
                raise
            LOG.info("no IPv6 on this machine (%s): listening on IPv4 only", e.strerror)
            host = "0.0.0.0"
    return _bound(socket.AF_INET6 if ":" in host else socket.AF_INET, host, port)


def _bound(family: int, host: str, port: int, dual_stack: bool = False) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # Like every HTTP server: a restart may bind the port while old connections linger.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if dual_stack:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def systemd_sockets(environ: MutableMapping[str, str] | None = None) -> list[socket.socket]:
    """The listening TCP sockets systemd passed to this process; the activation variables are
    removed from ``environ`` (default os.environ), as sd_listen_fds does, so that nothing this
    process starts takes them too. Raises ConfigError naming --web.systemd-socket."""
    environ = os.environ if environ is None else environ
    pid, count = environ.get("LISTEN_PID", ""), environ.get("LISTEN_FDS", "")
    for name in _ACTIVATION_VARIABLES:
        environ.pop(name, None)
    if not pid or not count:
        raise _fail(
            "no sockets from systemd (LISTEN_PID and LISTEN_FDS are not set): start the "
            "exporter from its .socket unit, or listen with --web.listen-address instead"
        )
    if pid != str(os.getpid()):
        raise _fail(f"the sockets systemd passed are for process {pid!r}, not this one")
    if not count.isdigit() or int(count) < 1:
        raise _fail(f"LISTEN_FDS is {count!r}, expected the number of sockets passed")
    return [_inherited(fd) for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count))]


def _inherited(fd: int) -> socket.socket:
    """The listening TCP socket at ``fd``, marked close-on-exec."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as e:
        raise _fail(f"file descriptor {fd} from systemd is not a socket ({e.strerror})") from None
    if (
        sock.family not in (socket.AF_INET, socket.AF_INET6)
        or sock.type != socket.SOCK_STREAM
        or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    ):
        sock.detach()
        raise _fail(
            f"file descriptor {fd} from systemd is not a listening TCP socket; use "
            "ListenStream= with a port or an IP address and port in the .socket unit"
        )
    sock.set_inheritable(False)
    return sock


def _fail(problem: str) -> ConfigError:
    return ConfigError(f"--web.systemd-socket: {problem}")


def address_text(sock: socket.socket) -> str:
    """Where ``sock`` listens, as HOST:PORT with IPv6 hosts in brackets: ``[::]:10140``
    (every address, IPv6 and IPv4), ``0.0.0.0:10140``, ``127.0.0.1:10140``."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def addresses_text(sockets: Sequence[socket.socket]) -> str:
    """Where ``sockets`` listen: ``127.0.0.1:10140``, ``[::1]:10140 and 127.0.0.1:10140``."""
    shown = [address_text(sock) for sock in sockets]
    return " and ".join(filter(None, (", ".join(shown[:-1]), shown[-1])))
