"""Settings and one Mandant per tenant, validated once at start-up.

Every setting is taken from the first place that has it: command-line flag, then environment
variable, then the YAML config file (``--config.file``), then the default. Every problem raises
:class:`~exporter.errors.ConfigError` with a one-line message that starts with the setting as
the user gave it (flag, variable or file location). Client secrets are read here and nowhere
else, and live only inside :class:`Secret`, which never shows its value.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import math
import re
import ssl
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, NoReturn
from urllib.parse import urlsplit

import yaml

from exporter.errors import ConfigError
from exporter.model import FirmwareTarget, Secret, clean_secret

LOG = logging.getLogger(__name__)

DEFAULT_TOKEN_URL = "https://beenergised-jwtapis.auth.eu-central-1.amazoncognito.com/token"
# Above every allocation seen in the 10000+ range of the Prometheus wiki page "Default port
# allocations" and clear of Zabbix (10050/10051) and Kubernetes (10248-10259).
DEFAULT_PORT = 10140
TOKEN_AUTH_METHODS = ("basic", "post", "query")

LOG_LEVELS = ("debug", "info", "warn", "error")
LOG_FORMATS = ("logfmt", "json")
DEFAULT_REFRESH_INTERVAL = 300.0
DEFAULT_PAGE_LIMIT = 100
DEFAULT_CONCURRENCY = 4
DEFAULT_TELEMETRY_PATH = "/metrics"
SHORT_REFRESH_INTERVAL = 30.0
DEFAULT_CHANGES_MAX_ENTRIES = 1000
DEFAULT_REFRESH_TIMEOUT = 600.0
"""A refresh may take 10 minutes: 100,000 stations at 300 ms a page take about 75 s at
concurrency 4 and 300 s page by page; a hung request is cut after --api.request-timeout."""
DEFAULT_REQUEST_TIMEOUT = 30.0
DEFAULT_MAX_RESPONSE_SIZE = 8 * 1024 * 1024

_MISSING_API_URL = "the base URL of your mandant, e.g. https://yourmandant.beenergised.cloud"
_MISSING_CLIENT_ID = "the client id of your CPO API token"
_MISSING_CLIENT_SECRET = "the client secret of your CPO API token"
_FILE_GLOBAL_KEYS = (
    "mandants",
    "api_max_response_size",
    "api_request_timeout",
    "changes_max_entries",
    "concurrency",
    "page_limit",
    "refresh_interval",
    "refresh_timeout",
    "station_info",
    "token_auth_method",
)
_FILE_MANDANT_KEYS = (
    "api_url",
    "ca_file",
    "client_id",
    "client_secret",
    "client_secret_file",
    "name",
    "target_firmware",
    "token_auth_method",
    "token_url",
)
_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


@dataclass(frozen=True, slots=True)
class Mandant:
    """One tenant of the CPO API and the credentials of its API token."""

    name: str  # the `mandant` label
    api_url: str  # http(s) URL, no trailing slash
    token_url: str
    client_id: str
    client_secret: Secret
    token_auth_method: str  # one of TOKEN_AUTH_METHODS
    target_firmware: FirmwareTarget | None = None  # the rollout target, if any
    ca_file: str | None = None  # CA bundle (file, or directory from the environment) to trust

    def __post_init__(self) -> None:
        # A plain str here would print itself in every repr of the settings.
        if not isinstance(self.client_secret, Secret):
            raise TypeError("Mandant.client_secret must be a Secret")
        if self.token_auth_method not in TOKEN_AUTH_METHODS:
            raise ValueError(f"Mandant.token_auth_method must be one of {TOKEN_AUTH_METHODS}")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the exporter needs to run, validated."""

    mandants: tuple[Mandant, ...]  # empty only in demo mode
    refresh_interval: float  # seconds, > 0
    page_limit: int  # >= 1
    concurrency: int  # >= 1: pages fetched at once per mandant
    listen_host: str  # "" means all interfaces
    listen_port: int
    telemetry_path: str  # starts with "/"
    web_config_file: str | None  # exporter-toolkit web config; read by exporter.webconfig
    log_level: str  # debug|info|warn|error
    log_format: str  # logfmt|json
    demo: bool
    station_info: bool  # False with --no-station-info
    changes_max_entries: int  # size of the change log ring
    warnings: tuple[str, ...]  # messages the CLI logs at WARN once logging is up
    refresh_timeout: float = DEFAULT_REFRESH_TIMEOUT  # seconds one refresh may take, > 0
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT  # wall-clock seconds per request, > 0
    max_response_size: int = DEFAULT_MAX_RESPONSE_SIZE  # bytes per answer, >= 1


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


def _format_seconds(seconds: float) -> str:
    return f"{seconds:g}s"


