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
from dataclasses import dataclass, field
from typing import TypeVar

import bcrypt

BCRYPT_RE = re.compile(
    rb"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{21}[.Oeu][./A-Za-z0-9]{31}", re.ASCII
)
"""A bcrypt hash: $2a$/$2b$/$2y$, cost 04-31 (group 1), 22 characters of salt (the last holds
2 bits) and 31 of hash."""
_BCRYPT_MAX_PASSWORD = 72  # bcrypt reads no further; htpasswd and Go truncate silently too
_Key = TypeVar("_Key", str, bytes)


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
    """A password check was refused unrun (answer 429: the client may try again shortly).

    ``suspect``: the client sent a wrong password lately, so others went first. The message
    says why, for the debug log; it names the client address, never a credential.
    """

    def __init__(self, message: str, *, suspect: bool) -> None:
        super().__init__(message)
        self.suspect = suspect


class BasicAuth:
    """Checks Authorization headers against the users; constant-time, with a small cache.

    bcrypt is slow on purpose and Prometheus sends the same credentials every scrape, so
    successful checks are remembered (a keyed SHA-256 of user and password, never the
    password) for the last ``CACHE_SIZE`` distinct credentials. An unknown user still costs
    one bcrypt run, so timing does not tell which users exist. bcrypt runs one at a time, as in
    exporter-toolkit, so a flood of wrong passwords keeps to one CPU core; :class:`_FairQueue`
    decides whose turn it is, so such a flood cannot starve another client's right password,
    not even one that is not cached yet.
    """

    CACHE_SIZE = 100

    def __init__(self, users: Mapping[str, bytes], *, like: BasicAuth | None = None) -> None:
        """``like``: the BasicAuth these users replace (a reloaded web config), whose queue
        this one shares, so bcrypt still runs one at a time and suspects stay suspects."""
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
        self._queue: _FairQueue = like._queue if like is not None else _FairQueue()

    def check(self, header: str | None, client: str = "") -> bool:
        """True when ``header`` (the Authorization value) names a user and their password.

        ``client`` is the peer's address. Raises TooManyLogins when the check cannot have a
        turn soon (see :class:`_FairQueue`).
        """
        credentials = _basic_credentials(header)
        if credentials is None:
            return False
        user, _, password = credentials.partition(b":")
        digest = hmac.new(self._key, credentials, hashlib.sha256).digest()
        if self._cached(digest):
            return True
        hashed = self._hash_of(user)
        key = client_key(client)
        with self._queue.turn(key):
            matches = bcrypt.checkpw(password[:_BCRYPT_MAX_PASSWORD], hashed or self._dummy)
            right = matches and hashed is not None
            self._queue.record(key, right)
        if not right:
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
            _put_last(self._cache, digest, self.CACHE_SIZE)


@dataclass(eq=False)
class _Waiter:
    """One client waiting for its bcrypt turn; ``turn`` is set when it gets it or is pushed
    out (``displaced``)."""

    client: str
    suspect: bool
    turn: threading.Event = field(default_factory=threading.Event)
    displaced: bool = False


class _FairQueue:
    """One bcrypt run at a time; whose turn it is, by client (see :func:`client_key`).

    - At most one run running or waiting per client: a client asking for another gets
      TooManyLogins at once, so one address cannot fill the queue.
    - Clients that sent a wrong password lately (the last ``SUSPECTS`` such clients are
      remembered) are *suspects*. The others go first, in arrival order, then the suspects,
      in arrival order. A client whose password was right is never a suspect (the last
      ``TRUSTED`` such clients are remembered).
    - At most ``MAX_WAITING`` wait. When the queue is full, a newcomer that is no suspect
      takes the place of the suspect that came last (which gets TooManyLogins); otherwise the
      newcomer gets it.
    - Nobody waits longer than ``MAX_WAIT`` seconds: a scraper gives up after its scrape
      timeout (10 s by default) anyway, and a run for a client that has gone is wasted.

    So during a flood of wrong passwords from many addresses, a right login from an address
    without wrong passwords waits for the run in progress and the non-suspects before it.
    """

    MAX_WAITING = 32
    MAX_WAIT = 5.0
    SUSPECTS = 4096
    TRUSTED = 256

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: set[str] = set()  # running or waiting
        self._first: deque[_Waiter] = deque()  # waiting, no suspects
        self._last: deque[_Waiter] = deque()  # waiting, suspects
        self._running = False
        self._suspects: OrderedDict[str, None] = OrderedDict()
        self._trusted: OrderedDict[str, None] = OrderedDict()

    @contextmanager
    def turn(self, client: str) -> Iterator[None]:
        """Wait for ``client``'s turn and hold it for the body of the ``with``."""
        waiter = self._join(client)
        if waiter is not None:
            self._wait(waiter)
        try:
            yield
        finally:
            with self._lock:
                self._clients.discard(client)
                if self._first or self._last:
                    (self._first or self._last).popleft().turn.set()
                else:
                    self._running = False

    def record(self, client: str, right: bool) -> None:
        """Remember how ``client``'s password check went; call it before the turn ends."""
        with self._lock:
            if right:
                self._suspects.pop(client, None)
                _put_last(self._trusted, client, self.TRUSTED)
            elif client not in self._trusted:
                _put_last(self._suspects, client, self.SUSPECTS)

    def _join(self, client: str) -> _Waiter | None:
        """Take the turn (None) or a place in the queue, or raise TooManyLogins."""
        with self._lock:
            suspect = client in self._suspects
            if client in self._clients:
                raise TooManyLogins(
                    f"{client} has a password check running or waiting", suspect=suspect
                )
            if not self._running:
                self._running = True
                self._clients.add(client)
                return None
            if len(self._first) + len(self._last) >= self.MAX_WAITING:
                if suspect or not self._last:
                    raise TooManyLogins(
                        f"{self.MAX_WAITING} password checks are waiting", suspect=suspect
                    )
                pushed = self._last.pop()
                pushed.displaced = True
                self._clients.discard(pushed.client)
                pushed.turn.set()
            waiter = _Waiter(client, suspect)
            (self._last if suspect else self._first).append(waiter)
            self._clients.add(client)
            return waiter

    def _wait(self, waiter: _Waiter) -> None:
        """Return when ``waiter`` has the turn; raise TooManyLogins when it was pushed out or
        has waited ``MAX_WAIT`` seconds."""
        if not waiter.turn.wait(self.MAX_WAIT):
            with self._lock:
                if not waiter.turn.is_set():  # not given the turn while taking the lock
                    (self._last if waiter.suspect else self._first).remove(waiter)
                    self._clients.discard(waiter.client)
                    raise TooManyLogins(
                        f"{waiter.client} waited {self.MAX_WAIT:g} s for a password check",
                        suspect=waiter.suspect,
                    )
        if waiter.displaced:
            raise TooManyLogins(
                f"{waiter.client} sent a wrong password lately; made way for a client that did not",
                suspect=True,
            )


def _put_last(recent: OrderedDict[_Key, None], key: _Key, size: int) -> None:
    """Put ``key`` last in ``recent``, forgetting the first beyond ``size``."""
    recent[key] = None
    recent.move_to_end(key)
    while len(recent) > size:
        recent.popitem(last=False)


def client_key(address: str) -> str:
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
