"""Answering one request in a worker thread: wsgiref's handler runs the WSGI app on a request
whose head the accepting thread has read (:class:`exporter.webheads.Request`), sends the whole
answer within RESPONSE_TIMEOUT, and counts the HTTP parser's own answers as refused.
"""

from __future__ import annotations

import io
import logging
import socket
import socketserver
import time
from types import TracebackType
from typing import IO, Any, cast
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler

from exporter.refused import RefusedRequests
from exporter.webheads import Request

LOG = logging.getLogger("exporter.webserver")  # one source for the server's log lines

RESPONSE_TIMEOUT = 60.0
"""Seconds one answer may take to send, whole: a client that reads slowly holds a worker no
longer (Go's WriteTimeout)."""


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

    def __init__(
        self,
        request: Any,
        client_address: Any,
        server: socketserver.BaseServer,
        *,
        refused: RefusedRequests,
    ) -> None:
        """``refused`` counts the HTTP parser's answers (``bad_request``)."""
        self.refused = refused  # first: the base class answers the request in its __init__
        super().__init__(request, client_address, server)

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
        self.refused.record("bad_request")
        if self.request_version == "HTTP/0.9":  # which would leave out the status line
            self.request_version = "HTTP/1.0"
        super().send_error(code, message, explain)

    def version_string(self) -> str:
        """The Server header of those answers, as of every other."""
        return _ServerHandler.server_software

    def log_message(self, format: str, *args: Any) -> None:
        LOG.debug("%s %s", self.address_string(), format % args)
