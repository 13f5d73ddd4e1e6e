"""A scripted HTTP double on a raw socket: every request is answered with the exact bytes a
function returns, so a test can send what no HTTP server library would (a bad status line, CR
in a header, a lying Content-Length, broken chunks, a bad gzip stream). Loopback only."""

from __future__ import annotations

import gzip
import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

MAX_HEAD = 64 * 1024
"""Bytes of a request head read at most; a longer head ends the connection."""


@dataclass(frozen=True)
class Request:
    """One request as received: method, target, headers (lower-cased names, in order)."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    def query(self, name: str, default: str = "") -> str:
        return parse_qs(urlsplit(self.target).query).get(name, [default])[0]

    def header(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name.lower()]


@dataclass(frozen=True)
class Reply:
    """The bytes to send; then wait ``stall`` seconds (or until the server stops), then close
    the connection unless ``keep_open``."""

    data: bytes
    stall: float = 0.0
    keep_open: bool = False


Answer = Callable[[Request], Reply]


@dataclass
class RawServer:
    """Answers each request on 127.0.0.1 with ``answer(request)``; records every request."""

    answer: Answer
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._connections: list[socket.socket] = []
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, name="raw-accept", daemon=True).start()

    def __enter__(self) -> RawServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        with self._lock:
            for conn in self._connections:
                conn.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._connections.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        buffer = b""
        try:
            while not self._stop.is_set():
                request, buffer = _read_request(conn, buffer)
                if request is None:
                    return
                with self._lock:
                    self.requests.append(request)
                reply = self.answer(request)
                conn.sendall(reply.data)
                if reply.stall:
                    self._stop.wait(reply.stall)
                if not reply.keep_open:
                    return
        except OSError:
            return
        finally:
            with self._lock:
                if conn in self._connections:
                    self._connections.remove(conn)
            conn.close()


def _read_request(conn: socket.socket, buffer: bytes) -> tuple[Request | None, bytes]:
    while b"\r\n\r\n" not in buffer:
        if len(buffer) > MAX_HEAD:
            return None, b""
        chunk = conn.recv(65536)
        if not chunk:
            return None, b""
        buffer += chunk
    head, _, buffer = buffer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = [*lines[0].split(" ", 2), "", ""][:3]
    headers = [
        (name.strip().lower(), value.strip())
        for name, _, value in (line.partition(":") for line in lines[1:])
    ]
    length = int(dict(headers).get("content-length", "0") or 0)
    while len(buffer) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None, b""
        buffer += chunk
    return Request(method, target, headers, buffer[:length]), buffer[length:]


def http(
    status: int | bytes,
    headers: list[tuple[str, str]] | list[tuple[bytes, bytes]] = (),  # type: ignore[assignment]
    body: bytes = b"",
    *,
    length: bool = True,
) -> bytes:
    """An HTTP/1.1 answer as bytes; ``Connection: close`` and a true Content-Length unless
    ``length`` is False. A status given as bytes is the whole status line."""
    line = status if isinstance(status, bytes) else f"HTTP/1.1 {status} X".encode()
    fields = [(_bytes(name), _bytes(value)) for name, value in headers]
    fields.append((b"Connection", b"close"))
    if length:
        fields.append((b"Content-Length", str(len(body)).encode()))
    return line + b"\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in fields) + b"\r\n" + body


def _bytes(text: str | bytes) -> bytes:
    return text if isinstance(text, bytes) else text.encode("utf-8")


def json_answer(document: object, status: int = 200, **headers: str) -> bytes:
    """A JSON answer (headers given as keyword arguments, ``_`` for ``-``)."""
    fields = [("Content-Type", "application/json")]
    fields += [(name.replace("_", "-"), value) for name, value in headers.items()]
    return http(status, fields, json.dumps(document).encode())


def token_answer(value: str, expires_in: object = 3600, token_type: object = "Bearer") -> bytes:
    """A token endpoint's answer handing out ``value`` (as JSON: any character may be in it)."""
    return json_answer({"access_token": value, "token_type": token_type, "expires_in": expires_in})


FLEET = [
    {
        "type": "charging_stations",
        "id": f"st-{i}",
        "attributes": {
            "label": f"Station {i}",
            "chargeBoxIdentity": f"cb_{i}",
            "firmwareVersion": f"1.{i % 2}",
            "serialnumber": f"SN{i}",
            "iccid": "8949",
            "imsi": "2620",
        },
    }
    for i in range(5)
]
"""The fleet the stations answers list: five stations on two firmware versions."""


def stations_document(request: Request, fleet: list[dict] = FLEET) -> dict:
    """The JSON:API page of ``fleet`` that ``request`` asks for."""
    limit = max(1, _number(request.query("page[limit]"), 100))
    offset = _number(request.query("page[offset]"), 0)
    rows = fleet[offset : offset + limit]
    return {
        "data": rows,
        "meta": {"pagination": {"total": len(fleet), "lastPage": offset + len(rows) >= len(fleet)}},
    }


def _number(text: str, default: int) -> int:
    return int(text) if text.isascii() and text.isdigit() and len(text) < 10 else default


def stations_answer(request: Request, fleet: list[dict] = FLEET) -> bytes:
    return http(
        200,
        [("Content-Type", "application/vnd.api+json")],
        json.dumps(stations_document(request, fleet)).encode(),
    )


def gzipped(body: bytes) -> bytes:
    return gzip.compress(body, mtime=0)
