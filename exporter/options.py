"""The table of settings.

Each setting is one :class:`Option` row: its flag in Prometheus' dotted style (from which the
argparse dest and, unless the row names its own, the environment variable derive), its
config-file key and scope, its parser, its default and its help. The command line
(:mod:`exporter.commandline`), the precedence lookup in :mod:`exporter.config`, the config
file's allowed keys and the check of README.md's configuration table all read this one table,
so adding a setting adds one row (and, if the rest of the exporter needs it, a field of
``Settings``). A flag renamed to the dotted style keeps its 0.1 name (``old``) for a release:
it still works, hidden from --help, and load_settings warns once that names the new flag.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from exporter.model import (
    AUTHORIZATION_SETTINGS,
    DEFAULT_MAX_FIRMWARE_VERSIONS,
    TOKEN_AUTH_METHODS,
)
from exporter.values import (
    DEFAULT_PORT,
    Given,
    boolean,
    ca_file,
    duration,
    firmware_target,
    listen_addresses,
    one_of,
    positive_int,
    secret_path,
    size,
    telemetry_path,
    text,
    url,
)

DEFAULT_TOKEN_URL = "https://beenergised-jwtapis.auth.eu-central-1.amazoncognito.com/token"
LOG_LEVELS = ("debug", "info", "warn", "error")
LOG_FORMATS = ("logfmt", "json")
DEFAULT_REFRESH_INTERVAL = 300.0
DEFAULT_PAGE_LIMIT = 100
DEFAULT_CONCURRENCY = 4
DEFAULT_TELEMETRY_PATH = "/metrics"
DEFAULT_CHANGES_MAX_ENTRIES = 1000
DEFAULT_REFRESH_TIMEOUT = 600.0
"""A refresh may take 10 minutes: 100,000 stations at 300 ms a page take about 75 s at
concurrency 4 and 300 s page by page; a hung request is cut after --api.request-timeout."""
DEFAULT_REQUEST_TIMEOUT = 30.0
DEFAULT_MAX_RESPONSE_SIZE = 8 * 1024 * 1024
DEFAULT_MAX_STATIONS = 1_000_000
"""10,000 pages of the default --api.page-limit: the size the exporter is benchmarked at. A
refresh may hold a published fleet and two reads; what a station costs is measured in
docs/performance.md#memory."""
DEFAULT_WEB_MAX_REQUESTS = 40
DEFAULT_WEB_READ_HEADER_TIMEOUT = 10.0
ENV_PREFIX = "BEENERGISED_"


class Scope(Enum):
    """Whom a setting describes, which says where the config file may hold it."""

    GLOBAL = "global"  # the exporter: a top-level key, a field of Settings
    MANDANT = "mandant"  # one mandant: a key of a mandants: entry (flags and variables: the one)
    BOTH = "both"  # every mandant: the top level is the default, a mandants: entry may differ


