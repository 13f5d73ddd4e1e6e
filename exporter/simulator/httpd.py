"""The simulator's HTTP plumbing: a threading server that can drop its keep-alive connections
and a handler that turns each request into one call of a ``respond`` function and sends its
answer back, whole, broken, dripped or padded, as the answer says."""

from __future__ import annotations

import contextlib
import socket
import socketserver
import ssl
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from exporter.simulator.wire import Ending, Request, Response, phrase

DRIP_BYTES = 2
PAD_CHUNK = 64 * 1024

Respond = Callable[[Request], Response]


def _pieces(data: bytes, size: int) -> Iterator[bytes]:
    return (data[start : start + size] for start in range(0, len(data), size))


def _padded(payload: bytes, size: int) -> tuple[int, Iterator[bytes]]:
    """A JSON object ``payload`` with a "padding" member in front that makes it ``size``
    bytes long (or as short as it can be): its length and its pieces, made as they are sent."""
    prefix, suffix = b'{"padding":"', b'",' + payload[1:]
    fill = max(0, size - len(prefix) - len(suffix))

    def pieces() -> Iterator[bytes]:
        yield prefix
        chunk = b"x" * PAD_CHUNK
        for _ in range(fill // PAD_CHUNK):
            yield chunk
        yield chunk[: fill % PAD_CHUNK]
        yield suffix

    return len(prefix) + fill + len(suffix), pieces()


class Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that answers with ``respond`` and can drop keep-alive connections."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], respond: Respond) -> None:
        self.respond = respond
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (getfqdn), which can stall for seconds.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.socket.getsockname()[:2]

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that refuses our TLS certificate is a test case, not a traceback."""
        if not isinstance(sys.exc_info()[1], ssl.SSLError | ConnectionError):
            super().handle_error(request, client_address)

    def close_connections(self) -> None:
        """Wake handler threads waiting on idle keep-alive connections so they end."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by its handler thread
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    """Translates HTTP to and from the server's ``respond``; logs nothing (tokens, secrets)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes; no 40 ms stalls
    server: Server

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        response = self.server.respond(Request(self.command, self.path, self.headers, body))
        if response.ending is Ending.NO_RESPONSE:
            self.close_connection = True
            return
        if response.streamed:
            self._stream(response)
            return
        payload = response.payload
        sent = payload
        if response.ending is Ending.HALF_BODY:
            sent = payload[: len(payload) // 2]
            self.close_connection = True
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in response.headers:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(sent)
        except ConnectionError:  # the client gave up (e.g. its timeout was shorter than latency)
            self.close_connection = True

    def _stream(self, response: Response) -> None:
        """Send a drip or oversized answer piece by piece."""
        payload = response.payload
        if response.padding:
            length, body = _padded(payload, response.padding)
        else:
            length, body = len(payload), iter((payload,))
        lines = [
            f"HTTP/1.1 {response.status} {phrase(response.status)}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {length}",
            *(f"{name}: {value}" for name, value in response.headers),
        ]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            if response.drip_head:
                self._drip(head, response)
            else:
                self.wfile.write(head)
            if response.pause and not response.drip_head:
                self._drip(payload, response)
            else:
                for piece in body:
                    self.wfile.write(piece)
        except ConnectionError:  # the client gave up on the drip or the oversized body
            self.close_connection = True

    def _drip(self, data: bytes, response: Response) -> None:
        wake = response.wake or threading.Event()
        for piece in _pieces(data, DRIP_BYTES):
            self.wfile.write(piece)
            wake.wait(response.pause)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log: it would show query strings with secrets."""