def _wrap(text: str, width: int) -> list[str]:
    return textwrap.wrap(
        " ".join(text.split()), max(width, 20), break_long_words=False, break_on_hyphens=False
    )


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps help text without splitting URLs, flags and variable names; keeps paragraphs."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return _wrap(text, width)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = (
            "\n".join(indent + line for line in _wrap(p, width)) for p in text.split("\n\n")
        )
        return "\n\n".join(paragraphs)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that reports bad usage as ConfigError instead of exiting."""

    def error(self, message: str) -> NoReturn:
        # argparse quotes what it could not use, and that may be a secret typed on the command
        # line (--client_secret=VALUE, --demo=VALUE): name flags only, never a value.
        unrecognized = "unrecognized arguments: "
        if message.startswith(unrecognized):
            words = message[len(unrecognized) :].split()
            flags = [word.partition("=")[0] for word in words if word.startswith("--")]
            message = unrecognized + (" ".join(flags) or "values that belong to no flag")
            message += self._suggestion(flags)
        else:
            message = _ARGPARSE_VALUE_RE.sub(r": \1 (the value is not shown)", message)
        raise ConfigError(f"{message.removeprefix('argument ')} (see --help)")

    def _suggestion(self, flags: list[str]) -> str:
        """A hint for a flag written with underscores (--client_id for --client-id)."""
        for flag in flags:
            spelled = flag.replace("_", "-").lower()
            if spelled != flag and spelled in self._option_string_actions:
                return f"; did you mean {spelled}?"
        return ""


_ARGPARSE_VALUE_RE = re.compile(
    r": (ignored explicit argument|invalid \w+ value|invalid choice):? .*?(?= \(choose from |$)"
)
"""The quoted value at the end of the argparse messages that show one."""
_NO_SECRET_FLAG = (
    "the client secret has no flag, a command line is visible in ps; use "
    "--client-secret-file, BEENERGISED_CLIENT_SECRET_FILE or BEENERGISED_CLIENT_SECRET"
)

_EPILOG = f"""\
Each setting is taken from the flag, else the environment variable, else the config file,
else the default. Environment variables that are set but empty count as unset.
Booleans from the environment: true/false, 1/0, yes/no.

The client secret has no flag (a command line is visible in ps): use --client-secret-file,
BEENERGISED_CLIENT_SECRET_FILE or BEENERGISED_CLIENT_SECRET.

Without --config.file the flags and variables describe one mandant, named after the first
label of its host name. Default token endpoint: {DEFAULT_TOKEN_URL}

