"""Connections before a worker has them: the TLS handshake and the request head, read without
blocking and bounded in size, and the short answers the accepting thread gives by itself.

:class:`Incoming` is one connection. Its ``advance`` does what the socket allows now and says
what comes next: wait to read, wait to write, a worker for the complete head, or a close. It
knows no selector, no other connection and no worker; :mod:`exporter.webserver` keeps those.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import re
import selectors
import socket
import ssl
from dataclasses import dataclass, field
from typing import Any

LOG = logging.getLogger("exporter.webserver")  # one source for the server's log lines

MAX_HEAD = 32 * 1024
"""Bytes of a request head (request line and header fields); a longer one gets 431."""

_HEAD_END = re.compile(rb"\n\r?\n")  # an empty line ends the head; bare LF is allowed too
_TLS_HANDSHAKE_RECORD = 0x16  # the first byte a TLS client sends


def short_answer(status: str, text: str, extra: str = "") -> bytes:
    """A whole HTTP/1.0 answer with a plain-text body, for sending without a worker."""
    body = text.encode()
    return (
        f"HTTP/1.0 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
    ).encode() + body


_PLAIN_HTTP_ANSWER = short_answer(
    "400 Bad Request", "Client sent an HTTP request to an HTTPS server.\n"
)
_TIMEOUT_ANSWER = short_answer("408 Request Timeout", "request head not complete in time\n")
_TOO_LARGE_ANSWER = short_answer(
    "431 Request Header Fields Too Large", f"request head over {MAX_HEAD} bytes\n"
)


@dataclass(frozen=True, slots=True)
class Request:
    """A connection whose request head is complete: what a worker answers."""

    conn: socket.socket  # an ssl.SSLSocket with TLS
    address: Any  # the client's address as accept() gave it
    head: bytes  # the head, and whatever came after it in the same reads


class Next(enum.Enum):
    """What a connection waits for after :meth:`Incoming.advance`, when it is not closed."""

    READ = selectors.EVENT_READ  # more from the client
    WRITE = selectors.EVENT_WRITE  # room to send (the TLS handshake may need it)
    WORKER = 0  # the head is complete: a worker answers it


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection before any worker has it, after sending what fits of ``answer``;
    a ``reason`` counts it as refused (``RefusedRequests``)."""

    answer: bytes = b""
    reason: str | None = None


@dataclass(slots=True)
class Incoming:
    """A connection in its TLS handshake or its request head."""

    conn: socket.socket  # an ssl.SSLSocket once the handshake has started
    fd: int  # its file descriptor, which wrapping it in TLS keeps
    address: Any
    key: str  # who the client is: its IPv4 address or IPv6 /64
    deadline: float
    context: ssl.SSLContext | None  # TLS still to start
    shaking: bool = False  # in the TLS handshake
    head: bytearray = field(default_factory=bytearray)
    waits_for: Next = Next.READ  # what its selector registration waits for
    done: bool = False  # handed to a worker or closed

    @property
    def client(self) -> str:
        return str(self.address[0])

    def request(self) -> Request:
        return Request(self.conn, self.address, bytes(self.head))

    def advance(self) -> Next | Close:
        """Start TLS, go on with the handshake and read the head, as far as the socket allows."""
        step = self._start_tls(self.context) if self.context is not None else None
        if step is None and self.shaking:
            step = self._handshake()
        return self._read_head() if step is None else step

    def expired(self) -> Close:
        """What the connection gets at its deadline: 408 once past any TLS handshake."""
        in_head = self.context is None and not self.shaking
        return Close(_TIMEOUT_ANSWER if in_head else b"", "header_timeout")

    def _start_tls(self, context: ssl.SSLContext) -> Next | Close | None:
        """None once the client has started a TLS handshake (then it is under way); plain
        HTTP gets 400, silence waits."""
        try:
            first = self.conn.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return Next.READ
        except OSError as e:
            LOG.debug("TLS handshake with %s failed: %s", self.client, e)
            return Close()
        if not first:
            LOG.debug("%s closed the connection before the TLS handshake", self.client)
            return Close()
        if first[0] != _TLS_HANDSHAKE_RECORD:
            LOG.debug("%s sent plain HTTP (or no TLS) to the TLS port; answered 400", self.client)
            with contextlib.suppress(OSError):  # unread input would make our close a reset
                self.conn.recv(MAX_HEAD)
            return Close(_PLAIN_HTTP_ANSWER)
        # The TLS socket takes over the file descriptor, which stays registered.
        self.conn = context.wrap_socket(self.conn, server_side=True, do_handshake_on_connect=False)
        self.context = None
        self.shaking = True
        return None

    def _handshake(self) -> Next | Close | None:
        """None once the TLS handshake is done; else it waits or has failed."""
        assert isinstance(self.conn, ssl.SSLSocket)
        try:
            self.conn.do_handshake()
        except ssl.SSLWantReadError:
            return Next.READ
        except ssl.SSLWantWriteError:
            return Next.WRITE
        except OSError as e:  # ssl.SSLError, resets
            LOG.debug("TLS handshake with %s failed: %s", self.client, e)
            return Close()
        self.shaking = False
        return None

    def _read_head(self) -> Next | Close:
        """Read what has come: a complete head is for a worker, a head too long gets 431."""
        while True:
            try:
                data = self.conn.recv(MAX_HEAD + 1 - len(self.head))
            except (BlockingIOError, ssl.SSLWantReadError):
                return Next.READ
            except ssl.SSLWantWriteError:
                return Next.WRITE
            except OSError as e:
                LOG.debug("connection from %s ended: %s", self.client, e)
                return Close()
            if not data:  # the client has said all it will: answer what it sent, if anything
                if self.head:
                    return Next.WORKER
                LOG.debug("%s closed the connection without a request", self.client)
                return Close()
            if self._completed_by(data):
                return Next.WORKER
            if len(self.head) > MAX_HEAD:
                LOG.debug(
                    "%s sent a request head over %d bytes; answered 431", self.client, MAX_HEAD
                )
                return Close(_TOO_LARGE_ANSWER, "header_too_large")

    def _completed_by(self, data: bytes) -> bool:
        """Add ``data`` to the head; whether the head is complete now."""
        head = self.head
        start = max(0, len(head) - 2)
        head += data
        # Empty lines before the request line are skipped (RFC 9112, 2.2).
        if head.startswith((b"\r", b"\n")):
            del head[: len(head) - len(head.lstrip(b"\r\n"))]
            start = 0
        return _HEAD_END.search(head, start) is not None
