"""Tests of exporter/config.py: precedence, validation messages, secrets, the YAML file, --help."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from exporter.commandline import build_parser
from exporter.config import Settings, load_settings
from exporter.errors import ConfigError
from exporter.model import TOKEN_AUTH_METHODS, Mandant, Secret
from exporter.options import DEFAULT_TOKEN_URL, OPTION
from exporter.values import DEFAULT_PORT, parse_duration

SECRET = "s3cr3t-XYZ"
API_URL = "https://yourmandant.beenergised.cloud"
ENV = {
    "BEENERGISED_API_URL": API_URL,
    "BEENERGISED_CLIENT_ID": "abc",
    "BEENERGISED_CLIENT_SECRET": SECRET,
}

FLAGS_AND_ENV = [
    ("--api.url", "BEENERGISED_API_URL"),
    ("--api.token-url", "BEENERGISED_TOKEN_URL"),
    ("--api.client-id", "BEENERGISED_CLIENT_ID"),
    ("--api.client-secret-file", "BEENERGISED_CLIENT_SECRET_FILE"),
    ("--api.token-auth-method", "BEENERGISED_TOKEN_AUTH_METHOD"),
    ("--api.authorization", "BEENERGISED_API_AUTHORIZATION"),
    ("--refresh.interval", "BEENERGISED_REFRESH_INTERVAL"),
    ("--api.page-limit", "BEENERGISED_PAGE_LIMIT"),
    ("--api.concurrency", "BEENERGISED_CONCURRENCY"),
    ("--config.file", "BEENERGISED_CONFIG_FILE"),
    ("--web.listen-address", "BEENERGISED_WEB_LISTEN_ADDRESS"),
    ("--web.telemetry-path", "BEENERGISED_WEB_TELEMETRY_PATH"),
    ("--web.config.file", "BEENERGISED_WEB_CONFIG_FILE"),
    ("--log.level", "BEENERGISED_LOG_LEVEL"),
    ("--log.format", "BEENERGISED_LOG_FORMAT"),
    ("--demo", "BEENERGISED_DEMO"),
    ("--collector.station-info", "BEENERGISED_NO_STATION_INFO"),
    ("--firmware.target", "BEENERGISED_TARGET_FIRMWARE"),
    ("--changes.max-entries", "BEENERGISED_CHANGES_MAX_ENTRIES"),
    ("--api.ca-file", "BEENERGISED_API_CA_FILE"),
    ("--refresh.timeout", "BEENERGISED_REFRESH_TIMEOUT"),
    ("--api.request-timeout", "BEENERGISED_API_REQUEST_TIMEOUT"),
    ("--api.max-response-size", "BEENERGISED_API_MAX_RESPONSE_SIZE"),
    ("--api.max-stations", "BEENERGISED_API_MAX_STATIONS"),
    ("--firmware.max-versions", "BEENERGISED_FIRMWARE_MAX_VERSIONS"),
    ("--web.max-requests", "BEENERGISED_WEB_MAX_REQUESTS"),
    ("--web.read-header-timeout", "BEENERGISED_WEB_READ_HEADER_TIMEOUT"),
    ("--web.systemd-socket", "BEENERGISED_WEB_SYSTEMD_SOCKET"),
    ("--web.enable-lifecycle", "BEENERGISED_WEB_ENABLE_LIFECYCLE"),
]


def load(argv: Sequence[str] = (), env: dict[str, str] | None = None) -> Settings:
    return load_settings(list(argv), ENV if env is None else env)


def error(argv: Sequence[str] = (), env: dict[str, str] | None = None) -> str:
    """The message of the ConfigError, checked to be one line without the secret."""
    with pytest.raises(ConfigError) as caught:
        load(argv, env)
    message = str(caught.value)
    assert "\n" not in message
    assert SECRET not in message
    return message


def write(tmp_path: Path, text: str, name: str = "exporter.yml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def secret_file(tmp_path: Path, content: str | bytes = SECRET + "\n", name: str = "secret") -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


# --- Secret and the dataclasses ---------------------------------------------------------------


def test_secret_hides_its_value_everywhere() -> None:
    secret = Secret(SECRET)
    assert str(secret) == "***"
    assert repr(secret) == "***"
    assert f"{secret}" == "***"
    assert f"{secret:>20}" == "***"
    assert "%s %r" % (secret, secret) == "*** ***"  # noqa: UP031 - the old style must hide it too
    assert secret.reveal() == SECRET


def test_secret_compares_and_hashes_by_value() -> None:
    assert Secret(SECRET) == Secret(SECRET)
    assert Secret(SECRET) != Secret("other")
    assert Secret(SECRET) != SECRET
    assert hash(Secret(SECRET)) == hash(Secret(SECRET))
    assert len({Secret(SECRET), Secret(SECRET), Secret("other")}) == 2


def test_mandant_refuses_a_plain_string_secret() -> None:
    with pytest.raises(TypeError) as caught:
        Mandant("m", API_URL, DEFAULT_TOKEN_URL, "abc", SECRET, "basic")  # type: ignore[arg-type]
    assert SECRET not in str(caught.value)


def test_mandant_refuses_an_unknown_auth_method() -> None:
    with pytest.raises(ValueError):
        Mandant("m", API_URL, DEFAULT_TOKEN_URL, "abc", Secret(SECRET), "digest")


def test_settings_are_frozen() -> None:
    settings = load()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.page_limit = 5  # type: ignore[misc]


# --- defaults ---------------------------------------------------------------------------------


def test_defaults_with_one_mandant_from_the_environment() -> None:
    settings = load()
    assert settings == Settings(
        mandants=(
            Mandant(
                name="yourmandant",
                api_url=API_URL,
                token_url=DEFAULT_TOKEN_URL,
                client_id="abc",
                client_secret=Secret(SECRET),
                token_auth_method="basic",
            ),
        ),
        refresh_interval=300.0,
        page_limit=100,
        concurrency=4,
        listen_addresses=(("", DEFAULT_PORT),),
        telemetry_path="/metrics",
        web_config_file=None,
        log_level="info",
        log_format="logfmt",
        demo=False,
        station_info=True,
        changes_max_entries=1000,
        warnings=(),
    )


def test_default_port_is_outside_the_taken_ranges() -> None:
    assert 10027 <= DEFAULT_PORT <= 10999
    assert DEFAULT_PORT not in (10050, 10051)  # Zabbix agent and trapper
    assert TOKEN_AUTH_METHODS == ("basic", "post", "query")


def test_empty_environment_variables_count_as_unset() -> None:
    settings = load(env={**ENV, "BEENERGISED_PAGE_LIMIT": "", "BEENERGISED_LOG_LEVEL": ""})
    assert settings.page_limit == 100
    assert settings.log_level == "info"


# --- precedence: flag > environment > config file > default -----------------------------------


@dataclasses.dataclass
class Case:
    flag: list[str]
    env: tuple[str, str]
    file: str | None  # YAML line, or None when the file has no such setting
    get: Callable[[Settings], object]
    by_flag: object
    by_env: object
    by_file: object
    default: object


PRECEDENCE = {
    "refresh_interval": Case(
        ["--refresh.interval", "2m"],
        ("BEENERGISED_REFRESH_INTERVAL", "3m"),
        "refresh_interval: 4m",
        lambda s: s.refresh_interval,
        120.0,
        180.0,
        240.0,
        300.0,
    ),
    "page_limit": Case(
        ["--api.page-limit", "10"],
        ("BEENERGISED_PAGE_LIMIT", "20"),
        "page_limit: 30",
        lambda s: s.page_limit,
        10,
        20,
        30,
        100,
    ),
    "concurrency": Case(
        ["--api.concurrency", "8"],
        ("BEENERGISED_CONCURRENCY", "2"),
        "concurrency: 6",
        lambda s: s.concurrency,
        8,
        2,
        6,
        4,
    ),
    "token_auth_method": Case(
        ["--api.token-auth-method", "post"],
        ("BEENERGISED_TOKEN_AUTH_METHOD", "query"),
        "token_auth_method: post",
        lambda s: s.mandants[0].token_auth_method,
        "post",
        "query",
        "post",
        "basic",
    ),
    "authorization": Case(
        ["--api.authorization", "raw"],
        ("BEENERGISED_API_AUTHORIZATION", "Bearer"),
        "authorization: raw",
        lambda s: s.mandants[0].authorization,
        "raw",
        "bearer",
        "raw",
        "auto",
    ),
    "firmware_max_versions": Case(
        ["--firmware.max-versions", "7"],
        ("BEENERGISED_FIRMWARE_MAX_VERSIONS", "8"),
        "firmware_max_versions: 9",
        lambda s: s.mandants[0].firmware_max_versions,
        7,
        8,
        9,
        100,
    ),
    "changes_max_entries": Case(
        ["--changes.max-entries", "50"],
        ("BEENERGISED_CHANGES_MAX_ENTRIES", "60"),
        "changes_max_entries: 70",
        lambda s: s.changes_max_entries,
        50,
        60,
        70,
        1000,
    ),
    "target_firmware": Case(
        ["--firmware.target", "5.2.1"],
        ("BEENERGISED_TARGET_FIRMWARE", "/5\\.3\\..*/"),
        None,
        lambda s: s.mandants[0].target_firmware and s.mandants[0].target_firmware.text,
        "5.2.1",
        "/5\\.3\\..*/",
        None,
        None,
    ),
    "station_info": Case(
        ["--no-collector.station-info"],
        ("BEENERGISED_NO_STATION_INFO", "false"),
        "station_info: false",
        lambda s: s.station_info,
        False,
        True,
        False,
        True,
    ),
    "listen_address": Case(
        ["--web.listen-address", "127.0.0.1:9001"],
        ("BEENERGISED_WEB_LISTEN_ADDRESS", ":9002"),
        None,
        lambda s: s.listen_addresses,
        (("127.0.0.1", 9001),),
        (("", 9002),),
        None,
        (("", DEFAULT_PORT),),
    ),
    "telemetry_path": Case(
        ["--web.telemetry-path", "/flag"],
        ("BEENERGISED_WEB_TELEMETRY_PATH", "/env"),
        None,
        lambda s: s.telemetry_path,
        "/flag",
        "/env",
        None,
        "/metrics",
    ),
    "web_config_file": Case(
        ["--web.config.file", "/flag.yml"],
        ("BEENERGISED_WEB_CONFIG_FILE", "/env.yml"),
        None,
        lambda s: s.web_config_file,
        "/flag.yml",
        "/env.yml",
        None,
        None,
    ),
    "log_level": Case(
        ["--log.level", "debug"],
        ("BEENERGISED_LOG_LEVEL", "error"),
        None,
        lambda s: s.log_level,
        "debug",
        "error",
        None,
        "info",
    ),
    "log_format": Case(
        ["--log.format", "json"],
        ("BEENERGISED_LOG_FORMAT", "logfmt"),
        None,
        lambda s: s.log_format,
        "json",
        "logfmt",
        None,
        "logfmt",
    ),
    "token_url": Case(
        ["--api.token-url", "https://flag.example/token"],
        ("BEENERGISED_TOKEN_URL", "https://env.example/token"),
        None,
        lambda s: s.mandants[0].token_url,
        "https://flag.example/token",
        "https://env.example/token",
        None,
        DEFAULT_TOKEN_URL,
    ),
    "client_id": Case(
        ["--api.client-id", "from-flag"],
        ("BEENERGISED_CLIENT_ID", "from-env"),
        None,
        lambda s: s.mandants[0].client_id,
        "from-flag",
        "from-env",
        None,
        None,
    ),
    "api_url": Case(
        ["--api.url", "https://flag.beenergised.cloud"],
        ("BEENERGISED_API_URL", "https://env.beenergised.cloud"),
        None,
        lambda s: (s.mandants[0].name, s.mandants[0].api_url),
        ("flag", "https://flag.beenergised.cloud"),
        ("env", "https://env.beenergised.cloud"),
        None,
        None,
    ),
}


@pytest.mark.parametrize("name", PRECEDENCE)
def test_flag_beats_environment_and_file(name: str, tmp_path: Path) -> None:
    case = PRECEDENCE[name]
    config = write(tmp_path, case.file or "")
    env = {**ENV, case.env[0]: case.env[1]}
    assert case.get(load([*case.flag, "--config.file", str(config)], env)) == case.by_flag


@pytest.mark.parametrize("name", PRECEDENCE)
def test_environment_beats_file(name: str, tmp_path: Path) -> None:
    case = PRECEDENCE[name]
    config = write(tmp_path, case.file or "")
    env = {**ENV, case.env[0]: case.env[1]}
    assert case.get(load(["--config.file", str(config)], env)) == case.by_env


@pytest.mark.parametrize("name", [name for name, case in PRECEDENCE.items() if case.file])
def test_file_beats_default(name: str, tmp_path: Path) -> None:
    case = PRECEDENCE[name]
    config = write(tmp_path, case.file or "")
    assert case.get(load(["--config.file", str(config)])) == case.by_file


@pytest.mark.parametrize("name", [name for name, case in PRECEDENCE.items() if case.default])
def test_default_when_nothing_given(name: str, tmp_path: Path) -> None:
    case = PRECEDENCE[name]
    assert case.get(load()) == case.default


def test_config_file_flag_beats_environment(tmp_path: Path) -> None:
    by_flag = write(tmp_path, "page_limit: 7", "flag.yml")
    by_env = write(tmp_path, "page_limit: 8", "env.yml")
    env = {**ENV, "BEENERGISED_CONFIG_FILE": str(by_env)}
    assert load(["--config.file", str(by_flag)], env).page_limit == 7
    assert load([], env).page_limit == 8


def test_secret_file_flag_beats_secret_in_environment(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "from-file\n")
    settings = load(["--api.client-secret-file", str(path)])
    assert settings.mandants[0].client_secret.reveal() == "from-file"


def test_secret_file_from_environment(tmp_path: Path) -> None:
    path = secret_file(tmp_path)
    env = {**ENV, "BEENERGISED_CLIENT_SECRET_FILE": str(path)}
    del env["BEENERGISED_CLIENT_SECRET"]
    assert load(env=env).mandants[0].client_secret.reveal() == SECRET


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("TRUE", True), ("Yes", True), ("1", True), ("no", False), ("0", False)],
)
def test_booleans_from_the_environment(value: str, expected: bool) -> None:
    settings = load(env={**ENV, "BEENERGISED_NO_STATION_INFO": value})
    assert settings.station_info is not expected


def test_demo_needs_no_mandant() -> None:
    for argv, env in ((["--demo"], {}), ([], {"BEENERGISED_DEMO": "yes"})):
        settings = load(argv, env)
        assert settings.demo is True
        assert settings.mandants == ()
    assert load(env={**ENV, "BEENERGISED_DEMO": "false"}).demo is False


def test_choices_are_case_insensitive() -> None:
    settings = load(
        ["--log.level", "WARN", "--log.format", "JSON", "--api.token-auth-method", "Post"]
    )
    assert (settings.log_level, settings.log_format) == ("warn", "json")
    assert settings.mandants[0].token_auth_method == "post"


# --- durations --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("300", 300.0),
        ("1.5", 1.5),
        (".5", 0.5),
        ("90s", 90.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("500ms", 0.5),
        ("1m500ms", 60.5),
        ("1d", 86400.0),
        ("2w", 14 * 86400.0),
        ("1y", 365 * 86400.0),
        (" 5m ", 300.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "5x", "m", "1m1h", "1.5m", "-5", "nan", "inf", "5 m", "1h 30m", "5M", "\u0665m"]
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_refresh_interval_accepts_a_duration_flag_and_a_number_in_the_file(tmp_path: Path) -> None:
    assert load(["--refresh.interval", "1h30m"]).refresh_interval == 5400.0
    config = write(tmp_path, "refresh_interval: 90")
    assert load(["--config.file", str(config)]).refresh_interval == 90.0


def test_short_refresh_interval_is_accepted_with_a_warning() -> None:
    settings = load(["--refresh.interval", "10s"])
    assert settings.refresh_interval == 10.0
    assert len(settings.warnings) == 1
    assert settings.warnings[0].startswith("--refresh.interval: 10s is below 30s")
    assert load(["--refresh.interval", "30s"]).warnings == ()


# --- listen address ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "host", "port"),
    [
        (":9000", "", 9000),
        ("127.0.0.1:9000", "127.0.0.1", 9000),
        ("localhost:1", "localhost", 1),
        ("exporter.example.org:65535", "exporter.example.org", 65535),
        ("[::1]:9000", "::1", 9000),
        ("[::]:9000", "::", 9000),
        ("127.0.0.1:0", "127.0.0.1", 0),
    ],
)
def test_listen_address_forms(address: str, host: str, port: int) -> None:
    settings = load(["--web.listen-address", address])
    assert settings.listen_addresses == ((host, port),)


def test_listen_address_given_again_listens_on_each() -> None:
    addresses = ("127.0.0.1", 9000), ("::1", 9001), ("", 9002)
    argv = ["--web.listen-address=127.0.0.1:9000", "--web.listen-address", "[::1]:9001"]
    assert load([*argv, "--web.listen-address=:9002"]).listen_addresses == addresses
    env = {**ENV, "BEENERGISED_WEB_LISTEN_ADDRESS": "127.0.0.1:9000, [::1]:9001,:9002"}
    assert load(env=env).listen_addresses == addresses
    assert load(argv, env).listen_addresses == addresses[:2]  # the flags win, all of them
    assert error([*argv, "--web.listen-address=[::1]:9001"]) == (
        "--web.listen-address: '[::1]:9001' given twice; give each address once"
    )
    twice = ["--web.listen-address=127.0.0.1:0"] * 2  # a free port each
    assert load(twice).listen_addresses == (("127.0.0.1", 0), ("127.0.0.1", 0))
    env["BEENERGISED_WEB_LISTEN_ADDRESS"] = "127.0.0.1:9000,"
    assert (
        error(env=env)
        == "BEENERGISED_WEB_LISTEN_ADDRESS: not an address: ''; expected :PORT or HOST:PORT"
    )


def test_systemd_socket_replaces_the_listen_addresses() -> None:
    assert load(["--web.systemd-socket"]).systemd_socket is True
    assert load().systemd_socket is False
    assert error(["--web.systemd-socket", "--web.listen-address=:1"]) == (
        "--web.listen-address: not used with --web.systemd-socket, which listens on the sockets "
        "systemd passes; remove one"
    )
    env = {**ENV, "BEENERGISED_WEB_SYSTEMD_SOCKET": "true", "BEENERGISED_WEB_LISTEN_ADDRESS": ":1"}
    assert error(env=env).startswith(
        "BEENERGISED_WEB_LISTEN_ADDRESS: not used with BEENERGISED_WEB_SYSTEMD_SOCKET"
    )


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("9000", "not an address: '9000'"),
        ("localhost", "not an address: 'localhost'"),
        (":65536", "not a port: '65536'"),
        (":http", "not a port: 'http'"),
        (":\u00b2", "not a port: '\u00b2'"),
        ("host:", "not a port: ''"),
        ("::1:9000", "put the IPv6 address in brackets"),
        ("[::1]", "not an address: '[::1]'"),
        ("[nope]:9000", "not an IPv6 address: 'nope'"),
        ("my host:9000", "not a host name: 'my host'"),
    ],
)
def test_bad_listen_address(address: str, problem: str) -> None:
    assert error(["--web.listen-address", address]).startswith(f"--web.listen-address: {problem}")
    env = {**ENV, "BEENERGISED_WEB_LISTEN_ADDRESS": address}
    assert error(env=env).startswith(f"BEENERGISED_WEB_LISTEN_ADDRESS: {problem}")


# --- validation messages ----------------------------------------------------------------------


@pytest.mark.parametrize("url", ["foo", "ftp://host", "https://", "https://host:99999", "//host"])
def test_bad_api_url_names_flag_or_variable(url: str) -> None:
    assert error(["--api.url", url]).startswith(f"--api.url: not a URL: {url!r}")
    env = {**ENV, "BEENERGISED_API_URL": url}
    assert error(env=env).startswith(f"BEENERGISED_API_URL: not a URL: {url!r}")


def test_bad_token_url() -> None:
    assert error(["--api.token-url", "cognito"]).startswith("--api.token-url: not a URL: 'cognito'")


def test_url_with_credentials_is_refused_without_echoing_them() -> None:
    message = error(["--api.url", f"https://user:{SECRET}@host.example"])
    assert message == "--api.url: must not contain a user name or password"


def test_api_url_loses_trailing_slash_and_http_on_loopback_is_quiet() -> None:
    settings = load(["--api.url", "http://127.0.0.1:8080/"])
    assert settings.mandants[0].api_url == "http://127.0.0.1:8080"
    assert settings.mandants[0].name == "127.0.0.1"
    assert settings.warnings == ()


def test_plain_http_to_a_remote_host_warns() -> None:
    settings = load(["--api.url", "http://north.beenergised.cloud"])
    assert settings.mandants[0].api_url == "http://north.beenergised.cloud"
    assert any(
        "api_url http://north.beenergised.cloud is plain http" in w for w in settings.warnings
    )


def test_query_auth_method_warns_that_the_secret_travels_in_the_url() -> None:
    settings = load(["--api.token-auth-method", "query"])
    assert settings.mandants[0].token_auth_method == "query"
    (warning,) = settings.warnings
    assert "mandant yourmandant" in warning
    assert "URL" in warning
    assert "proxies" in warning
    assert SECRET not in warning


def test_missing_client_id() -> None:
    env = {key: value for key, value in ENV.items() if key != "BEENERGISED_CLIENT_ID"}
    assert error(env=env) == (
        "BEENERGISED_CLIENT_ID (or --api.client-id): missing: the client id of your CPO API token"
    )


def test_missing_client_secret() -> None:
    env = {key: value for key, value in ENV.items() if key != "BEENERGISED_CLIENT_SECRET"}
    assert error(env=env).startswith(
        "BEENERGISED_CLIENT_SECRET_FILE (or --api.client-secret-file, or "
        "BEENERGISED_CLIENT_SECRET): missing: the client secret of your CPO API token"
    )


def test_missing_everything_points_at_the_variables_and_demo() -> None:
    message = error(env={})
    assert message.startswith("BEENERGISED_API_URL (or --api.url): missing:")
    assert "BEENERGISED_CLIENT_ID" in message
    assert "--demo" in message


def test_secret_file_and_secret_variable_together_are_refused(tmp_path: Path) -> None:
    env = {**ENV, "BEENERGISED_CLIENT_SECRET_FILE": str(secret_file(tmp_path))}
    assert error(env=env).startswith(
        "BEENERGISED_CLIENT_SECRET_FILE and BEENERGISED_CLIENT_SECRET: both set"
    )


@pytest.mark.parametrize(
    ("argv", "env", "prefix"),
    [
        (["--refresh.interval", "0"], {}, "--refresh.interval: must be positive, got '0'"),
        (["--refresh.interval", "0s"], {}, "--refresh.interval: must be positive"),
        (["--refresh.interval", "-5"], {}, "--refresh.interval: not a duration: '-5'"),
        ([], {"BEENERGISED_REFRESH_INTERVAL": "soon"}, "BEENERGISED_REFRESH_INTERVAL: not a"),
        (["--api.page-limit", "0"], {}, "--api.page-limit: must be at least 1, got '0'"),
        (["--api.page-limit", "-3"], {}, "--api.page-limit: not an integer: '-3'"),
        (["--api.page-limit", "\u00b2"], {}, "--api.page-limit: not an integer: '\u00b2'"),
        ([], {"BEENERGISED_PAGE_LIMIT": "many"}, "BEENERGISED_PAGE_LIMIT: not an integer: 'many'"),
        (["--log.level", "verbose"], {}, "--log.level: must be one of debug, info, warn, error"),
        ([], {"BEENERGISED_LOG_FORMAT": "xml"}, "BEENERGISED_LOG_FORMAT: must be one of logfmt"),
        (
            ["--api.token-auth-method", "jwt"],
            {},
            "--api.token-auth-method: must be one of basic, post",
        ),
        (["--web.telemetry-path", "metrics"], {}, "--web.telemetry-path: must be a path"),
        ([], {"BEENERGISED_DEMO": "maybe"}, "BEENERGISED_DEMO: not a boolean: 'maybe'"),
        ([], {"BEENERGISED_NO_STATION_INFO": "2"}, "BEENERGISED_NO_STATION_INFO: not a boolean"),
    ],
)
def test_bad_values_name_the_setting(argv: list[str], env: dict[str, str], prefix: str) -> None:
    assert error(argv, {**ENV, **env}).startswith(prefix)


def test_secret_on_the_command_line_is_refused_without_echoing_it() -> None:
    for argv in (["--client-secret", SECRET], [f"--client-secret={SECRET}"]):
        assert error(argv).startswith("--client-secret: not supported")


def test_unknown_flag_is_a_config_error() -> None:
    assert error(["--bogus"]) == "unrecognized arguments: --bogus (see --help)"
    assert error(["--api.page-limit"]) == "--api.page-limit: expected one argument (see --help)"


def test_abbreviated_flags_are_refused_and_their_values_not_echoed() -> None:
    assert error(["--page", "5"]) == "unrecognized arguments: --page (see --help)"
    assert error(["--client-sec", SECRET]) == "unrecognized arguments: --client-sec (see --help)"
    assert error([SECRET]) == "unrecognized arguments: values that belong to no flag (see --help)"


@pytest.mark.parametrize(
    ("argv", "env", "offender"),
    [
        (["--demo", "--api.url", API_URL], {}, "--api.url"),
        (["--demo"], {"BEENERGISED_API_URL": API_URL}, "BEENERGISED_API_URL"),
        (["--demo"], {"BEENERGISED_CLIENT_SECRET": SECRET}, "BEENERGISED_CLIENT_SECRET"),
        ([], {"BEENERGISED_DEMO": "1", "BEENERGISED_CLIENT_ID": "abc"}, "BEENERGISED_CLIENT_ID"),
    ],
)
def test_demo_with_mandant_settings_is_refused(
    argv: list[str], env: dict[str, str], offender: str
) -> None:
    demo = "--demo" if "--demo" in argv else "BEENERGISED_DEMO"
    assert error(argv, env).startswith(
        f"{demo} runs against the built-in simulator; remove {offender}"
    )


def test_demo_with_config_file_mandants_is_refused(tmp_path: Path) -> None:
    config = write(tmp_path, f"mandants:\n  - api_url: {API_URL}\n    client_id: a\n")
    message = error(["--demo", "--config.file", str(config)], {})
    assert message.startswith(
        f"--demo runs against the built-in simulator; remove mandants: from {config}"
    )


# --- secret files -----------------------------------------------------------------------------


@pytest.mark.parametrize("content", [SECRET, SECRET + "\n", SECRET + "\r\n", SECRET + " \n\n"])
def test_secret_file_loses_trailing_whitespace(content: str, tmp_path: Path) -> None:
    path = secret_file(tmp_path, content)
    assert (
        load(["--api.client-secret-file", str(path)]).mandants[0].client_secret.reveal() == SECRET
    )


def test_unreadable_secret_file_names_setting_and_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    message = error(["--api.client-secret-file", str(missing)])
    assert (
        message
        == f"--api.client-secret-file: cannot read {str(missing)!r}: No such file or directory"
    )
    env = {**ENV, "BEENERGISED_CLIENT_SECRET_FILE": str(missing)}
    del env["BEENERGISED_CLIENT_SECRET"]
    assert error(env=env).startswith(
        f"BEENERGISED_CLIENT_SECRET_FILE: cannot read {str(missing)!r}"
    )


def test_empty_secret_file_is_refused(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "\n")
    assert (
        error(["--api.client-secret-file", str(path)])
        == f"--api.client-secret-file: {str(path)!r} is empty"
    )


def test_secret_file_that_is_not_text_is_refused_without_its_bytes(tmp_path: Path) -> None:
    path = secret_file(tmp_path, SECRET.encode() + b"\xff\xfe")
    assert error(["--api.client-secret-file", str(path)]).endswith("is not UTF-8 text")


def test_secret_file_that_is_a_directory(tmp_path: Path) -> None:
    assert error(["--api.client-secret-file", str(tmp_path)]).startswith(
        f"--api.client-secret-file: cannot read {str(tmp_path)!r}"
    )


# --- the YAML config file ---------------------------------------------------------------------

MULTI = """\
refresh_interval: 2m
page_limit: 50
token_auth_method: post
station_info: false
mandants:
  - name: north
    api_url: https://north.beenergised.cloud/
    client_id: id-north
    client_secret_file: secrets/north
  - api_url: https://south.beenergised.cloud
    client_id: id-south
    client_secret: "{secret}"
    token_url: https://auth.example/token
    token_auth_method: basic
