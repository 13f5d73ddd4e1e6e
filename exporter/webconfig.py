"""The ``--web.config.file``: TLS and basic auth in the format of Prometheus' exporter-toolkit.

A subset of that format, so a file written for node_exporter works here when it uses only
these keys (anything else is refused, never ignored)::

    tls_server_config:
      cert_file: server.crt          # relative paths start at the web config file's directory
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # or NoClientCert, VerifyClientCertIfGiven
      client_ca_file: ca.crt
      min_version: TLS13             # or TLS12, the default
    basic_auth_users:
      alice: $2y$10$...              # bcrypt hashes, e.g. from htpasswd -nBC 10 ""

The file is read at start-up and on SIGHUP; every problem raises
:class:`~exporter.errors.ConfigError` with one line naming the file and the key. Hashes never
appear in messages or reprs.

bcrypt costs are bounded: each step doubles the time of a check (on a 2-core test machine one
check took 0.06 s at cost 10, 0.24 s at 12, 0.95 s at 14), and a cost of 31 would take a day.
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
from pathlib import Path
from types import MappingProxyType

import bcrypt
import yaml

from exporter.errors import ConfigError
from exporter.yamlfile import load_yaml, yaml_problem

_TOP_KEYS = ("tls_server_config", "basic_auth_users")
_TLS_KEYS = ("cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version")
# exporter-toolkit keys we do not implement: named as such, so the message is not "unknown".
_TOOLKIT_ONLY_KEYS = {
    "": ("http_server_config", "rate_limit"),
    "tls_server_config": (
        "cert",
        "key",
        "client_ca",
        "client_allowed_sans",
        "max_version",
        "cipher_suites",
        "prefer_server_cipher_suites",
        "curve_preferences",
    ),
}
_CLIENT_AUTH_TYPES = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
# Python's ssl module cannot ask for a client certificate without verifying it.
_UNVERIFIED_CLIENT_AUTH_TYPES = ("RequestClientCert", "RequireAnyClientCert")
_TLS_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
_HTPASSWD_HINT = "htpasswd -nBC 10 \"\" | tr -d ':\\n'"
# $2a$/$2b$/$2y$, cost 04-31, 22 characters of salt (the last holds 2 bits) and 31 of hash.
_BCRYPT_RE = re.compile(
    rb"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{21}[.Oeu][./A-Za-z0-9]{31}", re.ASCII
)
_BCRYPT_MAX_PASSWORD = 72  # bcrypt reads no further; htpasswd and Go truncate silently too
MAX_BCRYPT_COST = 14
"""The highest bcrypt cost accepted: about 1 s per check; a higher one is refused."""
WARN_BCRYPT_COST = 12
"""bcrypt costs above this are accepted with a warning (0.5 s and more per check)."""


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


def load_web_config(path: str) -> WebConfig:
    """Read and check the web config file at ``path``; raises ConfigError for every problem."""
    try:
        with open(path, encoding="utf-8") as stream:
            document = load_yaml(stream)
    except OSError as e:
        raise ConfigError(
            f"{path}: cannot read the web config file: {e.strerror or type(e).__name__}"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the web config file is not UTF-8 text") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {yaml_problem(e)}") from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError(
            f"{path}: expected a mapping with tls_server_config and/or basic_auth_users, "
            f"got {type(document).__name__}"
        )
    _reject_unknown_keys(document, "", _TOP_KEYS, path)
    base = Path(path).parent
    tls = document.get("tls_server_config")
    section = document.get("basic_auth_users")
    warnings: list[str] = []
    users = {} if section is None else _users(section, path, warnings)
    if tls is None and not users:
        warnings.append(
            f"{path}: the web config file sets neither tls_server_config nor basic_auth_users, "
            "so the endpoints are served without TLS and without basic auth"
        )
    return WebConfig(
        ssl_context=None if tls is None else _ssl_context(tls, path, base),
        users=MappingProxyType(users),
        warnings=tuple(warnings),
    )


def _reject_unknown_keys(
    mapping: dict[object, object], section: str, known: tuple[str, ...], path: str
) -> None:
    prefix = f"{section}." if section else ""
    for key in mapping:
        if key in known:
            continue
        if key in _TOOLKIT_ONLY_KEYS.get(section, ()):
            raise ConfigError(
                f"{path}: {prefix}{key}: not supported by this exporter; remove it "
                f"(supported: {', '.join(known)})"
            )
        raise ConfigError(f"{path}: {prefix}{key}: unknown key; known keys: {', '.join(known)}")


def _ssl_context(section: object, path: str, base: Path) -> ssl.SSLContext:
    where = f"{path}: tls_server_config"
    if not isinstance(section, dict):
        raise ConfigError(
            f"{where}: expected a mapping with cert_file and key_file, got {type(section).__name__}"
        )
    _reject_unknown_keys(section, "tls_server_config", _TLS_KEYS, path)
    cert = _pem_file(section, "cert_file", "the server certificate", where, base)
    key = _pem_file(section, "key_file", "the server's private key", where, base)
    client_auth = _client_auth_type(section.get("client_auth_type", "NoClientCert"), where)
    min_version = _min_version(section.get("min_version", "TLS12"), where)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = min_version
    _load_cert_chain(context, cert, key, where)
    if client_auth == "NoClientCert":
        if "client_ca_file" in section:
            raise ConfigError(
                f"{where}.client_ca_file: set, but client_auth_type is NoClientCert; set "
                "client_auth_type: RequireAndVerifyClientCert to check client certificates, "
                "or remove client_ca_file"
            )
    else:
        if "client_ca_file" not in section:
            raise ConfigError(
                f"{where}.client_ca_file: missing: the CA certificate that signs client "
                f"certificates, needed for client_auth_type {client_auth}"
            )
        ca = _pem_file(section, "client_ca_file", "the client CA certificate", where, base)
        _load_client_ca(context, ca, where)
        context.verify_mode = _CLIENT_AUTH_TYPES[client_auth]
    return context


def _pem_file(section: dict[str, object], key: str, what: str, where: str, base: Path) -> Path:
    """The resolved path of a PEM file the section names, checked to be readable."""
    value = section.get(key)
    if value is None:
        raise ConfigError(f"{where}.{key}: missing: the path of {what} (PEM)")
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}.{key}: expected the path of {what} (PEM), got {value!r}")
    resolved = base / value.strip()
    try:
        text = resolved.read_bytes()
    except OSError as e:
        raise ConfigError(
            f"{where}.{key}: cannot read {str(resolved)!r}: {e.strerror or type(e).__name__}; "
            f"give the path of {what} (relative paths start at the web config file's directory)"
        ) from None
    marker = b"PRIVATE KEY-----" if key == "key_file" else b"-----BEGIN CERTIFICATE-----"
    if marker not in text:
        raise ConfigError(
            f"{where}.{key}: {str(resolved)!r} holds no PEM "
            f"{'private key' if key == 'key_file' else 'certificate'}; give the path of {what}"
        )
    if key == "key_file" and (
        b"ENCRYPTED PRIVATE KEY" in text or b"Proc-Type: 4,ENCRYPTED" in text
    ):
        raise ConfigError(
            f"{where}.{key}: {str(resolved)!r} is encrypted and the exporter cannot ask for its "
            f"passphrase; decrypt it, e.g. openssl pkey -in {resolved} -out server.key"
        )
    return resolved


def _client_auth_type(value: object, where: str) -> str:
    choices = ", ".join(_CLIENT_AUTH_TYPES)
    if value in _UNVERIFIED_CLIENT_AUTH_TYPES:
        raise ConfigError(
            f"{where}.client_auth_type: {value} (a certificate without verification) is not "
            "supported; use RequireAndVerifyClientCert with client_ca_file"
        )
    if not isinstance(value, str) or value not in _CLIENT_AUTH_TYPES:
        raise ConfigError(f"{where}.client_auth_type: must be one of {choices}, got {value!r}")
    return value


def _min_version(value: object, where: str) -> ssl.TLSVersion:
    if not isinstance(value, str) or value not in _TLS_VERSIONS:
        raise ConfigError(
            f"{where}.min_version: must be TLS12 (the default) or TLS13, got {value!r}"
        )
    return _TLS_VERSIONS[value]


def _refuse_passphrase() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key.
    raise ssl.SSLError("the key is encrypted")


def _load_cert_chain(context: ssl.SSLContext, cert: Path, key: Path, where: str) -> None:
    try:
        context.load_cert_chain(cert, key, password=_refuse_passphrase)
    except ssl.SSLError as e:
        if e.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(
                f"{where}.key_file: the key in {str(key)!r} does not belong to the certificate "
                f"in {str(cert)!r}; give the key that was made with that certificate"
            ) from None
        raise ConfigError(
            f"{where}.cert_file: cannot use {str(cert)!r} with the key {str(key)!r}: "
            f"{_ssl_problem(e)}; give a PEM certificate and its unencrypted PEM key"
        ) from None


def _ssl_problem(error: ssl.SSLError) -> str:
    """OpenSSL's reason in words ("ee key too small"), without its source file and line."""
    if error.reason:
        return error.reason.lower().replace("_", " ")
    return "OpenSSL cannot read it"