@dataclass(frozen=True, slots=True)
class Option:
    """One setting: where it can be given, how its value is parsed, what it defaults to."""

    name: str  # the flag without "--", e.g. "refresh.timeout"; dest and variable derive from it
    parse: Callable[[Given], object]  # raw value -> value, or ConfigError naming the place
    help: str  # what it means; the variable and the default are appended
    metavar: str | None = None  # None: a switch that takes no value on the command line
    default: object = None  # the parsed value when it is not given anywhere
    shown: str | None = None  # the default as help and README write it, if not str(default)
    required: str | None = None  # when it is required instead of defaulted ("like --api.url")
    env_note: str = ""  # another way to give it, said right after the variable
    file_key: str | None = None  # its key in the config file, if it can be there
    scope: Scope = Scope.GLOBAL
    setting: str | None = None  # the field of Settings that holds a GLOBAL option's value
    variable: str | None = None  # the environment variable, where its 0.1 name stays
    old: str | None = None  # the flag's 0.1 name: still accepted, with a warning
    repeatable: bool = False  # the flag may be given again; the variable takes a list: a,b
    secret: bool = False  # no flag: a command line is visible in ps

    @property
    def flag(self) -> str | None:
        return None if self.secret else f"--{self.name}"

    @property
    def negatable(self) -> bool:
        """A switch that is on by default has a --no- form to turn it off."""
        return self.metavar is None and self.default is True

    @property
    def env_negated(self) -> bool:
        """The variable says "no" (BEENERGISED_NO_STATION_INFO=true turns the switch off)."""
        return self.env.startswith(f"{ENV_PREFIX}NO_")

    @property
    def dest(self) -> str:
        return self.name.replace(".", "_").replace("-", "_")

    @property
    def env(self) -> str:
        return self.variable or ENV_PREFIX + self.dest.upper()

    @property
    def old_flag(self) -> str | None:
        return f"--{self.old}" if self.old else None

    @property
    def new_flag(self) -> str | None:
        """What replaces ``old_flag``: a switch's --no- form replaces a --no- flag."""
        if self.old is None or self.flag is None:
            return None
        return f"--no-{self.name}" if self.old.startswith("no-") else self.flag

    @property
    def names(self) -> tuple[str, ...]:
        """The variable and the flag, as a "missing" message lists them."""
        return (self.env, self.flag) if self.flag else (self.env,)

    @property
    def default_text(self) -> str:
        if self.shown is not None:
            return self.shown
        return "none" if self.default is None else str(self.default).lower()

    @property
    def help_text(self) -> str:
        note = f"required {self.required}" if self.required else f"default {self.default_text}"
        return f"{self.help} (env {self.env}{self.env_note}{';' if self.env_note else ','} {note})"


