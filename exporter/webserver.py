"""The HTTP server under the WSGI app: every connection bounded in time, number and threads.

One thread accepts the connections of every listening socket and, without blocking, does their
TLS handshakes and reads their request heads: a client that trickles its head costs a file
descriptor and a few bytes, never a thread, and is cut ``header_timeout`` seconds after it
connected (Go's ReadHeaderTimeout), however steadily it sends. A complete head goes to one of at
most ``max_requests`` worker threads (node_exporter's --web.max-requests); as many more wait up
to QUEUE_WAIT for one, and any more get 503 at once.
Connections still in their head are capped below the open-file limit and a new one closes the
oldest, so a crowd of slow clients cannot keep a scraper out. Out of file descriptors, accepting
backs off instead of spinning. Each refusal is counted by reason and warned about once a minute
at most.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import re
import resource
import selectors
import socket
import socketserver
import ssl
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import IO, Any, cast
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer

from exporter.refused import RefusedRequests
from exporter.webauth import client_key

LOG = logging.getLogger(__name__)

MAX_REQUESTS = 40
"""Requests answered at once (--web.max-requests), as node_exporter's default."""
HEADER_TIMEOUT = 10.0
"""Seconds from accepting a connection to the end of its request head, TLS handshake included
(--web.read-header-timeout)."""
RESPONSE_TIMEOUT = 60.0
"""Seconds one answer may take to send, whole: a client that reads slowly holds a worker no
longer (Go's WriteTimeout)."""
MAX_HEAD = 32 * 1024
"""Bytes of a request head (request line and header fields); a longer one gets 431."""
MAX_WAITING = 1024
"""Connections in their TLS handshake or request head at most, whatever the open-file limit."""
FD_SPARE = 64
"""File descriptors left to everything else (API connections, logs, the listening socket)
when the open-file limit sets how many connections may wait for their head."""
QUEUE_WAIT = 1.0
"""Seconds a complete request may wait for a free worker before it gets 503."""
ACCEPT_BATCH = 64
"""Connections accepted in a row before the others get their turn."""
ACCEPT_PAUSE = 0.1
"""Seconds accepting rests when no file descriptor is left for a new connection."""
WARN_EVERY = 60.0
"""Seconds between two warnings of one kind; what happens in between is counted in the next."""

_HEAD_END = re.compile(rb"\n\r?\n")  # an empty line ends the head; bare LF is allowed too
_TLS_HANDSHAKE_RECORD = 0x16  # the first byte a TLS client sends
_NO_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def _answer(status: str, text: str, extra: str = "") -> bytes:
    body = text.encode()
    return (
        f"HTTP/1.0 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
    ).encode() + body


_PLAIN_HTTP_ANSWER = _answer("400 Bad Request", "Client sent an HTTP request to an HTTPS server.\n")
_TIMEOUT_ANSWER = _answer("408 Request Timeout", "request head not complete in time\n")
_TOO_LARGE_ANSWER = _answer(
    "431 Request Header Fields Too Large", f"request head over {MAX_HEAD} bytes\n"
)
_BUSY_ANSWER = _answer(
    "503 Service Unavailable", "too many requests at once; try again\n", "Retry-After: 1\r\n"
)


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """How many requests are answered at once and how long a client has for its head."""

    max_requests: int = MAX_REQUESTS
    header_timeout: float = HEADER_TIMEOUT


DEFAULT_LIMITS = ServerLimits()


@dataclass(frozen=True, slots=True)
class Request:
    """A connection whose request head is complete: what a worker answers."""

    conn: socket.socket  # an ssl.SSLSocket with TLS
    address: Any  # the client's address as accept() gave it
    head: bytes  # the head, and whatever came after it in the same reads