"""


def multi_config(tmp_path: Path) -> Path:
    (tmp_path / "secrets").mkdir()
    secret_file(tmp_path / "secrets", "north-secret\n", "north")
    return write(tmp_path, MULTI.format(secret=SECRET))


def test_multi_mandant_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = multi_config(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the relative secret path must not depend on the cwd
    settings = load(["--config.file", str(config)], {})
    assert settings.mandants == (
        Mandant(
            name="north",
            api_url="https://north.beenergised.cloud",
            token_url=DEFAULT_TOKEN_URL,
            client_id="id-north",
            client_secret=Secret("north-secret"),
            token_auth_method="post",
        ),
        Mandant(
            name="south",
            api_url="https://south.beenergised.cloud",
            token_url="https://auth.example/token",
            client_id="id-south",
            client_secret=Secret(SECRET),
            token_auth_method="basic",
        ),
    )
    assert (settings.refresh_interval, settings.page_limit) == (120.0, 50)
    assert settings.station_info is False


def test_environment_overrides_file_globals_but_not_per_mandant_values(tmp_path: Path) -> None:
    config = multi_config(tmp_path)
    env = {"BEENERGISED_TOKEN_AUTH_METHOD": "query", "BEENERGISED_PAGE_LIMIT": "5"}
    settings = load(["--config.file", str(config)], env)
    assert [m.token_auth_method for m in settings.mandants] == ["query", "basic"]
    assert settings.page_limit == 5
    assert [w for w in settings.warnings if "query" in w] == [
        w for w in settings.warnings if w.startswith("mandant north:")
    ]


def test_absolute_secret_path_in_config_file(tmp_path: Path) -> None:
    path = secret_file(tmp_path)
    config = write(
        tmp_path,
        f"mandants:\n  - api_url: {API_URL}\n    client_id: a\n    client_secret_file: {path}\n",
    )
    assert load(["--config.file", str(config)], {}).mandants[0].client_secret.reveal() == SECRET


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("https://yourmandant.beenergised.cloud", "yourmandant"),
        ("https://north.beenergised.cloud/api", "north"),
        ("http://localhost:8080", "localhost"),
        ("http://127.0.0.1:8080", "127.0.0.1"),
        ("http://[::1]:8080", "::1"),
    ],
)
def test_default_mandant_name_from_host(url: str, name: str, tmp_path: Path) -> None:
    config = write(
        tmp_path, f"mandants:\n  - api_url: '{url}'\n    client_id: a\n    client_secret: b\n"
    )
    assert load(["--config.file", str(config)], {}).mandants[0].name == name
    assert load(["--api.url", url]).mandants[0].name == name


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    entry = (
        "  - name: north\n    api_url: https://{}.beenergised.cloud\n"
        "    client_id: a\n    client_secret: b\n"
    )
    config = write(tmp_path, "mandants:\n" + entry.format("one") + entry.format("two"))
    assert error(["--config.file", str(config)], {}) == (
        f"{config}: mandants[1].name: duplicate mandant name 'north', also used by mandants[0]; "
        "names must be unique"
    )


def test_duplicate_names_from_hosts_are_refused(tmp_path: Path) -> None:
    entry = f"  - api_url: {API_URL}\n    client_id: a\n    client_secret: b\n"
    config = write(tmp_path, "mandants:\n" + entry + entry)
    assert error(["--config.file", str(config)], {}).startswith(
        f"{config}: mandants[1]: duplicate mandant name 'yourmandant' (taken from api_url)"
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("refresh_intervall: 5m", ": unknown key 'refresh_intervall'"),
        ("listen_address: ':1'", ": unknown key 'listen_address'"),
        (
            f"mandants:\n  - api_ulr: {API_URL}\n    client_id: a\n    client_secret: b\n",
            ": mandants[0]: unknown key 'api_ulr'",
        ),
        ("- a\n- b\n", ": expected a mapping of settings, got list"),
        ("mandants: []", ": mandants: expected a non-empty list of mandants"),
        ("mandants:", ": mandants: expected a non-empty list of mandants"),
        ("mandants:\n  - just-a-string\n", ": mandants[0]: expected a mapping, got str"),
        (
            "mandants:\n  - api_url: foo\n    client_id: a\n    client_secret: b\n",
            ": mandants[0].api_url: not a URL: 'foo'",
        ),
        (
            f"mandants:\n  - api_url: {API_URL}\n    client_secret: b\n",
            ": mandants[0].client_id: missing: the client id of your CPO API token",
        ),
        (
            "mandants:\n  - client_id: a\n    client_secret: b\n",
            ": mandants[0].api_url: missing:",
        ),
        (
            f"mandants:\n  - api_url: {API_URL}\n    client_id: a\n",
            ": mandants[0].client_secret_file (or client_secret): missing:",
        ),
        (
            f"mandants:\n  - api_url: {API_URL}\n    client_id: a\n    client_secret: b\n"
            "    client_secret_file: c\n",
            ": mandants[0]: give exactly one of client_secret and client_secret_file",
        ),
        (
            f"mandants:\n  - api_url: {API_URL}\n    client_id: 12345\n    client_secret: b\n",
            ": mandants[0].client_id: expected a string, got int (put it in quotes)",
        ),
        (
            f"mandants:\n  - api_url: {API_URL}\n    client_id: a\n    client_secret: b\n"
            "    token_auth_method: digest\n",
            ": mandants[0].token_auth_method: must be one of basic, post, query",
        ),
        (
            f"mandants:\n  - api_url: {API_URL}\n    client_id: a\n    client_secret: b\n"
            "    token_url: nowhere\n",
            ": mandants[0].token_url: not a URL: 'nowhere'",
        ),
        (
            f"mandants:\n  - name: ''\n    api_url: {API_URL}\n    client_id: a\n"
            "    client_secret: b\n",
            ": mandants[0].name: the mandant name must not be empty",
        ),
        ("refresh_interval: 0", ": refresh_interval: must be positive, got 0"),
        ("refresh_interval: true", ": refresh_interval: not a duration: True"),
        ("page_limit: 1.5", ": page_limit: not an integer: 1.5"),
        ("page_limit: 0", ": page_limit: must be at least 1, got 0"),
        ("page_limit: [1]", ": page_limit: not an integer: [1]"),
        ("refresh_interval: [1]", ": refresh_interval: not a duration: [1]"),
        ("token_auth_method: 1", ": token_auth_method: must be one of basic, post, query, got 1"),
        ("station_info: maybe", ": station_info: not a boolean: 'maybe'"),
        ("token_auth_method: jwt", ": token_auth_method: must be one of basic, post, query"),
        ("page_limit: [1", ": not valid YAML: line 1, column"),
    ],
)
def test_config_file_errors_name_the_location(text: str, problem: str, tmp_path: Path) -> None:
    config = write(tmp_path, text)
    env = {} if "mandants" in text else ENV
    assert error(["--config.file", str(config)], env).startswith(f"{config}{problem}")


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yml"
    assert error(["--config.file", str(missing)]) == (
        f"--config.file: cannot read {str(missing)!r}: No such file or directory"
    )
    env = {**ENV, "BEENERGISED_CONFIG_FILE": str(missing)}
    assert error(env=env).startswith("BEENERGISED_CONFIG_FILE: cannot read")


def test_empty_config_file_is_fine(tmp_path: Path) -> None:
    assert load(["--config.file", str(write(tmp_path, ""))]).page_limit == 100


def test_relative_secret_file_in_config_that_is_missing_names_the_resolved_path(
    tmp_path: Path,
) -> None:
    config = write(
        tmp_path,
        f"mandants:\n  - api_url: {API_URL}\n    client_id: a\n    client_secret_file: s/gone\n",
    )
    assert error(["--config.file", str(config)], {}).startswith(
        f"{config}: mandants[0].client_secret_file: cannot read {str(tmp_path / 's/gone')!r}"
    )


def test_secret_given_as_its_file_name_is_not_printed() -> None:
    env = {**ENV, "BEENERGISED_CLIENT_SECRET_FILE": SECRET}
    del env["BEENERGISED_CLIENT_SECRET"]
    assert error(env=env).startswith(
        "BEENERGISED_CLIENT_SECRET_FILE: cannot read the file named there: No such file"
    )


@pytest.mark.parametrize(
    ("argv", "env", "offender"),
    [
        (["--api.url", API_URL], {}, "--api.url"),
        ([], {"BEENERGISED_API_URL": API_URL}, "BEENERGISED_API_URL"),
        (["--api.client-id", "a"], {}, "--api.client-id"),
        ([], {"BEENERGISED_CLIENT_SECRET": SECRET}, "BEENERGISED_CLIENT_SECRET"),
        ([], {"BEENERGISED_TOKEN_URL": "https://auth.example"}, "BEENERGISED_TOKEN_URL"),
    ],
)
def test_config_mandants_and_single_mandant_settings_conflict(
    argv: list[str], env: dict[str, str], offender: str, tmp_path: Path
) -> None:
    config = multi_config(tmp_path)
    assert error([*argv, "--config.file", str(config)], env).startswith(
        f"{offender}: {config} also lists mandants; choose one"
    )


def test_target_firmware_per_mandant_in_the_config_file(tmp_path: Path) -> None:
    path = secret_file(tmp_path)
    entry = f"  - api_url: {{url}}\n    client_id: a\n    client_secret_file: {path}\n"
    config = write(
        tmp_path,
        "mandants:\n"
        + entry.format(url="https://north.example")
        + "    target_firmware: '/5\\.2\\..*/'\n"
        + entry.format(url="https://south.example")
        + "    target_firmware: 2.4.1-b\n"
        + entry.format(url="https://east.example"),
    )
    north, south, east = load(["--config.file", str(config)], {}).mandants
    assert north.target_firmware is not None and north.target_firmware.matches("5.2.10")
    assert south.target_firmware is not None and south.target_firmware.text == "2.4.1-b"
    assert east.target_firmware is None


@pytest.mark.parametrize(
    ("key", "top", "own", "flag", "given", "field"),
    [
        (
            "firmware_max_versions",
            "20",
            "500",
            "--firmware.max-versions",
            3,
            "firmware_max_versions",
        ),
        ("authorization", "bearer", "raw", "--api.authorization", "auto", "authorization"),
    ],
)
def test_a_per_mandant_key_of_the_config_file(
    tmp_path: Path, key: str, top: str, own: str, flag: str, given: object, field: str
) -> None:
    """A mandant's own value wins over the file's top level; a flag replaces the top level
    only, not what a mandant sets itself."""
    path = secret_file(tmp_path)
    entry = f"  - api_url: {{url}}\n    client_id: a\n    client_secret_file: {path}\n"
    config = write(
        tmp_path,
        f"{key}: {top}\nmandants:\n"
        + entry.format(url="https://north.example")
        + f"    {key}: {own}\n"
        + entry.format(url="https://south.example"),
    )
    north, south = load(["--config.file", str(config)], {}).mandants
    assert (str(getattr(north, field)), str(getattr(south, field))) == (own, top)
    flagged = load([flag, str(given), "--config.file", str(config)], {}).mandants
    assert [getattr(m, field) for m in flagged] == [type(given)(own), given]


def test_authorization_must_be_one_of_the_forms() -> None:
    assert error(["--api.authorization", "basic"]) == (
        "--api.authorization: must be one of auto, bearer, raw, got 'basic'"
    )


@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_firmware_max_versions_must_be_a_positive_number(value: str) -> None:
    assert error(["--firmware.max-versions", value]).startswith("--firmware.max-versions: ")


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("'/5.(2/'", "mandants[0].target_firmware: not a regular expression: '/5.(2/'"),
        ("''", "mandants[0].target_firmware: empty; give a version"),
        (
            "5.2",
            "mandants[0].target_firmware: expected a string, got 5.2; put the version in quotes",
        ),
    ],
)
def test_bad_target_firmware_in_the_file_names_the_field(
    target: str, message: str, tmp_path: Path
) -> None:
    path = secret_file(tmp_path)
    config = write(
        tmp_path,
        f"mandants:\n  - api_url: {API_URL}\n    client_id: a\n    client_secret_file: {path}\n"
        f"    target_firmware: {target}\n",
    )
    assert message in error(["--config.file", str(config)], {})


def test_bad_target_firmware_flag_names_the_flag() -> None:
    assert error(["--firmware.target", "/[/"]).startswith(
        "--firmware.target: not a regular expression: '/[/'"
    )


def test_target_firmware_with_file_mandants_conflicts(tmp_path: Path) -> None:
    config = multi_config(tmp_path)
    assert error(["--config.file", str(config)], {"BEENERGISED_TARGET_FIRMWARE": "1.0"}).startswith(
        f"BEENERGISED_TARGET_FIRMWARE: {config} also lists mandants; choose one"
    )


@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_changes_max_entries_must_be_a_positive_integer(value: str) -> None:
    assert error(["--changes.max-entries", value]).startswith("--changes.max-entries: ")


# --- the secret never shows -------------------------------------------------------------------


def test_secret_absent_from_settings_reprs(tmp_path: Path) -> None:
    settings = load(["--config.file", str(multi_config(tmp_path))], {})
    assert settings.mandants[1].client_secret.reveal() == SECRET
    for text in (repr(settings), str(settings), f"{settings}", repr(settings.mandants)):
        assert SECRET not in text
        assert "***" in text
    assert all(SECRET not in w for w in load(["--api.token-auth-method", "query"]).warnings)


def test_secret_absent_from_every_provoked_error(tmp_path: Path) -> None:
    secret_path = secret_file(tmp_path, SECRET + "\xff")
    bad_yaml = write(
        tmp_path, f"mandants:\n  - client_secret: {SECRET}\n    api_url: [x\n", "a.yml"
    )
    int_secret = write(
        tmp_path,
        f"mandants:\n  - api_url: {API_URL}\n    client_id: a\n    client_secret: 7\n",
        "b.yml",
    )
    scenarios: list[tuple[list[str], dict[str, str]]] = [
        (["--api.url", "foo"], ENV),
        (["--demo"], ENV),
        (["--api.page-limit", "x"], ENV),
        (["--client-secret", SECRET], ENV),
        ([f"--client-secret={SECRET}"], ENV),
        (["--api.client-secret-file", SECRET], ENV),
        (["--api.client-secret-file", str(tmp_path)], ENV),
        (["--config.file", str(bad_yaml)], {}),
        (["--config.file", str(int_secret)], {}),
        ([], {**ENV, "BEENERGISED_CLIENT_SECRET_FILE": str(secret_path)}),
        ([], {**ENV, "BEENERGISED_API_URL": f"https://u:{SECRET}@h"}),
        ([], {**ENV, "BEENERGISED_CLIENT_ID": ""}),
    ]
    for argv, env in scenarios:
        with pytest.raises(ConfigError) as caught:
            load(argv, env)
        assert SECRET not in str(caught.value), argv
        assert SECRET not in repr(caught.value), argv


# --- the flags of 0.1 -------------------------------------------------------------------------

OLD_FLAG_VALUES = {
    "api.url": "https://flag.beenergised.cloud",
    "api.token-url": "https://flag.example/token",
    "api.client-id": "from-flag",
    "api.client-secret-file": "SECRET FILE",
    "api.token-auth-method": "post",
    "firmware.target": "/5\\.2\\..*/",
    "refresh.interval": "2m",
    "api.page-limit": "7",
    "api.concurrency": "3",
    "collector.station-info": None,  # the switch; its old name is the --no- form
}


@pytest.mark.parametrize("name", OLD_FLAG_VALUES)
def test_a_flag_of_0_1_works_as_its_new_name_with_one_warning(name: str, tmp_path: Path) -> None:
    option = OPTION[name]
    assert option.old_flag is not None and option.new_flag is not None
    value = OLD_FLAG_VALUES[name]
    if value == "SECRET FILE":
        value = str(secret_file(tmp_path, "another-Secret-9\n"))
    given = [] if value is None else [value]
    env = {"BEENERGISED_CLIENT_SECRET": SECRET}  # the mandant's other settings as flags
    basics = ["--api.url", API_URL, "--api.client-id", "abc"]
    new = load([*basics, option.new_flag, *given], env)
    old = load([*basics, option.old_flag, *given], env)
    assert new != load(basics, env), "the value must differ from the default to prove it"
    warning = (
        f"{option.old_flag} is deprecated and will be removed in a later release; "
        f"use {option.new_flag}"
    )
    assert old.warnings == (warning, *new.warnings)
    assert dataclasses.replace(old, warnings=()) == dataclasses.replace(new, warnings=())
    twice = load([*basics, option.old_flag, *given, option.old_flag, *given], env)
    assert twice.warnings.count(warning) == 1


def test_a_message_names_a_flag_of_0_1_as_it_was_given() -> None:
    assert error(["--page-limit", "0"]) == "--page-limit: must be at least 1, got '0'"
    assert error(["--api.page-limit", "0"]) == "--api.page-limit: must be at least 1, got '0'"
    assert load(["--refresh-interval=10s"]).warnings[1].startswith("--refresh-interval: 10s is")


def test_the_environment_and_the_file_of_0_1_need_no_change(tmp_path: Path) -> None:
    """BEENERGISED_NO_STATION_INFO says "no" and station_info says "yes", as in 0.1."""
    assert load(env={**ENV, "BEENERGISED_NO_STATION_INFO": "true"}).station_info is False
    assert load(env={**ENV, "BEENERGISED_NO_STATION_INFO": "false"}).station_info is True
    config = write(tmp_path, "station_info: false\n")
    assert load([f"--config.file={config}"]).station_info is False
    assert load([f"--config.file={config}", "--collector.station-info"]).station_info is True
    assert load(["--no-collector.station-info"]).station_info is False
    assert load(["--collector.station-info", "--no-collector.station-info"]).station_info is False


# --- help -------------------------------------------------------------------------------------


def help_blocks(text: str) -> dict[str, str]:
    """Each option's help in ``--help`` output, keyed by its first flag, on one line."""
    blocks: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        start = re.match(r"  (-[^\s,]+)", line)
        if start:
            current = start[1]
            blocks[current] = line.strip()
        elif current and line.startswith("   "):
            blocks[current] += " " + line.strip()
        else:
            current = None
    return blocks


