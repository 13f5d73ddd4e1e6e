"""The bounded session: every request it makes hands its connection to the watchdog, through
urllib3's public seams (a new connection, a reused one, TLS, a proxy); and no request goes out
without the bound. The cut itself is tested in test_http.py and test_slow_network.py."""

from __future__ import annotations

import pytest
import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection

from exporter.http import Deadline, RetryPolicy, send
from exporter.session import BoundedSession, watching
from exporter.simulator import Inventory, Simulator
from tests.helpers import private_ca
from tests.rawhttp import RawServer, Reply

KEEP_ALIVE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
"""An answer that leaves the connection open for the next request."""


def keep_alive_server() -> RawServer:
    return RawServer(lambda request: Reply(KEEP_ALIVE, keep_open=True))


def watched_connection(session: BoundedSession, url: str, **kwargs: object) -> object:
    """The connection the watch holds after one request to ``url`` (None: the watchdog could
    not have cut it)."""
    with watching(30) as watch:
        assert session.get(url, timeout=5, **kwargs).status_code == 200  # type: ignore[arg-type]
        assert getattr(watch.conn, "sock", None) is not None, "no socket handed to the watch"
        return watch.conn


def test_a_new_and_a_reused_connection_are_handed_to_the_watch() -> None:
    with keep_alive_server() as server:
        session = BoundedSession()
        first = watched_connection(session, server.url + "/a")
        again = watched_connection(session, server.url + "/b")
    assert isinstance(first, HTTPConnection)
    assert again is first  # reused from the pool: handed over when sending, not only connecting
    assert len(server.requests) == 2


def test_a_tls_connection_is_handed_to_the_watch(tmp_path) -> None:
    ca, server = private_ca(tmp_path)
    with Simulator(Inventory(size=1), tls_cert_file=str(server), tls_key_file=str(server)) as sim:
        conn = watched_connection(BoundedSession(ca_file=str(ca)), sim.api_url + "/_sim/state")
    assert isinstance(conn, HTTPSConnection)


def test_a_connection_to_a_proxy_is_handed_to_the_watch() -> None:
    with keep_alive_server() as proxy:
        conn = watched_connection(
            BoundedSession(), "http://api.example.test/p", proxies={"http": proxy.url}
        )
    assert isinstance(conn, HTTPConnection)
    assert [request.target for request in proxy.requests] == ["http://api.example.test/p"]


def test_the_watch_lets_go_of_the_connection_when_its_block_ends() -> None:
    with keep_alive_server() as server:
        session = BoundedSession()
        with watching(30) as watch:
            session.get(server.url, timeout=5)
        assert watch.conn is None  # pooled now: the watchdog must never cut it
        session.get(server.url, timeout=5)  # outside any watch: nothing to hand over to
        assert watch.conn is None and not watch.cut


def test_send_refuses_a_session_without_the_bound() -> None:
    with keep_alive_server() as server:
        with pytest.raises(TypeError, match=r"go through a BoundedSession .* not a Session,"):
            send(
                requests.Session(),  # type: ignore[arg-type]
                "GET",
                server.url,
                endpoint="state",
                what="state",
                on_response=lambda *_: None,
                deadline=Deadline(5),
                retry=RetryPolicy(attempts=1),
            )
        assert server.requests == []  # refused before anything was sent


def test_a_bounded_session_sends_through_no_other_adapter() -> None:
    with keep_alive_server() as server:
        session = BoundedSession()
        session.mount("http://", HTTPAdapter())
        with pytest.raises(TypeError, match="only through a BoundedAdapter, not a HTTPAdapter"):
            session.get(server.url, timeout=5)
        assert server.requests == []