@dataclass(slots=True)
class _Waiting:
    """A connection in its TLS handshake or its request head."""

    conn: socket.socket  # an ssl.SSLSocket once the handshake has started
    fd: int  # its file descriptor, which wrapping it in TLS keeps
    address: Any
    key: str  # who the client is: its IPv4 address or IPv6 /64
    deadline: float
    context: ssl.SSLContext | None  # TLS still to start
    shaking: bool = False  # in the TLS handshake
    head: bytearray = field(default_factory=bytearray)
    events: int = selectors.EVENT_READ
    done: bool = False  # handed to a worker or closed

    @property
    def client(self) -> str:
        return str(self.address[0])


class _Warnings:
    """One warning of each kind at once, then at most one every WARN_EVERY seconds, saying how
    many were left out; used by the accepting thread only."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._left_out: dict[str, int] = {}

    def warn(self, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < WARN_EVERY:
            self._left_out[kind] = self._left_out.get(kind, 0) + 1
            return
        self._last[kind] = now
        left_out = self._left_out.pop(kind, 0)
        if left_out:
            message += f" ({left_out} more like this since the last such line)"
        LOG.warning(message, *args)


class _Workers:
    """At most ``size`` daemon threads, started as needed, and a queue of as many requests
    for them: a request finds a worker free within moments when the workers are merely busy
    finishing (a client may send its next request before the worker of its last has closed).
    ``submit`` says False when the queue is full, ``stale`` gives back what waited too long."""

    def __init__(self, size: int, work: Callable[[Request], None], name: str) -> None:
        self._size = size
        self._work = work
        self._name = name
        self._queue: deque[tuple[float, Request]] = deque()  # (since when, request)
        self._ready = threading.Condition()
        self._busy = 0
        self._threads = 0
        self._closing = False

    def submit(self, job: Request) -> bool:
        with self._ready:
            if len(self._queue) >= self._size:
                return False
            if self._busy + len(self._queue) >= self._threads < self._size:
                try:
                    threading.Thread(target=self._run, name=self._name, daemon=True).start()
                except RuntimeError:  # the system has no thread to give: the others will do
                    if self._threads == 0:
                        return False
                else:
                    self._threads += 1
            self._queue.append((time.monotonic(), job))
            self._ready.notify()
        return True

    def stale(self) -> list[Request]:
        """The requests that have waited QUEUE_WAIT seconds for a worker, out of the queue."""
        too_old = time.monotonic() - QUEUE_WAIT
        with self._ready:
            gone = []
            while self._queue and self._queue[0][0] <= too_old:
                gone.append(self._queue.popleft()[1])
            return gone

    def close(self) -> list[Request]:
        """Let every thread end once it is done with its job; the requests still queued."""
        with self._ready:
            self._closing = True
            self._ready.notify_all()
            gone = [job for _, job in self._queue]
            self._queue.clear()
            return gone

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._closing:
                    self._ready.wait()
                if not self._queue:
                    self._threads -= 1
                    return
                job = self._queue.popleft()[1]
                self._busy += 1
            try:
                self._work(job)
            finally:
                with self._ready:
                    self._busy -= 1


class _DeadlineWriter(io.BufferedIOBase):
    """Writes to a socket, all writes together within one deadline."""

    def __init__(self, conn: socket.socket, deadline: float) -> None:
        self._conn = conn
        self._deadline = deadline

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        size = view.nbytes
        while view:
            left = self._deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"answer not sent within {RESPONSE_TIMEOUT:g}s")
            self._conn.settimeout(left)
            view = view[self._conn.send(view) :]
        return size


class _ServerHandler(ServerHandler):
    """wsgiref's handler, but a client that goes away or reads too slowly is one debug line
    instead of a traceback on stderr."""

    server_software = "beenergised-exporter"  # the Server header; wsgiref's names Python's version

    def log_exception(
        self,
        exc_info: tuple[type[BaseException], BaseException, TracebackType]
        | tuple[None, None, None],
    ) -> None:
        error = exc_info[1]
        if isinstance(error, OSError):
            LOG.debug("answer not sent: %s", error)
        else:
            LOG.error("error sending an answer", exc_info=error)


class RequestHandler(WSGIRequestHandler):
    """Answers one :class:`Request` whose head is read already; logs at debug level instead of
    printing every request to stderr."""

    default_request_version = "HTTP/1.0"  # "GET /" without a version: answer with a status line

    def setup(self) -> None:
        request = self.request
        assert isinstance(request, Request)
        self.connection = request.conn
        # headers and body go out in separate writes
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        self.rfile = io.BytesIO(request.head)
        self.wfile = _DeadlineWriter(request.conn, time.monotonic() + RESPONSE_TIMEOUT)

    def handle(self) -> None:
        """WSGIRequestHandler.handle with the quieter ServerHandler."""
        self.raw_requestline = self.rfile.readline(65537)
        if len(self.raw_requestline) > 65536:
            self.requestline = self.request_version = self.command = ""
            self.send_error(414)
            return
        if not self.parse_request():  # it has sent an error answer
            return
        streams = cast(IO[bytes], self.rfile), cast(IO[bytes], self.wfile)
        handler = _ServerHandler(*streams, self.get_stderr(), self.get_environ(), multithread=False)
        handler.request_handler = self  # type: ignore[attr-defined]  # wsgiref's back pointer
        handler.run(self.server.get_app())  # type: ignore[attr-defined]

    def parse_request(self) -> bool:
        """BaseHTTPRequestHandler's, but an empty request line gets 400 instead of no answer,
        and HTTP/0.9, whose answers have no status line, gets 505."""
        if not str(self.raw_requestline, "iso-8859-1").split():  # as parse_request splits it
            self.requestline = self.request_version = self.command = ""
            self.send_error(400, "Empty request line")
            return False
        if not super().parse_request():
            return False
        if self.request_version != "HTTP/0.9":
            return True
        self.send_error(505, "HTTP/0.9 is not supported")
        return False

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """An answer of the HTTP parser to a head it cannot use (400, 414, 431, 505)."""
        server = self.server
        assert isinstance(server, Server)
        server.refused.record("bad_request")
        if self.request_version == "HTTP/0.9":  # which would leave out the status line
            self.request_version = "HTTP/1.0"
        super().send_error(code, message, explain)

    def version_string(self) -> str:
        """The Server header of those answers, as of every other."""
        return _ServerHandler.server_software

    def log_message(self, format: str, *args: Any) -> None:
        LOG.debug("%s %s", self.address_string(), format % args)


def _open_files_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def _reserve() -> int | None:
    """A spare file descriptor, closed to accept and refuse one connection when none is left."""
    try:
        return os.open(os.devnull, os.O_RDONLY)
    except OSError:
        return None


def _close(conn: socket.socket, answer: bytes = b"") -> None:
    """Send what fits of a short answer without waiting, then close."""
    try:
        if answer:
            conn.send(answer)
    except OSError:  # the client is gone, or its window is shut: it gets no answer
        pass
    conn.close()


class Server(WSGIServer):
    """Serves a WSGI app on listening sockets (:mod:`exporter.listeners`), all of them within
    one :class:`ServerLimits`; ``ssl_context`` set, every connection must speak TLS.
    ``serve_forever`` runs the accepting thread; ``shutdown`` stops it; ``server_close`` closes
    the sockets."""

    def __init__(
        self,
        listeners: Sequence[socket.socket],
        *,
        limits: ServerLimits = DEFAULT_LIMITS,
        refused: RefusedRequests | None = None,
    ) -> None:
        if not listeners:
            raise ValueError("no socket to listen on")
        self._selector = selectors.DefaultSelector()
        self.listeners = list(listeners)
        # TCPServer.__init__ would open and bind a socket of its own.
        socketserver.BaseServer.__init__(self, listeners[0].getsockname(), RequestHandler)
        self.socket = listeners[0]
        host, self.server_port = self.server_address[:2]
        self.server_name = str(host)
        self.setup_environ()
        self.limits = limits
        self.refused = refused or RefusedRequests()
        self.ssl_context: ssl.SSLContext | None = None
        self.max_waiting = max(
            8, min(MAX_WAITING, _open_files_limit() - 2 * limits.max_requests - FD_SPARE)
        )
        """Connections in their handshake or head at most; a new one closes the oldest. With
        the requests answered and queued, clients hold FD_SPARE less than the limit at most."""
        self.worker_name = f"http-{self.server_address[1]}"
        """The name of the worker threads."""
        self._workers = _Workers(limits.max_requests, self._serve, self.worker_name)
        self._waiting: dict[int, _Waiting] = {}  # by file descriptor, oldest first
        self._clients: dict[str, dict[int, _Waiting]] = {}  # the same, by client key
        self._reserve: int | None = None
        self._paused_until: float | None = None
        self._warnings = _Warnings()
        self._stop = threading.Event()
        self._stopped = threading.Event()

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """Accept, read heads and hand them to the workers until ``shutdown``."""
        for listener in self.listeners:
            listener.setblocking(False)
            self._selector.register(listener, selectors.EVENT_READ)
        self._reserve = _reserve()
        try:
            while not self._stop.is_set():
                for key, _ in self._selector.select(self._wait_time(poll_interval)):
                    if key.data is None:  # a listening socket
                        self._accept(cast(socket.socket, key.fileobj))
                    elif not key.data.done:  # not closed by an earlier event of this round
                        self._advance(key.data)
                self._expire()
                for request in self._workers.stale():
                    self._refuse_busy(request)
                self._resume()
        finally:
            for waiting in list(self._waiting.values()):
                self._drop(waiting)
            if self._reserve is not None:
                os.close(self._reserve)
            for request in self._workers.close():
                _close(request.conn)
            self._stopped.set()

    def server_close(self) -> None:
        for listener in self.listeners:
            listener.close()
        self._selector.close()

    def shutdown(self) -> None:
        """Stop ``serve_forever`` and wait until it has; answers under way go on."""
        self._stop.set()
        self._stopped.wait()

    def _wait_time(self, poll_interval: float) -> float:
        now = time.monotonic()
        until = [now + poll_interval]
        if self._waiting:
            until.append(next(iter(self._waiting.values())).deadline)
        if self._paused_until is not None:
            until.append(self._paused_until)
        return max(0.0, min(until) - now)

    # accepting

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, address = listener.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:  # the client gave up while in the backlog
                continue
            except OSError as e:
                if e.errno in _NO_DESCRIPTORS:
                    self._out_of_descriptors(listener, e)
                else:
                    self._warnings.warn("accept", "cannot accept connections: %s", e)
                    self._pause()
                return
            try:
                self._admit(conn, address)
            except Exception:
                LOG.error("error accepting a connection from %s", address[0], exc_info=True)
                conn.close()

    def _admit(self, conn: socket.socket, address: Any) -> None:
        conn.setblocking(False)
        if len(self._waiting) >= self.max_waiting:
            self._make_room()
        fd = conn.fileno()
        deadline = time.monotonic() + self.limits.header_timeout
        waiting = _Waiting(conn, fd, address, client_key(address[0]), deadline, self.ssl_context)
        self._selector.register(fd, waiting.events, waiting)
        self._waiting[fd] = waiting
        self._clients.setdefault(waiting.key, {})[fd] = waiting

    def _make_room(self) -> None:
        """Close the connection that has been sending its head the longest, of the client
        that has the most of them: a crowd from one host or network cannot push out others."""
        busiest = max(self._clients.values(), key=len)
        oldest, held = next(iter(busiest.values())), len(busiest)
        LOG.debug("%s still sending its request head; closed to make room", oldest.client)
        self._refuse(oldest, "too_many_connections")
        self._warnings.warn(
            "too_many_connections",
            "%d connections are sending their request head, the most the open-file limit "
            "allows (ulimit -n); closed the oldest of %s, which had %d of them",
            self.max_waiting,
            oldest.key,
            held,
        )

    def _out_of_descriptors(self, listener: socket.socket, error: OSError) -> None:
        """No file descriptor for a new connection: free one, or refuse one politely with the
        reserve, or rest a moment; never try again at once."""
        self._warnings.warn(
            "out_of_file_descriptors",
            "no file descriptor for a new connection (%s): raise the open-file limit (ulimit -n, "
            "now %d) or lower --web.max-requests (now %d)",
            error.strerror,
            _open_files_limit(),
            self.limits.max_requests,
        )
        if self._waiting:
            self._make_room()
            return
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None
            conn: socket.socket | None
            try:
                conn, _ = listener.accept()
            except OSError:  # nothing to accept after all, or still no descriptor
                conn = None
            if conn is not None:
                self.refused.record("out_of_file_descriptors")
                _close(conn, _BUSY_ANSWER)
            self._reserve = _reserve()
            if conn is not None and self._reserve is not None:
                return
        self._pause()

    def _pause(self) -> None:
        """Accept nothing for ACCEPT_PAUSE seconds; the connections already here go on."""
        if self._paused_until is None:
            for listener in self.listeners:
                self._selector.unregister(listener)
        self._paused_until = time.monotonic() + ACCEPT_PAUSE

    def _resume(self) -> None:
        if self._paused_until is not None and time.monotonic() >= self._paused_until:
            self._paused_until = None
            for listener in self.listeners:
                self._selector.register(listener, selectors.EVENT_READ)
            if self._reserve is None:
                self._reserve = _reserve()

    # handshakes and heads

    def _advance(self, waiting: _Waiting) -> None:
        try:
            if waiting.context is not None and not self._start_tls(waiting, waiting.context):
                return
            if waiting.shaking and not self._handshake(waiting):
                return
            self._read_head(waiting)
        except Exception:
            LOG.error("error reading the request of %s", waiting.client, exc_info=True)
            self._drop(waiting)

    def _start_tls(self, waiting: _Waiting, context: ssl.SSLContext) -> bool:
        """Whether the client starts a TLS handshake (then it is under way); plain HTTP gets
        400, silence waits."""
        try:
            first = waiting.conn.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return False
        except OSError as e:
            LOG.debug("TLS handshake with %s failed: %s", waiting.client, e)
            self._drop(waiting)
            return False
        if not first:
            LOG.debug("%s closed the connection before the TLS handshake", waiting.client)
            self._drop(waiting)
            return False
        if first[0] != _TLS_HANDSHAKE_RECORD:
            LOG.debug(
                "%s sent plain HTTP (or no TLS) to the TLS port; answered 400", waiting.client
            )
            with contextlib.suppress(OSError):  # unread input would make our close a reset
                waiting.conn.recv(MAX_HEAD)
            self._drop(waiting, _PLAIN_HTTP_ANSWER)
            return False
        # The TLS socket takes over the file descriptor, which stays registered.
        waiting.conn = context.wrap_socket(
            waiting.conn, server_side=True, do_handshake_on_connect=False
        )
        waiting.context = None
        waiting.shaking = True
        return True

    def _handshake(self, waiting: _Waiting) -> bool:
        """Whether the TLS handshake is done; else it waits or has failed (and is closed)."""
        assert isinstance(waiting.conn, ssl.SSLSocket)
        try:
            waiting.conn.do_handshake()
        except ssl.SSLWantReadError:
            self._wait_for(waiting, selectors.EVENT_READ)
            return False
        except ssl.SSLWantWriteError:
            self._wait_for(waiting, selectors.EVENT_WRITE)
            return False
        except OSError as e:  # ssl.SSLError, resets
            LOG.debug("TLS handshake with %s failed: %s", waiting.client, e)
            self._drop(waiting)
            return False
        waiting.shaking = False
        self._wait_for(waiting, selectors.EVENT_READ)
        return True

    def _read_head(self, waiting: _Waiting) -> None:
        """Read what has come; a complete head goes to a worker, a head too long gets 431."""
        head = waiting.head
        while True:
            try:
                data = waiting.conn.recv(MAX_HEAD + 1 - len(head))
            except (BlockingIOError, ssl.SSLWantReadError):
                self._wait_for(waiting, selectors.EVENT_READ)
                return
            except ssl.SSLWantWriteError:
                self._wait_for(waiting, selectors.EVENT_WRITE)
                return
            except OSError as e:
                LOG.debug("connection from %s ended: %s", waiting.client, e)
                self._drop(waiting)
                return
            if not data:  # the client has said all it will: answer what it sent, if anything
                if head:
                    self._dispatch(waiting)
                else:
                    LOG.debug("%s closed the connection without a request", waiting.client)
                    self._drop(waiting)
                return
            start = max(0, len(head) - 2)
            head += data
            # Empty lines before the request line are skipped (RFC 9112, 2.2).
            if head.startswith((b"\r", b"\n")):
                del head[: len(head) - len(head.lstrip(b"\r\n"))]
                start = 0
            if _HEAD_END.search(head, start):
                self._dispatch(waiting)
                return
            if len(head) > MAX_HEAD:
                LOG.debug(
                    "%s sent a request head over %d bytes; answered 431", waiting.client, MAX_HEAD
                )
                self._refuse(waiting, "header_too_large", _TOO_LARGE_ANSWER)
                return

    def _wait_for(self, waiting: _Waiting, events: int) -> None:
        if waiting.events != events:
            waiting.events = events
            self._selector.modify(waiting.fd, events, waiting)

    def _dispatch(self, waiting: _Waiting) -> None:
        self._forget(waiting)
        request = Request(waiting.conn, waiting.address, bytes(waiting.head))
        if not self._workers.submit(request):
            self._refuse_busy(request)

    def _refuse_busy(self, request: Request) -> None:
        """Answer 503: every worker busy, and the queue full or too slow."""
        LOG.debug("%s: all workers busy; answered 503", request.address[0])
        self.refused.record("too_many_requests")
        self._warnings.warn(
            "too_many_requests",
            "%d requests are being answered and as many wait (--web.max-requests): answered 503",
            self.limits.max_requests,
        )
        _close(request.conn, _BUSY_ANSWER)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._waiting:
            oldest = next(iter(self._waiting.values()))
            if oldest.deadline > now:
                return
            LOG.debug(
                "%s: no complete request head within %gs (--web.read-header-timeout); closed",
                oldest.client,
                self.limits.header_timeout,
            )
            in_head = oldest.context is None and not oldest.shaking  # past any TLS handshake
            self._refuse(oldest, "header_timeout", _TIMEOUT_ANSWER if in_head else b"")

    def _refuse(self, waiting: _Waiting, reason: str, answer: bytes = b"") -> None:
        self.refused.record(reason)
        self._drop(waiting, answer)

    def _forget(self, waiting: _Waiting) -> None:
        waiting.done = True
        self._selector.unregister(waiting.fd)
        del self._waiting[waiting.fd]
        same_client = self._clients[waiting.key]
        del same_client[waiting.fd]
        if not same_client:
            del self._clients[waiting.key]

    def _drop(self, waiting: _Waiting, answer: bytes = b"") -> None:
        self._forget(waiting)
        _close(waiting.conn, answer)

    # answering

    def _serve(self, request: Request) -> None:
        """A worker's job: answer one request, then close the connection."""
        try:
            self.finish_request(request, request.address)  # type: ignore[arg-type]
        except Exception:
            self.handle_error(request.conn, request.address)
        finally:
            self.shutdown_request(request.conn)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that times out or goes away is routine: one debug line, no traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            LOG.debug("connection from %s ended: %s", client_address[0], error)
        else:
            LOG.error("error serving %s", client_address[0], exc_info=error)