def test_help_lists_every_flag_with_its_variable_and_default() -> None:
    text = build_parser().format_help()
    blocks = help_blocks(text)
    for flag, env in FLAGS_AND_ENV:
        assert f"env {env}" in blocks[flag], flag
        assert re.search(r"default|required", blocks[flag]), flag
    assert f"default :{DEFAULT_PORT}" in blocks["--web.listen-address"]
    assert f"default {DEFAULT_TOKEN_URL}" in blocks["--api.token-url"]
    assert "env BEENERGISED_CLIENT_SECRET;" in blocks["--api.client-secret-file"]
    assert set(blocks) == {"-h", "--version", *(flag for flag, _ in FLAGS_AND_ENV)}


def test_help_flag_prints_help_and_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        load_settings(["--help"], {})
    assert caught.value.code == 0
    assert "BEENERGISED_API_URL" in capsys.readouterr().out


def test_help_points_new_users_at_the_check_subcommand() -> None:
    assert '"beenergised-exporter check"' in build_parser().format_help()


# --- values never echoed, repeated YAML keys, CA files (issue 11) ---


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([f"--client_secret={SECRET}"], "--client_secret: not supported: the client secret has"),
        ([f"--CLIENT-SECRET={SECRET}"], "--CLIENT-SECRET: not supported"),
        ([f"--client_id={SECRET}"], "unrecognized arguments: --client_id; did you mean --api.cli"),
        ([f"--api_url={SECRET}"], "unrecognized arguments: --api_url; did you mean --api.url?"),
        ([f"--api.client-secret={SECRET}"], "--api.client-secret: not supported: the client"),
        ([f"--bogus={SECRET}"], "unrecognized arguments: --bogus (see --help)"),
        ([SECRET], "unrecognized arguments: values that belong to no flag"),
        ([f"-{SECRET}"], "unrecognized arguments: values that belong to no flag"),
        ([f"--demo={SECRET}"], "--demo: ignored explicit argument (the value is not shown)"),
        (
            [f"--no-collector.station-info={SECRET}"],
            "--collector.station-info/--no-collector.station-info: ignored explicit argument (the",
        ),
        ([f"--no-station-info={SECRET}"], "--no-station-info: ignored explicit argument (the"),
    ],
)
def test_argparse_messages_never_echo_a_value(argv: list[str], expected: str) -> None:
    assert error(argv).startswith(expected)