SIGHUP reloads the config file, the secret files and the web config file; a configuration
with an error is logged and not applied.
"""
_CHECK_EPILOG = """
To try a configuration once, run "beenergised-exporter check" with the same settings: it reads
every mandant once, prints what it found or what is wrong, and exits.
"""


def build_parser(
    prog: str = "beenergised-exporter",
    description: str = "Prometheus exporter for the be.ENERGISED CPO API: "
    "charging station fleet, firmware and changes.",
    log_level: str = "info",
) -> argparse.ArgumentParser:
    """The command line; every flag's help names its environment variable and default
    (``log_level`` is the default the caller puts in place of an unset one)."""
    parser = _Parser(
        prog=prog,
        description=description,
        epilog=_EPILOG + (_CHECK_EPILOG if prog == "beenergised-exporter" else ""),
        formatter_class=_HelpFormatter,
        # Abbreviations would let "--client-secret VALUE" pass as --client-secret-file.
        allow_abbrev=False,
    )
    add = parser.add_argument
    add(
        "--api-url",
        metavar="URL",
        help="base URL of your mandant, e.g. https://yourmandant.beenergised.cloud "
        "(env BEENERGISED_API_URL, required unless --config.file lists mandants or --demo)",
    )
    add(
        "--token-url",
        metavar="URL",
        help=f"OAuth2 token endpoint (env BEENERGISED_TOKEN_URL, default {DEFAULT_TOKEN_URL})",
    )
    add(
        "--client-id",
        metavar="ID",
        help="client id of your CPO API token (env BEENERGISED_CLIENT_ID, required like --api-url)",
    )
    add(
        "--client-secret-file",
        metavar="PATH",
        help="file holding the client secret, e.g. a Docker or Kubernetes secret; trailing "
        "whitespace is ignored (env BEENERGISED_CLIENT_SECRET_FILE; or the secret itself in "
        "env BEENERGISED_CLIENT_SECRET; required like --api-url)",
    )
    add(
        "--token-auth-method",
        metavar="METHOD",
        help="how the client secret is sent to the token endpoint: basic, post or query "
        "(env BEENERGISED_TOKEN_AUTH_METHOD, default basic)",
    )
    add(
        "--api.ca-file",
        dest="api_ca_file",
        metavar="PATH",
        help="PEM file of the CA certificates to trust for the API and the token endpoint, "
        "e.g. a private CA or a TLS-inspecting proxy (env BEENERGISED_API_CA_FILE, default "
        "REQUESTS_CA_BUNDLE, else the certificates of the certifi package)",
    )
    add(
        "--target-firmware",
        metavar="VERSION",
        help="the firmware version a rollout aims at, exact (5.2.1) or a regular expression "
        "between slashes that must match the whole version (/5\\.2\\..*/); gives the "
        "beenergised_charging_stations_firmware_target metric (env "
        "BEENERGISED_TARGET_FIRMWARE, default none)",
    )
    add(
        "--refresh-interval",
        metavar="DURATION",
        help="time between refreshes, in seconds or as a Prometheus duration like 5m "
        "(env BEENERGISED_REFRESH_INTERVAL, default 5m)",
    )
    add(
        "--refresh.timeout",
        dest="refresh_timeout",
        metavar="DURATION",
        help="time one refresh of a mandant may take, every page included; independent of "
        "--refresh-interval: a refresh that takes longer than the interval delays the next one "
        "(beenergised_refresh_overruns_total) (env BEENERGISED_REFRESH_TIMEOUT, default 10m)",
    )
    add(
        "--api.request-timeout",
        dest="api_request_timeout",
        metavar="DURATION",
        help="wall time one request to the token endpoint or the API may take, headers and "
        "body, however slowly the bytes come (env BEENERGISED_API_REQUEST_TIMEOUT, default 30s)",
    )
    add(
        "--api.max-response-size",
        dest="api_max_response_size",
        metavar="SIZE",
        help="largest answer of the API accepted, in bytes or with a unit (512KiB, 8MiB, 1GB); "
        "a larger one fails the refresh with reason too_large (env "
        "BEENERGISED_API_MAX_RESPONSE_SIZE, default 8MiB)",
    )
    add(
        "--page-limit",
        metavar="N",
        help=f"stations requested per API page (env BEENERGISED_PAGE_LIMIT, default "
        f"{DEFAULT_PAGE_LIMIT})",
    )
    add(
        "--concurrency",
        metavar="N",
        help="pages fetched at once per mandant once the first page told the total; halved for "
        f"the rest of a refresh on HTTP 429 (env BEENERGISED_CONCURRENCY, default "
        f"{DEFAULT_CONCURRENCY})",
    )
    add(
        "--changes.max-entries",
        dest="changes_max_entries",
        metavar="N",
        help="changes (station added, removed, firmware changed) kept in memory for /changes "
        f"(env BEENERGISED_CHANGES_MAX_ENTRIES, default {DEFAULT_CHANGES_MAX_ENTRIES})",
    )
    add(
        "--config.file",
        dest="config_file",
        metavar="PATH",
        help="YAML file with global settings and a list of mandants "
        "(env BEENERGISED_CONFIG_FILE, default none)",
    )
    add(
        "--web.listen-address",
        dest="web_listen_address",
        metavar="ADDRESS",
        help=f"address to serve metrics on: :PORT, HOST:PORT or [IPv6]:PORT "
        f"(env BEENERGISED_WEB_LISTEN_ADDRESS, default :{DEFAULT_PORT})",
    )
    add(
        "--web.telemetry-path",
        dest="web_telemetry_path",
        metavar="PATH",
        help=f"path of the metrics endpoint (env BEENERGISED_WEB_TELEMETRY_PATH, default "
        f"{DEFAULT_TELEMETRY_PATH})",
    )
    add(
        "--web.config.file",
        dest="web_config_file",
        metavar="PATH",
        help="exporter-toolkit web config (YAML) for TLS and basic auth on every endpoint but "
        "/healthz (env BEENERGISED_WEB_CONFIG_FILE, default none: plain HTTP, no auth)",
    )
    add(
        "--log.level",
        dest="log_level",
        metavar="LEVEL",
        help=f"debug, info, warn or error (env BEENERGISED_LOG_LEVEL, default {log_level})",
    )
    add(
        "--log.format",
        dest="log_format",
        metavar="FORMAT",
        help="logfmt or json (env BEENERGISED_LOG_FORMAT, default logfmt)",
    )
    add(
        "--demo",
        action="store_true",
        default=None,
        help="run against the built-in simulated API; no mandant settings needed "
        "(env BEENERGISED_DEMO, default false)",
    )
    add(
        "--no-station-info",
        action="store_true",
        default=None,
        help="turn off the per-station info metric "
        "(env BEENERGISED_NO_STATION_INFO, default false)",
    )
    return parser


@dataclass(frozen=True, slots=True)
class _Given:
    """A raw value and where the user gave it, as error messages name it."""

    value: object
    where: str

    def fail(self, problem: str) -> ConfigError:
        return ConfigError(f"{self.where}: {problem}")


class _Sources:
    """Looks settings up by precedence: flag, then environment, then config file."""

    def __init__(self, args: argparse.Namespace, environ: Mapping[str, str]) -> None:
        self._args = args
        self._environ = environ

    def flag(self, dest: str, flag: str) -> _Given | None:
        value = getattr(self._args, dest)
        return None if value is None else _Given(value, flag)

    def env(self, name: str) -> _Given | None:
        value = self._environ.get(name, "")
        return _Given(value, name) if value else None

    def pick(self, dest: str, flag: str, env: str, file: _Given | None = None) -> _Given | None:
        return self.flag(dest, flag) or self.env(env) or file


def _text(given: _Given) -> str:
    if not isinstance(given.value, str):
        raise given.fail(f"expected a string, got {type(given.value).__name__} (put it in quotes)")
    return given.value.strip()


def _duration(given: _Given) -> float:
    value = given.value
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise given.fail(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        try:
            seconds = parse_duration(_text(given))
        except ValueError:
            raise given.fail(
                f"not a duration: {value!r}; use seconds (300) or a duration (5m, 1h30m)"
            ) from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise given.fail(f"must be positive, got {value!r}")
    return seconds


def _positive_int(given: _Given) -> int:
    value = given.value
    if isinstance(value, bool):
        raise given.fail(f"not an integer: {value!r}")
    if isinstance(value, int):
        number = value
    else:
        text = value.strip() if isinstance(value, str) else ""
        if not _is_number(text):
            raise given.fail(f"not an integer: {value!r}")
        number = int(text)
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


def _size(given: _Given) -> int:
    """A size in bytes: a whole number, optionally with a unit (KB, MB, GB, KiB, MiB, GiB)."""
    value = given.value
    text = value.strip() if isinstance(value, str) else None
    if isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
    match = _SIZE_RE.fullmatch(text) if text is not None else None
    if match is None:
        raise given.fail(f"not a size: {value!r}; use bytes (1048576) or a unit (512KiB, 8MiB)")
    size = int(match[1]) * _SIZE_UNITS[match[2]]
    if size < 1:
        raise given.fail(f"must be at least 1 byte, got {value!r}")
    return size


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _boolean(given: _Given) -> bool:
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


def _choice(given: _Given, choices: tuple[str, ...]) -> str:
    word = given.value.strip().lower() if isinstance(given.value, str) else None
    if word is None or word not in choices:
        raise given.fail(f"must be one of {', '.join(choices)}, got {given.value!r}")
    return word


def _url(given: _Given) -> str:
    text = _text(given)
    try:
        parts = urlsplit(text)
        _ = parts.port  # raises ValueError for a port that is not a number or out of range
    except ValueError:
        parts = None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise given.fail(f"not a URL: {given.value!r}; expected https://host[/path]")
    if parts.username is not None or parts.password is not None:
        raise given.fail("must not contain a user name or password")
    if parts.query or parts.fragment or any(c.isspace() for c in text):
        raise given.fail(f"not a URL: {given.value!r}; expected https://host[/path]")
    return text


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _mandant_warnings(mandant: Mandant) -> list[str]:
    warnings = []
    if mandant.token_auth_method == "query":
        warnings.append(
            f"mandant {mandant.name}: token auth method query sends the client secret in the "
            "URL of the token request, where proxies and servers may log it; prefer basic "
            "(the default) or post"
        )
    for key, url, what in (
        ("api_url", mandant.api_url, "the access token"),
        ("token_url", mandant.token_url, "the client secret"),
    ):
        parts = urlsplit(url)
        if parts.scheme.lower() == "http" and not _is_loopback(parts.hostname or ""):
            warnings.append(
                f"mandant {mandant.name}: {key} {url} is plain http, so {what} travels "
                "unencrypted; use https"
            )
    return warnings


def _listen_address(given: _Given) -> tuple[str, int]:
    text = _text(given)
    host, colon, port_text = text.rpartition(":")
    if not colon or text.endswith("]"):
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


def _telemetry_path(given: _Given) -> str:
    text = _text(given)
    if not text.startswith("/") or any(c.isspace() or c in "?#" for c in text):
        raise given.fail(f"must be a path starting with '/', got {given.value!r}")
    return text


def _secret_path(given: _Given) -> Path:
    text = _text(given)
    if not text:
        raise given.fail("missing: the path of the file holding the client secret")
    return Path(text)


def _read_secret_file(given: _Given, path: Path) -> Secret:
    """The secret in ``path``; errors name the file, never its content."""
    try:
        return Secret.read(path)
    except OSError as e:
        reason = e.strerror or type(e).__name__
        # A name without "/" that cannot be read may be the secret itself, set by mistake
        # where its file belongs: do not print it.
        if "/" not in _text(given):
            raise given.fail(
                f"cannot read the file named there: {reason} (the name is not shown: without "
                "a '/' it may be the secret itself; give the path of the file)"
            ) from None
        raise given.fail(f"cannot read {str(path)!r}: {reason}") from None
    except ValueError as e:
        raise given.fail(str(e)) from None


def _ca_file(given: _Given, base: Path, directory_ok: bool = False) -> str:
    """The path of a readable PEM bundle of CA certificates (relative to ``base``), checked now
    so that a wrong path fails at start-up rather than as a TLS error at every refresh."""
    text = _text(given)
    if not text:
        raise given.fail("missing: the path of a PEM file of CA certificates")
    path = base / text
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
        text = path.read_text(encoding="ascii", errors="replace")
    except OSError as e:
        return f"cannot read {str(path)!r}: {e.strerror or type(e).__name__}"
    if "-----BEGIN CERTIFICATE-----" not in text:
        return f"{str(path)!r} holds no PEM certificate"
    try:
        ssl.create_default_context(cafile=str(path))
    except ssl.SSLError as e:
        return f"{str(path)!r} is not a usable PEM certificate bundle ({e.reason or 'OpenSSL'})"
    return None


CA_BUNDLE_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
"""Variables that replace the default CA bundle of every mandant without a ca_file, as in
requests (which would otherwise read them on every request)."""


def _environment_ca_file(sources: _Sources) -> str | None:
    for name in CA_BUNDLE_VARIABLES:
        given = sources.env(name)
        if given is not None:
            return _ca_file(given, Path(), directory_ok=True)
    return None


def _default_name(api_url: str) -> str:
    """The first label of the host name ("yourmandant" for yourmandant.beenergised.cloud);
    an IP address is kept whole."""
    host = urlsplit(api_url).hostname or ""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host.split(".", 1)[0]
    return host


@dataclass(frozen=True, slots=True)
class _ConfigFile:
    """The parsed YAML config: global settings and the raw mandant entries, with locations."""

    path: str
    globals: dict[str, _Given]
    mandants: _Given | None


def _load_config_file(given: _Given) -> _ConfigFile:
    path = _text(given)
    try:
        with open(path, encoding="utf-8") as stream:
            document = load_yaml(stream)
    except OSError as e:
        raise given.fail(f"cannot read {path!r}: {e.strerror or type(e).__name__}") from None
    except UnicodeDecodeError:
        raise given.fail(f"{path!r} is not UTF-8 text") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {yaml_problem(e)}") from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(document).__name__}")
    _reject_unknown_keys(document, _FILE_GLOBAL_KEYS, path)
    located = {key: _Given(value, f"{path}: {key}") for key, value in document.items()}
    mandants = located.pop("mandants", None)
    return _ConfigFile(path, located, mandants)


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key given twice in one mapping is an error: PyYAML would
    keep the last value silently, and a repeated key is a mistake, never an intent. Used for
    the config file and the web config file; the error names the line and key, never a value.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:  # type: ignore[override]
        first_line: dict[object, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue  # merge keys may repeat keys on purpose; complex keys are refused later
            key = self.construct_object(key_node)
            if key in first_line:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first on line {first_line[key]}); give each key once",
                    key_node.start_mark,
                )
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def load_yaml(stream: IO[str]) -> object:
    """The YAML document in ``stream``, with plain types only and no repeated keys."""
    return yaml.load(stream, Loader=UniqueKeyLoader)


def yaml_problem(error: yaml.YAMLError) -> str:
    """Where and what, without PyYAML's snippet of the line (which may hold a secret)."""
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        return f"{where}{error.problem or error.context}"
    return type(error).__name__


