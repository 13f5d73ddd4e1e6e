"""Parsers of one setting's raw value, wherever it was given (flag, environment, YAML file).

Each takes a :class:`Given` (the raw value and where the user gave it) and returns the value
or raises :class:`~exporter.errors.ConfigError` naming that place, never a secret.
"""

from __future__ import annotations

import ipaddress
import math
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from exporter.errors import ConfigError
from exporter.model import PEM_FILE_MAX_SIZE, FirmwareTarget, read_regular_file

DEFAULT_PORT = 10140
"""Above every allocation seen in the 10000+ range of the Prometheus wiki page "Default port
allocations" and clear of Zabbix (10050/10051) and Kubernetes (10248-10259)."""
_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


@dataclass(frozen=True, slots=True)
class Given:
    """A raw value and where the user gave it, as error messages name it; ``base`` is where a
    relative path in it starts (the config file's directory, else the working directory)."""

    value: object
    where: str
    base: Path = field(default=Path())

    def fail(self, problem: str) -> ConfigError:
        return ConfigError(f"{self.where}: {problem}")


_DURATION_UNITS = (("y", 365 * 86400), ("w", 7 * 86400), ("d", 86400), ("h", 3600))
_DURATION_RE = re.compile(
    r"(?:(?P<y>\d+)y)?(?:(?P<w>\d+)w)?(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?"
    r"(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s)?(?:(?P<ms>\d+)ms)?",
    re.ASCII,
)
_SECONDS_RE = re.compile(r"\d+(?:\.\d*)?|\.\d+", re.ASCII)


def parse_duration(text: str) -> float:
    """Seconds in ``text``: a plain number ("300", "1.5") or a Prometheus duration ("1h30m").

    Prometheus durations are whole numbers with units ms, s, m, h, d, w, y (d=24h, w=7d,
    y=365d), largest unit first. Raises ValueError for anything else, including "".
    """
    text = text.strip()
    if _SECONDS_RE.fullmatch(text):
        return float(text)
    match = _DURATION_RE.fullmatch(text)
    if not text or match is None:
        raise ValueError(f"not a duration: {text!r}")
    seconds = 0.0
    for unit, factor in (*_DURATION_UNITS, ("m", 60), ("s", 1)):
        if match[unit]:
            seconds += int(match[unit]) * factor
    if match["ms"]:
        seconds += int(match["ms"]) / 1000
    return seconds


def text(given: Given) -> str:
    """A string, stripped; a YAML number or boolean is refused rather than guessed."""
    if not isinstance(given.value, str):
        raise given.fail(f"expected a string, got {type(given.value).__name__} (put it in quotes)")
    return given.value.strip()


def duration(given: Given) -> float:
    """Positive seconds: a number, or a string of seconds or a Prometheus duration."""
    value = given.value
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise given.fail(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        try:
            seconds = parse_duration(text(given))
        except ValueError:
            raise given.fail(
                f"not a duration: {value!r}; use seconds (300) or a duration (5m, 1h30m)"
            ) from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise given.fail(f"must be positive, got {value!r}")
    return seconds


def _is_number(digits: str) -> bool:
    return digits.isascii() and digits.isdigit()


def positive_int(given: Given) -> int:
    """A whole number of at least 1."""
    value = given.value
    if isinstance(value, bool):
        raise given.fail(f"not an integer: {value!r}")
    if isinstance(value, int):
        number = value
    else:
        digits = value.strip() if isinstance(value, str) else ""
        if not _is_number(digits):
            raise given.fail(f"not an integer: {value!r}")
        number = int(digits)
    if number < 1:
        raise given.fail(f"must be at least 1, got {value!r}")
    return number


_SIZE_RE = re.compile(r"(\d+)\s*(B|KB|MB|GB|KiB|MiB|GiB)?", re.ASCII)
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
}


def size(given: Given) -> int:
    """A size in bytes: a whole number, optionally with a unit (KB, MB, GB, KiB, MiB, GiB)."""
    value = given.value
    written = value.strip() if isinstance(value, str) else None
    if isinstance(value, int) and not isinstance(value, bool):
        written = str(value)
    match = _SIZE_RE.fullmatch(written) if written is not None else None
    if match is None:
        raise given.fail(f"not a size: {value!r}; use bytes (1048576) or a unit (512KiB, 8MiB)")
    number = int(match[1]) * _SIZE_UNITS[match[2]]
    if number < 1:
        raise given.fail(f"must be at least 1 byte, got {value!r}")
    return number


def boolean(given: Given) -> bool:
    """true/false, 1/0, yes/no, or a YAML boolean."""
    value = given.value
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise given.fail(f"not a boolean: {value!r}; use true or false")


