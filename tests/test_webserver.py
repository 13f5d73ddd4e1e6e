"""Tests of exporter/webserver.py and the rooms it wires (webheads.py, webworkers.py,
webhandler.py): the bounds of the HTTP server, with a small WSGI app of their own on
127.0.0.1: requests at once, connections waiting for their head and who gives way, running out
of file descriptors, the whole-answer deadline, TLS clients that say nothing."""

from __future__ import annotations

import errno
import logging
import platform
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from exporter import webhandler, webserver
from exporter.listeners import listen
from exporter.refused import RefusedRequests
from exporter.webserver import ACCEPT_PAUSE, Server, ServerLimits
from exporter.webworkers import QUEUE_WAIT
from tests.helpers import wait_until

App = Callable[[dict[str, Any], Callable[..., Any]], list[bytes]]


def hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "6")])
    return [b"hello\n"]


class Held:
    """An app whose answers wait until ``release``; ``waiting`` counts the requests in it."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.waiting = 0
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        with self._lock:
            self.waiting += 1
        self.release.wait(10)
        return hello(environ, start_response)


def start_flaky(start: Callable[..., Server], failures: int = 0) -> tuple[Server, FlakyListener]:
    """A server started by ``start`` whose listening socket is a FlakyListener."""
    listeners: list[FlakyListener] = []

    def prepare(server: Server) -> None:
        listeners.append(FlakyListener(server.listeners[0]))
        listeners[0].failures = failures
        server.listeners[0] = listeners[0]  # type: ignore[call-overload]

    return start(prepare=prepare), listeners[0]


class FlakyListener:
    """The server's listening socket, but its next ``failures`` accepts fail with EMFILE."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.failures = 0
        self.calls = 0

    def accept(self) -> tuple[socket.socket, Any]:
        self.calls += 1
        if self.failures > 0:
            self.failures -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return self._sock.accept()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


@pytest.fixture
def start() -> Iterator[Callable[..., Server]]:
    """Starts a Server for an app on 127.0.0.1 (``listeners`` sockets) with the given limits;
    stops it afterwards."""
    running: list[tuple[Server, threading.Thread]] = []

    def start(
        app: App = hello,
        prepare: Callable[[Server], None] | None = None,
        listeners: int = 1,
        **limits: Any,
    ) -> Server:
        sockets = [listen("127.0.0.1", 0) for _ in range(listeners)]
        server = Server(sockets, limits=ServerLimits(**limits), refused=RefusedRequests())
        server.set_app(app)
        if prepare is not None:
            prepare(server)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        running.append((server, thread))
        return server

    yield start
    for server, thread in running:
        server.shutdown()
        server.server_close()
        thread.join(5)


def counts(server: Server) -> dict[str, float]:
    samples = next(iter(server.refused.collect())).samples
    return {s.labels["reason"]: s.value for s in samples if s.value}


def port_of(server: Server, listener: int = 0) -> int:
    return int(server.listeners[listener].getsockname()[1])


def connect(server: Server, source: str = "127.0.0.1", listener: int = 0) -> socket.socket:
    sock = socket.socket()
    sock.settimeout(5)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port_of(server, listener)))
    return sock


def ask(sock: socket.socket, path: str = "/") -> bytes:
    """Send a request on ``sock`` and read the answer until the server closes."""
    sock.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    sock.close()
    return answer


def get(server: Server, source: str = "127.0.0.1") -> bytes:
    return ask(connect(server, source))


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_the_server_header_names_the_exporter_not_the_python_version(start):
    """An answer of the app and one of the HTTP parser (400) alike."""
    server = start()
    answers = [get(server), ask(connect(server), "/ not a request line:")]
    for answer, status in zip(answers, (b"200", b"400"), strict=True):
        head = answer.split(b"\r\n\r\n")[0].decode("latin-1")
        assert head.split()[1] == status.decode(), head
        assert re.findall(r"(?mi)^server: ([^\r\n]*)", head) == ["beenergised-exporter"], head
        assert platform.python_version() not in head and "Python" not in head, head


def test_requests_beyond_max_requests_wait_a_moment_and_beyond_that_get_503(start):
    app = Held()
    server = start(app, max_requests=2)
    answers: list[tuple[float, bytes]] = []

    def timed_get() -> None:
        began = time.monotonic()
        answer = get(server)
        answers.append((time.monotonic() - began, answer))

    holders = [threading.Thread(target=timed_get) for _ in range(4)]
    for holder in holders[:2]:
        holder.start()
    wait_until(lambda: app.waiting == 2, timeout=5, what="two requests in the app")
    for holder in holders[2:]:
        holder.start()
    wait_until(lambda: len(server._workers._queue) == 2, timeout=5, what="two requests queued")
    began = time.monotonic()
    answer = get(server)  # the queue is full: at once
    assert time.monotonic() - began < QUEUE_WAIT
    assert answer.startswith(b"HTTP/1.0 503 Service Unavailable\r\n")
    assert b"Retry-After: 1\r\n" in answer
    # The two queued get 503 once they have waited QUEUE_WAIT; the app still holds its two.
    wait_until(lambda: len(answers) == 2, timeout=5, what="the queued requests refused")
    assert all(took >= QUEUE_WAIT * 0.9 and a.startswith(b"HTTP/1.0 503") for took, a in answers)
    assert [t.name for t in threading.enumerate()].count(server.worker_name) == 2
    app.release.set()
    for holder in holders:
        holder.join(5)
    assert [a.split(b"\r\n", 1)[0] for _, a in answers[2:]] == [b"HTTP/1.0 200 OK"] * 2
    assert get(server).startswith(b"HTTP/1.0 200 OK\r\n")
    assert counts(server) == {"too_many_requests": 3}