def _reject_unknown_keys(mapping: dict[object, object], known: tuple[str, ...], where: str) -> None:
    for key in mapping:
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r}; known keys: {', '.join(known)}")


def _file_mandants(config: _ConfigFile, auth_method: str) -> list[Mandant]:
    """The mandants listed in the config file; names must be unique."""
    assert config.mandants is not None
    entries = config.mandants.value
    if not isinstance(entries, list) or not entries:
        raise config.mandants.fail("expected a non-empty list of mandants")
    mandants: list[Mandant] = []
    first_use: dict[str, str] = {}
    base = Path(config.path).parent
    for index, entry in enumerate(entries):
        where = f"{config.path}: mandants[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(entry).__name__}")
        _reject_unknown_keys(entry, _FILE_MANDANT_KEYS, where)
        item = {key: _Given(value, f"{where}.{key}") for key, value in entry.items()}
        mandant = _file_mandant(item, where, base, auth_method)
        if mandant.name in first_use:
            if "name" in item:
                raise item["name"].fail(
                    f"duplicate mandant name {mandant.name!r}, also used by "
                    f"{first_use[mandant.name]}; names must be unique"
                )
            raise ConfigError(
                f"{where}: duplicate mandant name {mandant.name!r} (taken from api_url), also "
                f"used by {first_use[mandant.name]}; set name: to tell them apart"
            )
        first_use[mandant.name] = f"mandants[{index}]"
        mandants.append(mandant)
    return mandants


