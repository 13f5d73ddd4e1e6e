"""The HTTP session the exporter builds: one kind, whose every request can be cut in time.

A socket timeout restarts with every byte, so a server that trickles its answer would outlast
it. Within ``watching(seconds)`` the requests of this thread have a wall-clock bound: a
watchdog thread shuts their socket down when it has passed, which wakes the thread blocked
reading it (headers or body) at once; the cut connection is closed, never reused.

A connection hands itself to the watch of its request through urllib3's public seams: the
pools' ``ConnectionCls``, and the ``connect()`` and ``request()`` of urllib3's connection
interface, which urllib3 2 calls for every request (pinned to 2.x in pyproject.toml;
tests/test_session.py fails if a request ever reaches a socket without them).
``BoundedSession`` mounts the adapter of those pools and sends through no other, and
``http.send`` takes no other session: an unbounded session is not made by mistake.
"""

from __future__ import annotations

import contextlib
import heapq
import http.client
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import requests
from requests.adapters import BaseAdapter, HTTPAdapter
from urllib3 import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.connection import HTTPConnection, HTTPSConnection

from exporter import __version__

RECHECK = 0.05
"""Seconds after which the watchdog looks again at a request it could not cut yet (its
connection had no socket: still connecting, which the connect timeout bounds)."""


class Watch:
    """One bounded stretch of requests: when it ends, the connection in use, whether it was cut."""

    __slots__ = ("conn", "cut", "done", "end")

    def __init__(self, end: float) -> None:
        self.end = end
        self.conn: HTTPConnection | None = None
        self.cut = False
        self.done = False


class _Watchdog:
    """A daemon thread that shuts down the socket of every watch still running at its end; one
    for the process, started with the first request."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Watch]] = []
        self._order = itertools.count()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float) -> Watch:
        watch = Watch(time.monotonic() + seconds)
        with self._changed:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
                self._thread.start()
            heapq.heappush(self._heap, (watch.end, next(self._order), watch))
            if self._heap[0][2] is watch:  # else the thread wakes up before this one ends anyway
                self._changed.notify()
        return watch

    def disarm(self, watch: Watch) -> None:
        with self._changed:  # never cut a connection after its request ended: it is pooled
            watch.done = True
            watch.conn = None

    def _run(self) -> None:
        while True:
            with self._changed:
                if not self._heap:
                    self._changed.wait()
                    continue
                end, _, watch = self._heap[0]
                wait = end - time.monotonic()
                if wait > 0:
                    self._changed.wait(wait)
                    continue
                heapq.heappop(self._heap)
                if not watch.done and not self._cut(watch):
                    heapq.heappush(self._heap, (end + RECHECK, next(self._order), watch))

    @staticmethod
    def _cut(watch: Watch) -> bool:
        watch.cut = True
        sock = getattr(watch.conn, "sock", None)
        if sock is None:
            return False
        with contextlib.suppress(OSError):  # already closed: nothing left to cut
            sock.shutdown(socket.SHUT_RDWR)
        return True


_WATCHDOG = _Watchdog()
_WATCH: ContextVar[Watch | None] = ContextVar("watch", default=None)
"""The watch of the requests the current thread makes, set by ``watching``."""


@contextlib.contextmanager
def watching(seconds: float) -> Iterator[Watch]:
    """A wall-clock bound of ``seconds`` for the requests this thread makes in the block, through
    a BoundedSession; ``cut`` of the watch tells whether the bound cut one."""
    watch = _WATCHDOG.arm(seconds)
    token = _WATCH.set(watch)
    try:
        yield watch
    finally:
        _WATCH.reset(token)
        _WATCHDOG.disarm(watch)


class NegativeChunkSize(http.client.HTTPException):
    """A chunk of a chunked answer announced a negative size."""


class _StrictResponse(http.client.HTTPResponse):
    """http.client's response, refusing a negative chunk size: urllib3 parses a chunk size
    with ``int(line, 16)``, which reads ``-1`` as -1, and reading -1 bytes reads to the end of
    the stream at once, past the size limit of ``http._read_body``."""

    def _safe_read(self, amt: int) -> bytes:
        if amt < 0:
            raise NegativeChunkSize(amt)
        return super()._safe_read(amt)  # type: ignore[misc, no-any-return]


class _Connection(HTTPConnection):
    """A connection that hands itself to the watch of the request it serves, before it opens
    its socket (a new connection) and before it sends (every request)."""

    response_class = _StrictResponse

    def connect(self) -> None:
        self._watched()
        super().connect()

    def request(self, *args: Any, **kwargs: Any) -> None:
        self._watched()
        super().request(*args, **kwargs)

    def _watched(self) -> None:
        watch = _WATCH.get()
        if watch is not None:
            watch.conn = self


class _HTTPSConnection(_Connection, HTTPSConnection):
    pass


class _Pool(HTTPConnectionPool):
    ConnectionCls = _Connection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS = {"http": _Pool, "https": _HTTPSPool}


class BoundedAdapter(HTTPAdapter):
    """An HTTPAdapter whose connections, direct or through a proxy, the watchdog can cut."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = _POOLS
        return manager


class BoundedSession(requests.Session):
    """A requests session that sends only through a BoundedAdapter, with our User-Agent and a
    connection pool as large as the concurrency; one per mandant, so connections are reused
    from refresh to refresh.

    Servers are verified against ``ca_file`` (the mandant's, or REQUESTS_CA_BUNDLE, resolved
    and checked by the config), else certifi's bundle. The environment is not read on every
    request (that costs requests a scan of os.environ per page); netrc is never consulted.
    """

    def __init__(self, concurrency: int = 1, ca_file: str | None = None) -> None:
        super().__init__()
        self.trust_env = False
        self.verify = ca_file or True
        self.headers["User-Agent"] = f"beenergised-exporter/{__version__}"
        adapter = BoundedAdapter(pool_connections=2, pool_maxsize=max(concurrency, 2))
        self.mount("https://", adapter)
        self.mount("http://", adapter)

    def get_adapter(self, url: str) -> BaseAdapter:
        """The adapter for ``url``; TypeError for one without the bound (mounted later)."""
        adapter = super().get_adapter(url)
        if not isinstance(adapter, BoundedAdapter):
            raise TypeError(
                f"a BoundedSession sends only through a BoundedAdapter, not a "
                f"{type(adapter).__name__}: a request through it would have no wall-clock bound"
            )
        return adapter
