"""What the web server enforces: TLS settings and basic auth with bcrypt.

The ``WebConfig`` that :mod:`exporter.webconfig` reads from the ``--web.config.file``, and
``BasicAuth``, which checks Authorization headers against its users. No YAML here: the web
server needs none of the file's parsing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import re
import ssl
import threading
from collections import OrderedDict, deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import bcrypt

BCRYPT_RE = re.compile(
    rb"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{21}[.Oeu][./A-Za-z0-9]{31}", re.ASCII
)
"""A bcrypt hash: $2a$/$2b$/$2y$, cost 04-31 (group 1), 22 characters of salt (the last holds
2 bits) and 31 of hash."""
_BCRYPT_MAX_PASSWORD = 72  # bcrypt reads no further; htpasswd and Go truncate silently too


@dataclass(frozen=True, repr=False, eq=False)
class WebConfig:
    """What the web config file asks for: TLS (or None for plain HTTP) and basic auth users."""

    ssl_context: ssl.SSLContext | None  # server side, ready for wrap_socket
    users: Mapping[str, bytes]  # user name -> bcrypt hash; empty means no basic auth
    warnings: tuple[str, ...] = ()  # for the log: accepted, but probably not what was meant

    def __repr__(self) -> str:
        if self.ssl_context is None:
            tls = "off"
        else:
            version = (
                "TLS13" if self.ssl_context.minimum_version is ssl.TLSVersion.TLSv1_3 else "TLS12"
            )
            client = {ssl.CERT_NONE: "no", ssl.CERT_OPTIONAL: "optional"}.get(
                self.ssl_context.verify_mode, "required"
            )
            tls = f"{version}+ client certificates {client}"
        return f"WebConfig(tls={tls!r}, basic_auth_users={len(self.users)})"


class TooManyLogins(Exception):
    """A password check was refused unrun: the client already has one running or waiting, or
    too many clients are waiting. Answer 429: the client may try again shortly."""


class BasicAuth:
    """Checks Authorization headers against the users; constant-time, with a small cache.

    bcrypt is slow on purpose and Prometheus sends the same credentials every scrape, so
    successful checks are remembered (a keyed SHA-256 of user and password, never the
    password) for the last ``CACHE_SIZE`` distinct credentials. An unknown user still costs
    one bcrypt run, so timing does not tell which users exist. bcrypt runs one at a time, as in
    exporter-toolkit, so a flood of wrong passwords keeps to one CPU core; :class:`_FairQueue`
    decides whose turn it is, so such a flood cannot starve another client's right password.
    """

    CACHE_SIZE = 100

    def __init__(self, users: Mapping[str, bytes]) -> None:
        if not users:
            raise ValueError("BasicAuth needs at least one user; pass no BasicAuth to allow all")
        costs = []
        for name, hashed in users.items():
            match = BCRYPT_RE.fullmatch(hashed)
            if match is None:
                raise ValueError(f"the hash of user {name!r} is not a bcrypt hash")
            costs.append(int(match[1]))
        self._users = [(name.encode(), hashed) for name, hashed in users.items()]
        # For unknown users: as slow to check as the slowest real hash, but free to make (a
        # random salt and a hash of zeros that no password produces), so start-up costs nothing.
        salt = bcrypt.gensalt(rounds=max(costs))  # b"$2b$NN$" and 22 random characters
        self._dummy = salt + b"." * 31
        self._key = os.urandom(32)
        self._cache: OrderedDict[bytes, None] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._queue = _FairQueue()

    def check(self, header: str | None, client: str = "") -> bool:
        """True when ``header`` (the Authorization value) names a user and their password.

        ``client`` is the peer's address. Raises TooManyLogins instead of queueing a second
        uncached check for the same client (see :class:`_FairQueue`).
        """
        credentials = _basic_credentials(header)
        if credentials is None:
            return False
        user, _, password = credentials.partition(b":")
        digest = hmac.new(self._key, credentials, hashlib.sha256).digest()
        if self._cached(digest):
            return True
        hashed = self._hash_of(user)
        with self._queue.turn(_client_key(client)):
            matches = bcrypt.checkpw(password[:_BCRYPT_MAX_PASSWORD], hashed or self._dummy)
        if not matches or hashed is None:
            return False
        self._remember(digest)
        return True

    def _hash_of(self, user: bytes) -> bytes | None:
        """The user's hash; compares every name, so the time does not depend on a match."""
        found = None
        for name, hashed in self._users:
            if hmac.compare_digest(name, user):
                found = hashed
        return found

    def _cached(self, digest: bytes) -> bool:
        with self._cache_lock:
            hit = None
            for known in self._cache:
                if hmac.compare_digest(known, digest):
                    hit = known
            if hit is None:
                return False
            self._cache.move_to_end(hit)
            return True

    def _remember(self, digest: bytes) -> None:
        with self._cache_lock:
            self._cache[digest] = None
            self._cache.move_to_end(digest)
            while len(self._cache) > self.CACHE_SIZE:
                self._cache.popitem(last=False)


class _FairQueue:
    """One bcrypt run at a time, in arrival order, with at most one run running or waiting per
    client; a client asking for another gets TooManyLogins at once, as does anyone when
    ``MAX_WAITING`` clients wait.

    So however many wrong passwords one client sends at once, another client's check waits
    for at most one of them; a flood from many addresses delays it by at most ``MAX_WAITING``
    runs. The finishing run hands its turn straight to the next in line, so a newcomer cannot
    jump the queue.
    """

    MAX_WAITING = 32

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: set[str] = set()  # running or waiting
        self._waiting: deque[threading.Event] = deque()
        self._running = False

    @contextmanager
    def turn(self, client: str) -> Iterator[None]:
        """Wait for ``client``'s turn and hold it for the body of the ``with``."""
        with self._lock:
            if client in self._clients or len(self._waiting) >= self.MAX_WAITING:
                raise TooManyLogins(client)
            self._clients.add(client)
            turn = None
            if self._running:
                turn = threading.Event()
                self._waiting.append(turn)
            self._running = True
        try:
            if turn is not None:
                turn.wait()  # set by the run before, which always ends
            yield
        finally:
            with self._lock:
                self._clients.discard(client)
                if self._waiting:
                    self._waiting.popleft().set()
                else:
                    self._running = False


def _client_key(address: str) -> str:
    """Who a client is for :class:`_FairQueue`: its IPv4 address (also when it comes mapped
    into IPv6 by a dual-stack socket) or its IPv6 /64, which one host usually holds whole."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def _basic_credentials(header: str | None) -> bytes | None:
    """``user:password`` (UTF-8 bytes) from a Basic Authorization header, or None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        credentials = base64.b64decode(token.strip(), validate=True)
        credentials.decode("utf-8")
    except ValueError:  # bad base64, non-ASCII header text or non-UTF-8 credentials
        return None
    return credentials if b":" in credentials else None