OPTIONS: tuple[Option, ...] = (
    Option(
        "api.url",
        url,
        "base URL of your mandant, e.g. https://yourmandant.beenergised.cloud",
        metavar="URL",
        required="unless --config.file lists mandants or --demo",
        file_key="api_url",
        scope=Scope.MANDANT,
        old="api-url",
    ),
    Option(
        "api.token-url",
        url,
        "OAuth2 token endpoint",
        metavar="URL",
        default=DEFAULT_TOKEN_URL,
        file_key="token_url",
        scope=Scope.MANDANT,
        variable="BEENERGISED_TOKEN_URL",
        old="token-url",
    ),
    Option(
        "api.client-id",
        text,
        "client id of your CPO API token",
        metavar="ID",
        required="like --api.url",
        file_key="client_id",
        scope=Scope.MANDANT,
        variable="BEENERGISED_CLIENT_ID",
        old="client-id",
    ),
    Option(
        "api.client-secret-file",
        secret_path,
        "file holding the client secret, e.g. a Docker or Kubernetes secret; trailing "
        "whitespace is ignored",
        metavar="PATH",
        required="like --api.url",
        env_note="; or the secret itself in env BEENERGISED_CLIENT_SECRET",
        file_key="client_secret_file",
        scope=Scope.MANDANT,
        variable="BEENERGISED_CLIENT_SECRET_FILE",
        old="client-secret-file",
    ),
    Option(
        "api.client-secret",
        text,
        "the client secret itself",
        required="like --api.url, unless --api.client-secret-file is given",
        file_key="client_secret",
        scope=Scope.MANDANT,
        variable="BEENERGISED_CLIENT_SECRET",
        secret=True,
    ),
    Option(
        "api.token-auth-method",
        one_of(TOKEN_AUTH_METHODS),
        "how the client secret is sent to the token endpoint: basic, post or query",
        metavar="METHOD",
        default="basic",
        file_key="token_auth_method",
        scope=Scope.BOTH,
        variable="BEENERGISED_TOKEN_AUTH_METHOD",
        old="token-auth-method",
    ),
    Option(
        "api.authorization",
        one_of(AUTHORIZATION_SETTINGS),
        "how the access token goes into the Authorization header of API requests: bearer "
        "(Bearer <token>, as the API quickstart's text says), raw (the bare token, as its curl "
        "example sends it) or auto (bearer; when a token fresh from the token endpoint is "
        "refused, the other form once; then the form that works)",
        metavar="FORM",
        default="auto",
        file_key="authorization",
        scope=Scope.BOTH,
    ),
    Option(
        "api.ca-file",
        ca_file,
        "PEM file of the CA certificates to trust for the API and the token endpoint, e.g. a "
        "private CA or a TLS-inspecting proxy",
        metavar="PATH",
        shown="REQUESTS_CA_BUNDLE, else the certificates of the certifi package",
        file_key="ca_file",
        scope=Scope.MANDANT,
    ),
    Option(
        "firmware.target",
        firmware_target,
        "the firmware version a rollout aims at, exact (5.2.1) or a regular expression between "
        "slashes that must match the whole version (/5\\.2\\..*/); gives the "
        "beenergised_charging_stations_firmware_target metric",
        metavar="VERSION",
        file_key="target_firmware",
        scope=Scope.MANDANT,
        variable="BEENERGISED_TARGET_FIRMWARE",
        old="target-firmware",
    ),
    Option(
        "firmware.max-versions",
        positive_int,
        "firmware versions of a mandant with a series of their own in "
        "beenergised_charging_stations_by_firmware: the target firmware's first, then the most "
        'common; the stations of the others are counted under firmware_version="(other)" and '
        "as the data issue firmware_version_folded",
        metavar="N",
        default=DEFAULT_MAX_FIRMWARE_VERSIONS,
        file_key="firmware_max_versions",
        scope=Scope.BOTH,
    ),
    Option(
        "refresh.interval",
        duration,
        "time between refreshes, in seconds or as a Prometheus duration like 5m",
        metavar="DURATION",
        default=DEFAULT_REFRESH_INTERVAL,
        shown="5m",
        file_key="refresh_interval",
        setting="refresh_interval",
        old="refresh-interval",
    ),
    Option(
        "refresh.timeout",
        duration,
        "time one refresh of a mandant may take, every page included; independent of "
        "--refresh.interval: a refresh that takes longer than the interval delays the next one "
        "(beenergised_refresh_overruns_total)",
        metavar="DURATION",
        default=DEFAULT_REFRESH_TIMEOUT,
        shown="10m",
        file_key="refresh_timeout",
        setting="refresh_timeout",
    ),
    Option(
        "api.request-timeout",
        duration,
        "wall time one request to the token endpoint or the API may take, headers and body, "
        "however slowly the bytes come",
        metavar="DURATION",
        default=DEFAULT_REQUEST_TIMEOUT,
        shown="30s",
        file_key="api_request_timeout",
        setting="request_timeout",
    ),
    Option(
        "api.max-response-size",
        size,
        "largest answer of the API accepted, in bytes or with a unit (512KiB, 8MiB, 1GB); a "
        "larger one fails the refresh with reason too_large",
        metavar="SIZE",
        default=DEFAULT_MAX_RESPONSE_SIZE,
        shown="8MiB",
        file_key="api_max_response_size",
        setting="max_response_size",
    ),
    Option(
        "api.max-stations",
        positive_int,
        "most charging stations one read of a mandant's listing may hold: a listing that "
        "announces or sends more fails the refresh with reason too_large, and the last good "
        "fleet stays served. It bounds the memory a refresh takes: the stations it reads and "
        "did not hold before, and their text at 400 bytes a station",
        metavar="N",
        default=DEFAULT_MAX_STATIONS,
        file_key="api_max_stations",
        setting="max_stations",
    ),
    Option(
        "api.page-limit",
        positive_int,
        "stations requested per API page",
        metavar="N",
        default=DEFAULT_PAGE_LIMIT,
        file_key="page_limit",
        setting="page_limit",
        variable="BEENERGISED_PAGE_LIMIT",
        old="page-limit",
    ),
    Option(
        "api.concurrency",
        positive_int,
        "pages fetched at once per mandant once the first page told the total; halved for the "
        "rest of a refresh on HTTP 429",
        metavar="N",
        default=DEFAULT_CONCURRENCY,
        file_key="concurrency",
        setting="concurrency",
        variable="BEENERGISED_CONCURRENCY",
        old="concurrency",
    ),
    Option(
        "changes.max-entries",
        positive_int,
        "changes (station added, removed, firmware changed) kept in memory for /changes",
        metavar="N",
        default=DEFAULT_CHANGES_MAX_ENTRIES,
        file_key="changes_max_entries",
        setting="changes_max_entries",
    ),
    Option(
        "config.file",
        text,
        "YAML file with global settings and a list of mandants",
        metavar="PATH",
    ),
    Option(
        "web.listen-address",
        listen_addresses,
        "address to serve metrics on: :PORT, HOST:PORT or [IPv6]:PORT; give the flag again to "
        "listen on several (the variable takes them separated by commas)",
        metavar="ADDRESS",
        default=(("", DEFAULT_PORT),),
        shown=f":{DEFAULT_PORT}",
        setting="listen_addresses",
        repeatable=True,
    ),
    Option(
        "web.systemd-socket",
        boolean,
        "listen on the sockets systemd passes by socket activation (LISTEN_FDS) instead of "
        "--web.listen-address",
        default=False,
        setting="systemd_socket",
    ),
    Option(
        "web.telemetry-path",
        telemetry_path,
        "path of the metrics endpoint",
        metavar="PATH",
        default=DEFAULT_TELEMETRY_PATH,
        setting="telemetry_path",
    ),
    Option(
        "web.config.file",
        text,
        "exporter-toolkit web config (YAML) for TLS and basic auth on every endpoint but /healthz",
        metavar="PATH",
        shown="none: plain HTTP, no auth",
        setting="web_config_file",
    ),
    Option(
        "web.max-requests",
        positive_int,
        "requests answered at once; as many more wait up to a second for a free worker, any "
        "more get HTTP 503 at once "
        '(beenergised_web_requests_refused_total{reason="too_many_requests"})',
        metavar="N",
        default=DEFAULT_WEB_MAX_REQUESTS,
        setting="web_max_requests",
    ),
    Option(
        "web.read-header-timeout",
        duration,
        "time a client has from connecting to the end of its request head, TLS handshake "
        "included, however steadily it sends; then it is cut off "
        '(beenergised_web_requests_refused_total{reason="header_timeout"})',
        metavar="DURATION",
        default=DEFAULT_WEB_READ_HEADER_TIMEOUT,
        shown="10s",
        setting="web_read_header_timeout",
    ),
    Option(
        "web.enable-lifecycle",
        boolean,
        "answer POST /-/reload: the reload SIGHUP does, behind basic auth if the web config "
        "sets users; without it the endpoint answers 403",
        default=False,
        setting="web_enable_lifecycle",
    ),
    Option(
        "log.level",
        one_of(LOG_LEVELS),
        "debug, info, warn or error",
        metavar="LEVEL",
        default="info",
        setting="log_level",
    ),
    Option(
        "log.format",
        one_of(LOG_FORMATS),
        "logfmt or json",
        metavar="FORMAT",
        default="logfmt",
        setting="log_format",
    ),
    Option(
        "demo",
        boolean,
        "run against the built-in simulated API; no mandant settings needed",
        default=False,
        setting="demo",
    ),
    Option(
        "collector.station-info",
        boolean,
        "the per-station info metric beenergised_charging_station_info, one series a station; "
        "turn it off for very large fleets",
        default=True,
        env_note="=true turns it off",
        file_key="station_info",
        setting="station_info",
        variable="BEENERGISED_NO_STATION_INFO",
        old="no-station-info",
    ),
)
OPTION = {option.name: option for option in OPTIONS}
"""The options by name, for the few that load_settings treats apart."""
MANDANT_OPTIONS = tuple(option for option in OPTIONS if option.scope is Scope.MANDANT)
GLOBAL_OPTIONS = tuple(option for option in OPTIONS if option.scope is not Scope.MANDANT)
"""The options read by precedence down to the config file's top level."""
FILE_GLOBAL_KEYS = (
    "mandants",
    *sorted(option.file_key for option in GLOBAL_OPTIONS if option.file_key),
)
FILE_MANDANT_KEYS = tuple(
    sorted(
        (
            "name",  # the mandant's label: flags and variables give one, named after its host
            *(o.file_key for o in OPTIONS if o.file_key and o.scope is not Scope.GLOBAL),
        )
    )
)