def _file_mandant(item: dict[str, _Given], where: str, base: Path, auth_method: str) -> Mandant:
    for key, meaning in (("api_url", _MISSING_API_URL), ("client_id", _MISSING_CLIENT_ID)):
        if key not in item or item[key].value is None:
            raise ConfigError(f"{where}.{key}: missing: {meaning}")
    api_url = _url(item["api_url"]).rstrip("/")
    client_id = _text(item["client_id"])
    if not client_id:
        raise item["client_id"].fail(f"missing: {_MISSING_CLIENT_ID}")
    if "client_secret" in item and "client_secret_file" in item:
        raise ConfigError(f"{where}: give exactly one of client_secret and client_secret_file")
    if "client_secret_file" in item:
        secret_given = item["client_secret_file"]
        secret = _read_secret_file(secret_given, base / _secret_path(secret_given))
    elif "client_secret" in item:
        secret = _inline_secret(item["client_secret"])
    else:
        raise ConfigError(
            f"{where}.client_secret_file (or client_secret): missing: {_MISSING_CLIENT_SECRET}"
        )
    name = _text(item["name"]) if "name" in item else _default_name(api_url)
    if not name:
        raise (item["name"] if "name" in item else item["api_url"]).fail(
            "the mandant name must not be empty"
        )
    return Mandant(
        name=name,
        api_url=api_url,
        token_url=_url(item["token_url"]) if "token_url" in item else DEFAULT_TOKEN_URL,
        client_id=client_id,
        client_secret=secret,
        token_auth_method=_choice(item["token_auth_method"], TOKEN_AUTH_METHODS)
        if "token_auth_method" in item
        else auth_method,
        target_firmware=_target(item["target_firmware"]) if "target_firmware" in item else None,
        ca_file=_ca_file(item["ca_file"], base) if "ca_file" in item else None,
    )