def test_every_listening_socket_answers_within_one_set_of_limits(start):
    """Two listen addresses share one accepting thread, one worker pool and its queue: a
    request to either counts against the same --web.max-requests."""
    app = Held()
    server = start(app, listeners=2, max_requests=1)
    assert port_of(server, 0) != port_of(server, 1)
    answers: list[bytes] = []

    def ask_at(listener: int) -> None:
        answers.append(ask(connect(server, listener=listener)))

    first = threading.Thread(target=ask_at, args=(0,))
    first.start()
    wait_until(lambda: app.waiting == 1, timeout=5, what="a request of the first in the app")
    second = threading.Thread(target=ask_at, args=(1,))
    second.start()
    wait_until(lambda: len(server._workers._queue) == 1, timeout=5, what="the second queued")
    # Worker busy and queue full, whichever socket the request came in on: 503 at once.
    assert ask(connect(server, listener=1)).startswith(b"HTTP/1.0 503 Service Unavailable\r\n")
    assert ask(connect(server, listener=0)).startswith(b"HTTP/1.0 503 Service Unavailable\r\n")
    assert [t.name for t in threading.enumerate()].count(server.worker_name) == 1
    app.release.set()
    first.join(5)
    second.join(5)
    assert [answer.split(b"\r\n", 1)[0] for answer in answers] == [b"HTTP/1.0 200 OK"] * 2
    assert counts(server) == {"too_many_requests": 2}


def test_a_request_waits_for_a_worker_that_is_finishing(start):
    """A client that sends its next request before the worker of its last one is done waits for
    that worker instead of getting 503."""
    app = Held()
    server = start(app, max_requests=1)
    first = threading.Thread(target=get, args=(server,))
    first.start()
    wait_until(lambda: app.waiting == 1, timeout=5, what="a request in the app")
    second: list[bytes] = []
    asker = threading.Thread(target=lambda: second.append(get(server)))
    asker.start()
    wait_until(lambda: len(server._workers._queue) == 1, timeout=5, what="a request queued")
    app.release.set()
    first.join(5)
    asker.join(5)
    assert second[0].startswith(b"HTTP/1.0 200 OK\r\n")
    assert counts(server) == {}


def test_threads_stay_within_max_requests_however_many_ask(start):
    app = Held()
    server = start(app, max_requests=3)
    answers: list[bytes] = []
    askers = [threading.Thread(target=lambda: answers.append(get(server))) for _ in range(20)]
    for asker in askers:
        asker.start()
    wait_until(lambda: app.waiting == 3, timeout=5, what="three requests in the app")
    # 14 refused at once, 3 after waiting in the queue
    wait_until(lambda: len(answers) == 17, timeout=5, what="the others refused")
    assert len([t for t in threading.enumerate() if t.name == server.worker_name]) == 3
    app.release.set()
    for asker in askers:
        asker.join(5)
    statuses = sorted(answer.split(b"\r\n", 1)[0] for answer in answers)
    assert statuses == [b"HTTP/1.0 200 OK"] * 3 + [b"HTTP/1.0 503 Service Unavailable"] * 17


def test_a_new_connection_closes_the_oldest_of_the_client_with_the_most(start, caplog):
    caplog.set_level(logging.WARNING, logger="exporter.webserver")
    server = start()
    server.max_waiting = 4
    crowd = [connect(server, "127.0.0.2") for _ in range(3)]
    scraper = connect(server, "127.0.0.3")
    wait_until(lambda: len(server._waiting) == 4, timeout=5, what="four waiting connections")
    newcomer = connect(server, "127.0.0.3")  # the fifth: the crowd's oldest gives way
    assert closed_by_server(crowd[0])
    newer = connect(server, "127.0.0.3")  # the sixth: again the crowd's oldest
    assert closed_by_server(crowd[1])
    assert ask(scraper).startswith(b"HTTP/1.0 200 OK\r\n")
    assert ask(newcomer).startswith(b"HTTP/1.0 200 OK\r\n")
    assert ask(newer).startswith(b"HTTP/1.0 200 OK\r\n")
    assert counts(server) == {"too_many_connections": 2}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [  # the second is within a minute of the first: not logged
        "4 connections are sending their request head, the most the open-file limit allows "
        "(ulimit -n); closed the oldest of 127.0.0.2, which had 3 of them"
    ]
    for sock in crowd:
        sock.close()