def one_of(choices: tuple[str, ...]) -> Callable[[Given], str]:
    """A parser of one of ``choices``, case-insensitive."""

    def choice(given: Given) -> str:
        word = given.value.strip().lower() if isinstance(given.value, str) else None
        if word is None or word not in choices:
            raise given.fail(f"must be one of {', '.join(choices)}, got {given.value!r}")
        return word

    return choice


def url(given: Given) -> str:
    """An http(s) URL with a host and no credentials, query or fragment."""
    written = text(given)
    try:
        parts = urlsplit(written)
        _ = parts.port  # raises ValueError for a port that is not a number or out of range
    except ValueError:
        parts = None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise given.fail(f"not a URL: {given.value!r}; expected https://host[/path]")
    if parts.username is not None or parts.password is not None:
        raise given.fail("must not contain a user name or password")
    if parts.query or parts.fragment or any(c.isspace() for c in written):
        raise given.fail(f"not a URL: {given.value!r}; expected https://host[/path]")
    return written


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine (plain http to it is no risk)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen_address(given: Given) -> tuple[str, int]:
    """(host, port) of :PORT, HOST:PORT or [IPv6]:PORT; host "" means every interface."""
    written = text(given)
    host, colon, port_text = written.rpartition(":")
    if not colon or written.endswith("]"):
        raise given.fail(f"not an address: {given.value!r}; expected :PORT or HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise given.fail(f"not an IPv6 address: {host!r}") from None
    elif ":" in host:
        raise given.fail(f"put the IPv6 address in brackets, e.g. [::1]:{DEFAULT_PORT}")
    elif any(c.isspace() or c in "[]/" for c in host):
        raise given.fail(f"not a host name: {host!r}")
    # Port 0 lets the system choose a free port, as tests do; the CLI logs the one it got.
    if not _is_number(port_text) or int(port_text) > 65535:
        raise given.fail(f"not a port: {port_text!r}; expected 0-65535")
    return host, int(port_text)


def listen_addresses(given: Given) -> tuple[tuple[str, int], ...]:
    """The addresses of a flag given once or more, or of a text that lists them with commas."""
    written = given.value if isinstance(given.value, list) else text(given).split(",")
    addresses: list[tuple[str, int]] = []
    for item in written:
        address = listen_address(Given(item, given.where))
        if address in addresses and address[1] != 0:  # port 0: a free port each time
            raise given.fail(f"{item.strip()!r} given twice; give each address once")
        addresses.append(address)
    return tuple(addresses)


def telemetry_path(given: Given) -> str:
    """A URL path starting with '/', without query or fragment."""
    written = text(given)
    if not written.startswith("/") or any(c.isspace() or c in "?#" for c in written):
        raise given.fail(f"must be a path starting with '/', got {given.value!r}")
    return written


def secret_path(given: Given) -> Path:
    """The path of the file holding the client secret, relative to ``given.base``."""
    written = text(given)
    if not written:
        raise given.fail("missing: the path of the file holding the client secret")
    return given.base / written


def firmware_target(given: Given) -> FirmwareTarget | None:
    """A firmware target; null (in the file) means none."""
    if given.value is None:
        return None
    if isinstance(given.value, int | float) and not isinstance(given.value, bool):
        raise given.fail(f"expected a string, got {given.value!r}; put the version in quotes")
    try:
        return FirmwareTarget.parse(text(given))
    except ValueError as e:
        raise given.fail(str(e)) from None


def ca_file(given: Given, directory_ok: bool = False) -> str:
    """The path of a readable PEM bundle of CA certificates (relative to ``given.base``),
    checked now so that a wrong path fails at start-up rather than as a TLS error at every
    refresh; ``directory_ok`` also takes a directory of hashed certificates."""
    written = text(given)
    if not written:
        raise given.fail("missing: the path of a PEM file of CA certificates")
    path = given.base / written
    if directory_ok and path.is_dir():
        return str(path)  # a directory of hashed certificates, as OpenSSL's c_rehash makes
    problem = _ca_problem(path)
    if problem:
        raise given.fail(
            f"{problem}; give the PEM file of the CA certificate that signed the server's "
            "certificate (of the private CA or the TLS-inspecting proxy)"
        )
    return str(path)


def _ca_problem(path: Path) -> str | None:
    """Why ``path`` is no usable PEM bundle of CA certificates, or None."""
    try:
        content = read_regular_file(path, PEM_FILE_MAX_SIZE).decode("ascii", errors="replace")
    except OSError as e:
        return f"cannot read {str(path)!r}: {e.strerror or type(e).__name__}"
    except ValueError as e:
        return str(e)
    if "-----BEGIN CERTIFICATE-----" not in content:
        return f"{str(path)!r} holds no PEM certificate"
    try:
        ssl.create_default_context(cafile=str(path))
    except ssl.SSLError as e:
        return f"{str(path)!r} is not a usable PEM certificate bundle ({e.reason or 'OpenSSL'})"
    return None