def _target(given: _Given) -> FirmwareTarget | None:
    """A firmware target; null (in the file) means none."""
    if given.value is None:
        return None
    if isinstance(given.value, int | float) and not isinstance(given.value, bool):
        raise given.fail(f"expected a string, got {given.value!r}; put the version in quotes")
    try:
        return FirmwareTarget.parse(_text(given))
    except ValueError as e:
        raise given.fail(str(e)) from None


def _inline_secret(given: _Given) -> Secret:
    # Never format given.value here: it is the secret.
    if not isinstance(given.value, str):
        raise given.fail("expected a string (put it in quotes)")
    try:
        return Secret(clean_secret(given.value, f"missing: {_MISSING_CLIENT_SECRET}"))
    except ValueError as e:
        raise given.fail(str(e)) from None


@dataclass(frozen=True, slots=True)
class _MandantInputs:
    """The single-mandant settings from flags and environment, each possibly absent."""

    api_url: _Given | None
    token_url: _Given | None
    client_id: _Given | None
    secret_file: _Given | None
    secret: _Given | None
    target_firmware: _Given | None
    ca_file: _Given | None

    def first_given(self) -> _Given | None:
        for given in (
            self.api_url,
            self.client_id,
            self.secret_file,
            self.secret,
            self.token_url,
            self.target_firmware,
            self.ca_file,
        ):
            if given is not None:
                return given
        return None


def _mandant_inputs(sources: _Sources) -> _MandantInputs:
    secret_file = sources.flag("client_secret_file", "--client-secret-file")
    secret = None
    if secret_file is None:
        secret_file = sources.env("BEENERGISED_CLIENT_SECRET_FILE")
        secret = sources.env("BEENERGISED_CLIENT_SECRET")
        if secret_file is not None and secret is not None:
            raise ConfigError(
                "BEENERGISED_CLIENT_SECRET_FILE and BEENERGISED_CLIENT_SECRET: "
                "both set; set only one"
            )
    return _MandantInputs(
        api_url=sources.pick("api_url", "--api-url", "BEENERGISED_API_URL"),
        token_url=sources.pick("token_url", "--token-url", "BEENERGISED_TOKEN_URL"),
        client_id=sources.pick("client_id", "--client-id", "BEENERGISED_CLIENT_ID"),
        secret_file=secret_file,
        secret=secret,
        target_firmware=sources.pick(
            "target_firmware", "--target-firmware", "BEENERGISED_TARGET_FIRMWARE"
        ),
        ca_file=sources.pick("api_ca_file", "--api.ca-file", "BEENERGISED_API_CA_FILE"),
    )