def test_waiting_connections_follow_the_open_file_limit(monkeypatch, start):
    monkeypatch.setattr(webserver, "_open_files_limit", lambda: 256)
    assert start(max_requests=40).max_waiting == 256 - 2 * 40 - webserver.FD_SPARE
    monkeypatch.setattr(webserver, "_open_files_limit", lambda: 1 << 20)
    assert start().max_waiting == webserver.MAX_WAITING
    monkeypatch.setattr(webserver, "_open_files_limit", lambda: 64)
    assert start().max_waiting == 8


def test_out_of_file_descriptors_a_waiting_connection_makes_room(start):
    server, flaky = start_flaky(start)
    idle = connect(server)
    wait_until(lambda: len(server._waiting) == 1, timeout=5, what="the idle connection")
    flaky.failures = 1
    waiting = connect(server)  # in the backlog: accept fails, the idle one is closed for it
    assert closed_by_server(idle)
    assert ask(waiting).startswith(b"HTTP/1.0 200 OK\r\n")
    assert counts(server) == {"too_many_connections": 1}


def test_out_of_file_descriptors_the_reserve_refuses_one_politely(start):
    server, flaky = start_flaky(start)
    flaky.failures = 1
    sock = connect(server)  # accept fails; the reserve descriptor is closed for the next one
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    assert answer.startswith(b"HTTP/1.0 503 Service Unavailable\r\n")
    assert counts(server) == {"out_of_file_descriptors": 1}
    assert get(server).startswith(b"HTTP/1.0 200 OK\r\n")


def test_out_of_file_descriptors_is_never_a_busy_loop(start, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="exporter.webserver")
    monkeypatch.setattr(webserver, "_reserve", lambda: None)  # no descriptor to spare either
    server, flaky = start_flaky(start, failures=10**9)
    sock = connect(server)  # waits in the backlog: the listening socket stays readable
    began = time.monotonic()
    wait_until(lambda: flaky.calls >= 5, timeout=5, what="accept to be retried")
    elapsed = time.monotonic() - began
    assert flaky.calls <= elapsed / ACCEPT_PAUSE + 3, f"{flaky.calls} in {elapsed}s"
    flaky.failures = 0
    assert ask(sock).startswith(b"HTTP/1.0 200 OK\r\n")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith(
        "no file descriptor for a new connection (Too many open files): raise the open-file "
        "limit (ulimit -n, now "
    )


def test_a_client_that_reads_too_slowly_is_cut_at_the_answer_deadline(start, monkeypatch):
    monkeypatch.setattr(webhandler, "RESPONSE_TIMEOUT", 0.5)
    body = b"x" * (32 * 1024 * 1024)  # far more than the socket buffers hold

    def big(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    server = start(big, max_requests=1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port_of(server)))
    sock.sendall(b"GET / HTTP/1.0\r\n\r\n")  # and never read
    began = time.monotonic()
    # The one worker is free again once the answer was cut: the next request is answered.
    wait_until(
        lambda: get(server).startswith(b"HTTP/1.0 200 OK\r\n"), timeout=10, what="a free worker"
    )
    assert time.monotonic() - began < 5
    assert set(counts(server)) <= {"too_many_requests"}  # while the worker was still busy
    sock.close()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context) for 127.0.0.1."""
    ca = trustme.CA()
    pem = Path(tmp_path_factory.mktemp("webserver-tls")) / "server.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(pem))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(str(pem))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


@pytest.mark.parametrize("handshake", [False, True])
def test_a_tls_client_is_cut_at_the_head_deadline_before_or_after_its_handshake(
    start, tls, handshake
):
    server_context, client_context = tls

    def prepare(server: Server) -> None:
        server.ssl_context = server_context

    server = start(prepare=prepare, header_timeout=0.5)
    began = time.monotonic()
    sock = connect(server)
    if handshake:
        sock = client_context.wrap_socket(sock, server_hostname="127.0.0.1")
        sock.sendall(b"GET / HTTP/1.0\r\n")  # and no end of the head
    try:
        answer = sock.recv(65536)
    except (ConnectionResetError, ssl.SSLError):
        answer = b""
    assert 0.4 < time.monotonic() - began < 3
    assert answer == b"" or answer.startswith(b"HTTP/1.0 408 Request Timeout\r\n")
    assert counts(server) == {"header_timeout": 1}
    tls_client = client_context.wrap_socket(connect(server), server_hostname="127.0.0.1")
    assert ask(tls_client).startswith(b"HTTP/1.0 200 OK\r\n")
    sock.close()


def test_shutdown_closes_the_connections_still_waiting(start):
    server = start()
    idle = connect(server)
    wait_until(lambda: len(server._waiting) == 1, timeout=5, what="the idle connection")
    server.shutdown()
    assert closed_by_server(idle)