def _load_client_ca(context: ssl.SSLContext, ca: Path, where: str) -> None:
    try:
        context.load_verify_locations(cafile=ca)
    except ssl.SSLError as e:
        raise ConfigError(
            f"{where}.client_ca_file: cannot load {str(ca)!r}: {_ssl_problem(e)}; give the PEM "
            "certificate of the CA that signs client certificates"
        ) from None


def _user_key(name: str) -> str:
    """``basic_auth_users.alice``, or with the name quoted when it has odd characters."""
    if name.isprintable() and not any(c.isspace() or c in ".[]'\"" for c in name):
        return f"basic_auth_users.{name}"
    return f"basic_auth_users[{name!r}]"


def _users(section: object, path: str, warnings: list[str]) -> dict[str, bytes]:
    # Never format a value here: it should be a hash, but may be a password put there by mistake.
    if not isinstance(section, dict):
        raise ConfigError(
            f"{path}: basic_auth_users: expected a mapping of user names to bcrypt hashes, "
            f"got {type(section).__name__}"
        )
    users = {}
    for name, hashed in section.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(
                f"{path}: basic_auth_users: user name {name!r} is not a non-empty string; "
                "put it in quotes"
            )
        if ":" in name:
            raise ConfigError(
                f"{path}: basic_auth_users: a user name contains ':' (not shown: it may hold a "
                "password), which basic auth cannot send; write each user as name: hash"
            )
        key = _user_key(name)
        if hashed is None:
            raise ConfigError(f"{path}: {key}: missing: the bcrypt hash of the password")
        encoded = hashed.strip().encode() if isinstance(hashed, str) and hashed.isascii() else b""
        match = _BCRYPT_RE.fullmatch(encoded)
        if match is None:
            raise ConfigError(
                f"{path}: {key}: not a bcrypt hash (the value is not shown); store the hash, "
                f"not the password, e.g. from {_HTPASSWD_HINT}"
            )
        cost = int(match[1])
        if cost > MAX_BCRYPT_COST:
            raise ConfigError(
                f"{path}: {key}: bcrypt cost {cost} is above the maximum of {MAX_BCRYPT_COST} "
                f"(each step doubles the time of a check); hash again, e.g. with {_HTPASSWD_HINT}"
            )
        if cost > WARN_BCRYPT_COST:
            warnings.append(
                f"{path}: {key}: bcrypt cost {cost} makes every login that is not cached take "
                f"0.5 s or more of CPU; cost 10 is enough for a random password"
            )
        users[name] = encoded
    return users


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
            match = _BCRYPT_RE.fullmatch(hashed)
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