def _single_mandant(inputs: _MandantInputs, auth_method: str) -> Mandant:
    if inputs.api_url is None:
        raise ConfigError(
            f"BEENERGISED_API_URL (or --api-url): missing: {_MISSING_API_URL}; set it with "
            "BEENERGISED_CLIENT_ID and BEENERGISED_CLIENT_SECRET_FILE (or the flags), list "
            "mandants in --config.file, or pass --demo to try it out"
        )
    api_url = _url(inputs.api_url).rstrip("/")
    client_id = _text(inputs.client_id) if inputs.client_id is not None else ""
    if not client_id:
        raise ConfigError(f"BEENERGISED_CLIENT_ID (or --client-id): missing: {_MISSING_CLIENT_ID}")
    if inputs.secret_file is not None:
        secret = _read_secret_file(inputs.secret_file, _secret_path(inputs.secret_file))
    elif inputs.secret is not None:
        secret = _inline_secret(inputs.secret)
    else:
        raise ConfigError(
            "BEENERGISED_CLIENT_SECRET_FILE (or --client-secret-file, or "
            f"BEENERGISED_CLIENT_SECRET): missing: {_MISSING_CLIENT_SECRET}"
        )
    return Mandant(
        name=_default_name(api_url),
        api_url=api_url,
        token_url=_url(inputs.token_url) if inputs.token_url is not None else DEFAULT_TOKEN_URL,
        client_id=client_id,
        client_secret=secret,
        token_auth_method=auth_method,
        target_firmware=_target(inputs.target_firmware) if inputs.target_firmware else None,
        ca_file=_ca_file(inputs.ca_file, Path()) if inputs.ca_file else None,
    )


def _reject_secret_flag(argv: Sequence[str]) -> None:
    for arg in argv:
        if arg == "--":
            return
        flag = arg.partition("=")[0]
        if flag.replace("_", "-").lower() == "--client-secret":
            raise ConfigError(f"{flag}: not supported: {_NO_SECRET_FLAG}")


def _resolve_mandants(
    sources: _Sources, config: _ConfigFile | None, demo: _Given | None, auth_method: str
) -> list[Mandant]:
    """One mandant from flags/environment, or the config file's list, or none in demo mode."""
    inputs = _mandant_inputs(sources)
    offender = inputs.first_given()
    file_list = config if config is not None and config.mandants is not None else None
    if demo is not None:
        if offender is None and file_list is not None:
            offender = _Given(None, f"mandants: from {file_list.path}")
        if offender is not None:
            raise ConfigError(
                f"{demo.where} runs against the built-in simulator; remove {offender.where} "
                "(mandant settings are not used in demo mode)"
            )
        return []
    if file_list is not None:
        if offender is not None:
            raise offender.fail(
                f"{file_list.path} also lists mandants; choose one: remove {offender.where} "
                "or the mandants: list"
            )
        return _file_mandants(file_list, auth_method)
    return [_single_mandant(inputs, auth_method)]


