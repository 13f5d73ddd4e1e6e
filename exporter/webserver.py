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

This module is the accepting thread and the server around it: the listening sockets, the
connections still in their head and who gives way, the deadlines, and the 503s. One connection's
handshake and head are read in :mod:`exporter.webheads`; the worker threads and their queue are
:mod:`exporter.webworkers`; a worker answers with :mod:`exporter.webhandler`.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import resource
import selectors
import socket
import socketserver
import ssl
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast
from wsgiref.simple_server import WSGIServer

from exporter.refused import RefusedRequests
from exporter.webauth import client_key
from exporter.webhandler import RequestHandler
from exporter.webheads import Close, Incoming, Next, Request, short_answer
from exporter.webworkers import Workers

LOG = logging.getLogger(__name__)

MAX_REQUESTS = 40
"""Requests answered at once (--web.max-requests), as node_exporter's default."""
HEADER_TIMEOUT = 10.0
"""Seconds from accepting a connection to the end of its request head, TLS handshake included
(--web.read-header-timeout)."""
MAX_WAITING = 1024
"""Connections in their TLS handshake or request head at most, whatever the open-file limit."""
FD_SPARE = 64
"""File descriptors left to everything else (API connections, logs, the listening socket)
when the open-file limit sets how many connections may wait for their head."""
ACCEPT_BATCH = 64
"""Connections accepted in a row before the others get their turn."""
ACCEPT_PAUSE = 0.1
"""Seconds accepting rests when no file descriptor is left for a new connection."""
WARN_EVERY = 60.0
"""Seconds between two warnings of one kind; what happens in between is counted in the next."""

_NO_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)

_SILENTLY = Close()  # no answer, not counted as refused: the client went away, or we stop
_BUSY_ANSWER = short_answer(
    "503 Service Unavailable", "too many requests at once; try again\n", "Retry-After: 1\r\n"
)


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """How many requests are answered at once and how long a client has for its head."""

    max_requests: int = MAX_REQUESTS
    header_timeout: float = HEADER_TIMEOUT


DEFAULT_LIMITS = ServerLimits()


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
        self.refused = refused or RefusedRequests()
        answer = functools.partial(RequestHandler, refused=self.refused)
        # TCPServer.__init__ would open and bind a socket of its own.
        socketserver.BaseServer.__init__(self, listeners[0].getsockname(), answer)
        self.socket = listeners[0]
        host, self.server_port = self.server_address[:2]
        self.server_name = str(host)
        self.setup_environ()
        self.limits = limits
        self.ssl_context: ssl.SSLContext | None = None
        self.max_waiting = max(
            8, min(MAX_WAITING, _open_files_limit() - 2 * limits.max_requests - FD_SPARE)
        )
        """Connections in their handshake or head at most; a new one closes the oldest. With
        the requests answered and queued, clients hold FD_SPARE less than the limit at most."""
        self.worker_name = f"http-{self.server_address[1]}"
        """The name of the worker threads."""
        self._workers = Workers(limits.max_requests, self._serve, self.worker_name)
        self._waiting: dict[int, Incoming] = {}  # by file descriptor, oldest first
        self._clients: dict[str, dict[int, Incoming]] = {}  # the same, by client key
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
                self._round(poll_interval)
        finally:
            for waiting in list(self._waiting.values()):
                self._drop(waiting)
            if self._reserve is not None:
                os.close(self._reserve)
            for request in self._workers.close():
                _close(request.conn)
            self._stopped.set()

    def _round(self, poll_interval: float) -> None:
        """Serve what the sockets have for us within ``poll_interval``, then every deadline."""
        for key, _ in self._selector.select(self._wait_time(poll_interval)):
            if key.data is None:  # a listening socket
                self._accept(cast(socket.socket, key.fileobj))
            elif not key.data.done:  # not closed by an earlier event of this round
                self._advance(key.data)
        self._expire()
        for request in self._workers.stale():
            self._refuse_busy(request)
        self._resume()

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
        waiting = Incoming(conn, fd, address, client_key(address[0]), deadline, self.ssl_context)
        self._selector.register(fd, waiting.waits_for.value, waiting)
        self._waiting[fd] = waiting
        self._clients.setdefault(waiting.key, {})[fd] = waiting

    def _make_room(self) -> None:
        """Close the connection that has been sending its head the longest, of the client
        that has the most of them: a crowd from one host or network cannot push out others."""
        busiest = max(self._clients.values(), key=len)
        oldest, held = next(iter(busiest.values())), len(busiest)
        LOG.debug("%s still sending its request head; closed to make room", oldest.client)
        self._drop(oldest, Close(reason="too_many_connections"))
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

    # connections in their head

    def _advance(self, waiting: Incoming) -> None:
        """Let the connection go as far as it can: on to a worker, closed, or waiting."""
        try:
            step = waiting.advance()
            if isinstance(step, Close):
                self._drop(waiting, step)
            elif step is Next.WORKER:
                self._dispatch(waiting)
            elif waiting.waits_for is not step:
                waiting.waits_for = step
                self._selector.modify(waiting.fd, step.value, waiting)
        except Exception:
            LOG.error("error reading the request of %s", waiting.client, exc_info=True)
            self._drop(waiting)

    def _dispatch(self, waiting: Incoming) -> None:
        self._forget(waiting)
        request = waiting.request()
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
            self._drop(oldest, oldest.expired())

    def _forget(self, waiting: Incoming) -> None:
        waiting.done = True
        self._selector.unregister(waiting.fd)
        del self._waiting[waiting.fd]
        same_client = self._clients[waiting.key]
        del same_client[waiting.fd]
        if not same_client:
            del self._clients[waiting.key]

    def _drop(self, waiting: Incoming, close: Close = _SILENTLY) -> None:
        """Close a connection before any worker has it, counting its ``close.reason``."""
        if close.reason is not None:
            self.refused.record(close.reason)
        self._forget(waiting)
        _close(waiting.conn, close.answer)

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