def test_a_repeated_key_in_the_config_file_is_an_error_naming_key_and_line(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        f"""\
refresh_interval: 60
mandants:
  - api_url: https://north.example.test
    client_id: north
    client_secret: "{SECRET}"
    client_secret: "{SECRET}-other"
""",
    )
    assert error([f"--config.file={config}"], {}) == (
        f"{config}: not valid YAML: line 6, column 5: duplicate key 'client_secret' "
        "(first on line 5); give each key once"
    )
    config.write_text(config.read_text() + "refresh_interval: 30\n")
    assert error([f"--config.file={config}"], {}).endswith(
        "line 7, column 1: duplicate key 'refresh_interval' (first on line 1); give each key once"
    )


def test_yaml_merge_keys_may_still_override(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        f"""\
base: &base
  client_id: shared
  client_secret: "{SECRET}"
  api_url: https://base.example.test
mandants:
  - <<: *base
    api_url: https://north.example.test
""",
    )
    # "base" is no known key: the loader got past the merge and the override.
    assert "unknown key 'base'" in error([f"--config.file={config}"], {})


def ca_pem(tmp_path: Path) -> Path:
    trustme = pytest.importorskip("trustme")
    path = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return path


def test_ca_file_from_flag_environment_and_file(tmp_path: Path) -> None:
    ca = ca_pem(tmp_path)
    assert load([f"--api.ca-file={ca}"]).mandants[0].ca_file == str(ca)
    assert load([], {**ENV, "BEENERGISED_API_CA_FILE": str(ca)}).mandants[0].ca_file == str(ca)
    config = write(
        tmp_path,
        f"""\
mandants:
  - api_url: https://north.example.test
    client_id: north
    client_secret: "{SECRET}"
    ca_file: ca.pem
  - api_url: https://south.example.test
    client_id: south
    client_secret: "{SECRET}"
""",
    )
    north, south = load([f"--config.file={config}"], {}).mandants
    assert north.ca_file == str(ca)  # relative to the config file
    assert south.ca_file is None
    _, south = load([f"--config.file={config}"], {"REQUESTS_CA_BUNDLE": str(ca)}).mandants
    assert south.ca_file == str(ca)
    assert load([], ENV).mandants[0].ca_file is None