def load_settings(
    argv: Sequence[str],
    environ: Mapping[str, str],
    parser: argparse.ArgumentParser | None = None,
) -> Settings:
    """Parse ``argv`` (without the program name) and ``environ`` into validated Settings.

    ``parser`` is ``build_parser()`` unless a subcommand adds flags of its own. Raises
    ConfigError for every configuration problem; ``--help`` prints the help and raises
    SystemExit(0) as argparse does.
    """
    _reject_secret_flag(argv)
    sources = _Sources((parser or build_parser()).parse_args(list(argv)), environ)

    config_given = sources.pick("config_file", "--config.file", "BEENERGISED_CONFIG_FILE")
    config = _load_config_file(config_given) if config_given is not None else None
    in_file = config.globals if config is not None else {}

    demo_given = sources.pick("demo", "--demo", "BEENERGISED_DEMO")
    demo = demo_given is not None and _boolean(demo_given)

    auth_given = sources.pick(
        "token_auth_method",
        "--token-auth-method",
        "BEENERGISED_TOKEN_AUTH_METHOD",
        in_file.get("token_auth_method"),
    )
    auth_method = _choice(auth_given, TOKEN_AUTH_METHODS) if auth_given else "basic"
    mandants = _resolve_mandants(sources, config, demo_given if demo else None, auth_method)
    environment_ca = _environment_ca_file(sources)
    if environment_ca is not None:
        mandants = [m if m.ca_file else replace(m, ca_file=environment_ca) for m in mandants]
    warnings = [warning for mandant in mandants for warning in _mandant_warnings(mandant)]

    refresh_interval = DEFAULT_REFRESH_INTERVAL
    refresh_given = sources.pick(
        "refresh_interval",
        "--refresh-interval",
        "BEENERGISED_REFRESH_INTERVAL",
        in_file.get("refresh_interval"),
    )
    if refresh_given is not None:
        refresh_interval = _duration(refresh_given)
        if refresh_interval < SHORT_REFRESH_INTERVAL:
            warnings.append(
                f"{refresh_given.where}: {_format_seconds(refresh_interval)} is below "
                f"{_format_seconds(SHORT_REFRESH_INTERVAL)}; every refresh reads all stations "
                "of every mandant from the CPO API, so 1m or more is kinder to it"
            )

    refresh_timeout_given = sources.pick(
        "refresh_timeout",
        "--refresh.timeout",
        "BEENERGISED_REFRESH_TIMEOUT",
        in_file.get("refresh_timeout"),
    )
    request_timeout_given = sources.pick(
        "api_request_timeout",
        "--api.request-timeout",
        "BEENERGISED_API_REQUEST_TIMEOUT",
        in_file.get("api_request_timeout"),
    )
    size_given = sources.pick(
        "api_max_response_size",
        "--api.max-response-size",
        "BEENERGISED_API_MAX_RESPONSE_SIZE",
        in_file.get("api_max_response_size"),
    )
    page_given = sources.pick(
        "page_limit", "--page-limit", "BEENERGISED_PAGE_LIMIT", in_file.get("page_limit")
    )
    concurrency_given = sources.pick(
        "concurrency", "--concurrency", "BEENERGISED_CONCURRENCY", in_file.get("concurrency")
    )
    listen_given = sources.pick(
        "web_listen_address", "--web.listen-address", "BEENERGISED_WEB_LISTEN_ADDRESS"
    )
    listen_host, listen_port = _listen_address(listen_given) if listen_given else ("", DEFAULT_PORT)
    path_given = sources.pick(
        "web_telemetry_path", "--web.telemetry-path", "BEENERGISED_WEB_TELEMETRY_PATH"
    )
    web_config_given = sources.pick(
        "web_config_file", "--web.config.file", "BEENERGISED_WEB_CONFIG_FILE"
    )
    level_given = sources.pick("log_level", "--log.level", "BEENERGISED_LOG_LEVEL")
    format_given = sources.pick("log_format", "--log.format", "BEENERGISED_LOG_FORMAT")

    changes_given = sources.pick(
        "changes_max_entries",
        "--changes.max-entries",
        "BEENERGISED_CHANGES_MAX_ENTRIES",
        in_file.get("changes_max_entries"),
    )

    # The flag and variable say "no", the file key says "yes": flip the one that was given.
    no_info_given = sources.pick(
        "no_station_info", "--no-station-info", "BEENERGISED_NO_STATION_INFO"
    )
    if no_info_given is not None:
        station_info = not _boolean(no_info_given)
    elif "station_info" in in_file:
        station_info = _boolean(in_file["station_info"])
    else:
        station_info = True

    return Settings(
        mandants=tuple(mandants),
        refresh_interval=refresh_interval,
        page_limit=_positive_int(page_given) if page_given else DEFAULT_PAGE_LIMIT,
        concurrency=_positive_int(concurrency_given) if concurrency_given else DEFAULT_CONCURRENCY,
        listen_host=listen_host,
        listen_port=listen_port,
        telemetry_path=_telemetry_path(path_given) if path_given else DEFAULT_TELEMETRY_PATH,
        web_config_file=_text(web_config_given) if web_config_given else None,
        log_level=_choice(level_given, LOG_LEVELS) if level_given else "info",
        log_format=_choice(format_given, LOG_FORMATS) if format_given else "logfmt",
        demo=demo,
        station_info=station_info,
        changes_max_entries=(
            _positive_int(changes_given) if changes_given else DEFAULT_CHANGES_MAX_ENTRIES
        ),
        warnings=tuple(warnings),
        refresh_timeout=(
            _duration(refresh_timeout_given) if refresh_timeout_given else DEFAULT_REFRESH_TIMEOUT
        ),
        request_timeout=(
            _duration(request_timeout_given) if request_timeout_given else DEFAULT_REQUEST_TIMEOUT
        ),
        max_response_size=_size(size_given) if size_given else DEFAULT_MAX_RESPONSE_SIZE,
    )