@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
def test_a_ca_bundle_variable_naming_a_missing_file_is_a_config_error(variable: str) -> None:
    assert error([], {**ENV, variable: "/nonexistent/ca.pem"}) == (
        f"{variable}: cannot read '/nonexistent/ca.pem': No such file or directory; give the "
        "PEM file of the CA certificate that signed the server's certificate (of the private "
        "CA or the TLS-inspecting proxy)"
    )


def test_a_ca_bundle_variable_may_name_a_directory(tmp_path: Path) -> None:
    env = {**ENV, "REQUESTS_CA_BUNDLE": str(tmp_path)}
    assert load([], env).mandants[0].ca_file == str(tmp_path)
    message = error([f"--api.ca-file={tmp_path}"])
    assert message.startswith(f"--api.ca-file: cannot read '{tmp_path}'")


def test_bad_ca_files_name_the_setting(tmp_path: Path) -> None:
    not_pem = tmp_path / "ca.der"
    not_pem.write_bytes(b"\x30\x82 not a PEM file")
    assert error([f"--api.ca-file={not_pem}"]).startswith(
        f"--api.ca-file: '{not_pem}' holds no PEM certificate"
    )
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    assert error([], {**ENV, "BEENERGISED_API_CA_FILE": str(broken)}).startswith(
        f"BEENERGISED_API_CA_FILE: '{broken}' is not a usable PEM certificate bundle"
    )
    config = write(
        tmp_path,
        f"""\
mandants:
  - api_url: https://north.example.test
    client_id: north
    client_secret: "{SECRET}"
    ca_file: missing.pem
""",
    )
    assert error([f"--config.file={config}"], {}).startswith(
        f"{config}: mandants[0].ca_file: cannot read '{tmp_path / 'missing.pem'}'"
    )


def test_the_ca_file_flag_is_a_mandant_setting(tmp_path: Path) -> None:
    ca = ca_pem(tmp_path)
    config = write(
        tmp_path,
        f"""\
mandants:
  - api_url: https://north.example.test
    client_id: north
    client_secret: "{SECRET}"
""",
    )
    assert error([f"--config.file={config}", f"--api.ca-file={ca}"], {}).startswith(
        f"--api.ca-file: {config} also lists mandants"
    )


# --- time and size bounds ---------------------------------------------------------------------


def test_time_and_size_bounds_have_defaults_independent_of_the_interval() -> None:
    settings = load(["--refresh.interval=30s"])
    assert settings.refresh_timeout == 600.0
    assert settings.request_timeout == 30.0
    assert settings.max_response_size == 8 * 1024 * 1024
    assert settings.max_stations == 1_000_000
    assert (settings.web_max_requests, settings.web_read_header_timeout) == (40, 10.0)


def test_the_web_server_limits_from_flags_and_environment() -> None:
    settings = load(["--web.max-requests=5", "--web.read-header-timeout=2500ms"])
    assert (settings.web_max_requests, settings.web_read_header_timeout) == (5, 2.5)
    env = ENV | {"BEENERGISED_WEB_MAX_REQUESTS": "100", "BEENERGISED_WEB_READ_HEADER_TIMEOUT": "1m"}
    settings = load([], env)
    assert (settings.web_max_requests, settings.web_read_header_timeout) == (100, 60.0)


def test_the_web_server_defaults_are_the_servers() -> None:
    from exporter.webserver import DEFAULT_LIMITS

    settings = load()
    assert DEFAULT_LIMITS.max_requests == settings.web_max_requests
    assert DEFAULT_LIMITS.header_timeout == settings.web_read_header_timeout


def test_max_stations_from_flag_environment_and_file(tmp_path: Path) -> None:
    assert load(["--api.max-stations=2000000"]).max_stations == 2_000_000
    assert load([], ENV | {"BEENERGISED_API_MAX_STATIONS": "50"}).max_stations == 50
    config = tmp_path / "exporter.yml"
    config.write_text("api_max_stations: 3000000\n")
    assert load([f"--config.file={config}"]).max_stations == 3_000_000
    assert error(["--api.max-stations=0"]) == "--api.max-stations: must be at least 1, got '0'"


def test_time_and_size_bounds_from_flags_environment_and_file(tmp_path: Path) -> None:
    settings = load(
        ["--refresh.timeout=1m30s", "--api.request-timeout=2.5", "--api.max-response-size=512KiB"]
    )
    assert (settings.refresh_timeout, settings.request_timeout) == (90.0, 2.5)
    assert settings.max_response_size == 512 * 1024
    env = ENV | {"BEENERGISED_REFRESH_TIMEOUT": "20m", "BEENERGISED_API_MAX_RESPONSE_SIZE": "2MB"}
    settings = load([], env)
    assert (settings.refresh_timeout, settings.max_response_size) == (1200.0, 2_000_000)
    config = tmp_path / "exporter.yml"
    config.write_text("api_request_timeout: 5s\napi_max_response_size: 1000\n")
    settings = load([f"--config.file={config}"])
    assert (settings.request_timeout, settings.max_response_size) == (5.0, 1000)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--api.max-response-size=8 megs"], "--api.max-response-size: not a size: '8 megs'"),
        (["--api.max-response-size=0"], "--api.max-response-size: must be at least 1 byte"),
        (["--api.max-response-size=-5"], "--api.max-response-size: not a size"),
        (["--api.request-timeout=0"], "--api.request-timeout: must be positive"),
        (["--refresh.timeout=soon"], "--refresh.timeout: not a duration"),
        (["--web.max-requests=0"], "--web.max-requests: "),
        (["--web.max-requests=many"], "--web.max-requests: "),
        (["--web.read-header-timeout=0s"], "--web.read-header-timeout: must be positive"),
    ],
)
def test_bad_time_and_size_bounds_name_the_setting(argv: list[str], message: str) -> None:
    assert error(argv).startswith(message)
