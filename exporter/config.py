"""Settings and one Mandant per tenant, validated once at start-up.

Every setting is taken from the first place that has it: command-line flag, then environment
variable, then the YAML config file (``--config.file``), then the default. The settings
themselves, with their flags, variables, file keys, parsers and defaults, are the table
:data:`exporter.options.OPTIONS`; this module looks them up by that precedence and builds one
Mandant from one mapping of raw values, whether they came from flags and environment or from
an entry of the config file. Every problem raises :class:`~exporter.errors.ConfigError` with a
one-line message that starts with the setting as the user gave it (flag, variable or file
location). Client secrets are read here and nowhere else, and live only inside
:class:`Secret`, which never shows its value.
"""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from exporter.commandline import GIVEN_AS, build_parser, deprecation_warnings, reject_secret_flag
from exporter.errors import ConfigError
from exporter.model import Mandant, Secret, clean_secret
from exporter.options import (
    DEFAULT_MAX_RESPONSE_SIZE,
    DEFAULT_MAX_STATIONS,
    DEFAULT_REFRESH_TIMEOUT,
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_WEB_MAX_REQUESTS,
    DEFAULT_WEB_READ_HEADER_TIMEOUT,
    FILE_GLOBAL_KEYS,
    FILE_MANDANT_KEYS,
    GLOBAL_OPTIONS,
    MANDANT_OPTIONS,
    OPTION,
    Option,
    Scope,
)
from exporter.values import Given, boolean, ca_file, is_loopback, secret_path, text, url
from exporter.yamlfile import load_yaml_file, yaml_problem

SHORT_REFRESH_INTERVAL = 30.0
_MISSING = {
    "api_url": "the base URL of your mandant, e.g. https://yourmandant.beenergised.cloud",
    "client_id": "the client id of your CPO API token",
    "client_secret_file": "the client secret of your CPO API token",
}
_NO_MANDANT_HINT = (
    "; set it with BEENERGISED_CLIENT_ID and BEENERGISED_CLIENT_SECRET_FILE (or the flags), list "
    "mandants in --config.file, or pass --demo to try it out"
)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the exporter needs to run, validated."""

    mandants: tuple[Mandant, ...]  # empty only in demo mode
    refresh_interval: float  # seconds, > 0
    page_limit: int  # >= 1
    concurrency: int  # >= 1: pages fetched at once per mandant
    listen_addresses: tuple[tuple[str, int], ...]  # (host, port); host "" means every one
    telemetry_path: str  # starts with "/"
    web_config_file: str | None  # exporter-toolkit web config; read by exporter.webconfig
    log_level: str  # debug|info|warn|error
    log_format: str  # logfmt|json
    demo: bool
    station_info: bool  # False with --no-collector.station-info
    changes_max_entries: int  # size of the station changes' ring
    warnings: tuple[str, ...]  # messages the CLI logs at WARN once logging is up
    refresh_timeout: float = DEFAULT_REFRESH_TIMEOUT  # seconds one refresh may take, > 0
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT  # wall-clock seconds per request, > 0
    max_response_size: int = DEFAULT_MAX_RESPONSE_SIZE  # bytes per answer, >= 1
    max_stations: int = DEFAULT_MAX_STATIONS  # rows one read of a listing may hold, >= 1
    web_max_requests: int = DEFAULT_WEB_MAX_REQUESTS  # requests answered at once, >= 1
    web_read_header_timeout: float = DEFAULT_WEB_READ_HEADER_TIMEOUT  # seconds to a whole head
    systemd_socket: bool = False  # listen on the sockets systemd passes, not listen_addresses
    web_enable_lifecycle: bool = False  # POST /-/reload reloads


def _read_secret_file(given: Given, path: Path) -> Secret:
    """The secret in ``path``; errors name the file, never its content."""
    try:
        return Secret.read(path)
    except OSError as e:
        reason = e.strerror or type(e).__name__
        # A name without "/" that cannot be read may be the secret itself, set by mistake
        # where its file belongs: do not print it.
        if "/" not in text(given):
            raise given.fail(
                f"cannot read the file named there: {reason} (the name is not shown: without "
                "a '/' it may be the secret itself; give the path of the file)"
            ) from None
        raise given.fail(f"cannot read {str(path)!r}: {reason}") from None
    except ValueError as e:
        raise given.fail(str(e)) from None


def _inline_secret(given: Given) -> Secret:
    # Never format given.value here: it is the secret.
    if not isinstance(given.value, str):
        raise given.fail("expected a string (put it in quotes)")
    try:
        return Secret(clean_secret(given.value, f"missing: {_MISSING['client_secret_file']}"))
    except ValueError as e:
        raise given.fail(str(e)) from None


def _mandant_warnings(mandant: Mandant) -> list[str]:
    warnings = []
    if mandant.token_auth_method == "query":
        warnings.append(
            f"mandant {mandant.name}: token auth method query sends the client secret in the "
            "URL of the token request, where proxies and servers may log it; prefer basic "
            "(the default) or post"
        )
    for key, address, what in (
        ("api_url", mandant.api_url, "the access token"),
        ("token_url", mandant.token_url, "the client secret"),
    ):
        parts = urlsplit(address)
        if parts.scheme.lower() == "http" and not is_loopback(parts.hostname or ""):
            warnings.append(
                f"mandant {mandant.name}: {key} {address} is plain http, so {what} travels "
                "unencrypted; use https"
            )
    return warnings


CA_BUNDLE_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
"""Variables that replace the default CA bundle of every mandant without a ca_file, as in
requests (which would otherwise read them on every request)."""


class _Sources:
    """Looks an option up by precedence: flag, then environment, then config file."""

    def __init__(self, args: argparse.Namespace, environ: Mapping[str, str]) -> None:
        self._args = args
        self._environ = environ
        self.file: Mapping[str, Given] = {}  # the config file's global settings, once read

    def env(self, name: str) -> Given | None:
        value = self._environ.get(name, "")
        return Given(value, name) if value else None

    def pick(self, option: Option) -> Given | None:
        """Where ``option`` was given first, or None; a flag as the user wrote it."""
        value = getattr(self._args, option.dest, None) if option.flag else None
        if value is not None and option.flag is not None:
            written: dict[str, str] = getattr(self._args, GIVEN_AS, {})
            return Given(value, written.get(option.dest, option.flag))
        found = self.env(option.env)
        if found is None and option.file_key and option.scope is not Scope.MANDANT:
            found = self.file.get(option.file_key)
        return found

    def value(self, option: Option) -> Any:
        """The option's parsed value, or its default."""
        given = self.pick(option)
        if given is None:
            return option.default
        value = option.parse(given)
        # BEENERGISED_NO_STATION_INFO=true says "no" where the flag and the file say "yes".
        return not value if option.env_negated and given.where == option.env else value

    def environment_ca_file(self) -> str | None:
        for name in CA_BUNDLE_VARIABLES:
            given = self.env(name)
            if given is not None:
                return ca_file(given, directory_ok=True)
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
    globals: dict[str, Given]
    mandants: Given | None


def _load_config_file(given: Given) -> _ConfigFile:
    path = text(given)
    try:
        document = load_yaml_file(path)
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
    _reject_unknown_keys(document, FILE_GLOBAL_KEYS, path)
    located = {key: Given(value, f"{path}: {key}") for key, value in document.items()}
    mandants = located.pop("mandants", None)
    return _ConfigFile(path, located, mandants)


def _reject_unknown_keys(mapping: dict[object, object], known: tuple[str, ...], where: str) -> None:
    for key in mapping:
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r}; known keys: {', '.join(known)}")


def _file_mandants(config: _ConfigFile, defaults: Mapping[str, Any]) -> list[Mandant]:
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
        _reject_unknown_keys(entry, FILE_MANDANT_KEYS, where)
        item = {key: Given(value, f"{where}.{key}", base) for key, value in entry.items()}
        mandant = _mandant(item, defaults, where)
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


def _flag_env_mandant(sources: _Sources) -> dict[str, Given]:
    """The single mandant's raw values from flags and environment, keyed like a file entry."""
    item = {
        option.file_key: given
        for option in MANDANT_OPTIONS
        if option.file_key and (given := sources.pick(option)) is not None
    }
    secret_file, secret = item.get("client_secret_file"), item.get("client_secret")
    if secret_file is not None and secret is not None:
        if secret_file.where == OPTION["api.client-secret-file"].env:
            raise ConfigError(
                "BEENERGISED_CLIENT_SECRET_FILE and BEENERGISED_CLIENT_SECRET: "
                "both set; set only one"
            )
        del item["client_secret"]  # the flag wins over both variables
    return item


def _missing(key: str, where: str | None, also: str | None = None) -> str:
    """The setting that is missing, as the user would give it: its place in the config file
    entry ``where``, else its variable and flag (and those of the alternative ``also``)."""
    if where is not None:
        return f"{where}.{key}" + (f" (or {also})" if also else "")
    by_key = {option.file_key: option for option in MANDANT_OPTIONS}
    names = [name for k in (key, also) if k for name in by_key[k].names]
    return f"{names[0]} (or {', or '.join(names[1:])})"


def _mandant(
    item: Mapping[str, Given], defaults: Mapping[str, Any], where: str | None = None
) -> Mandant:
    """One mandant from its raw values keyed like a config-file entry (``where``; None for
    flags and environment, which give one mandant). ``defaults`` holds the global values of the
    settings a mandant may set for itself, by file key."""
    if item.get("api_url") is None or item["api_url"].value is None:
        hint = _NO_MANDANT_HINT if where is None else ""
        raise ConfigError(f"{_missing('api_url', where)}: missing: {_MISSING['api_url']}{hint}")
    api_url = url(item["api_url"]).rstrip("/")
    client_id = item.get("client_id")
    if client_id is None or client_id.value is None or not text(client_id):
        raise ConfigError(f"{_missing('client_id', where)}: missing: {_MISSING['client_id']}")
    if "client_secret" in item and "client_secret_file" in item:
        raise ConfigError(f"{where}: give exactly one of client_secret and client_secret_file")
    if "client_secret_file" in item:
        secret = _read_secret_file(
            item["client_secret_file"], secret_path(item["client_secret_file"])
        )
    elif "client_secret" in item:
        secret = _inline_secret(item["client_secret"])
    else:
        missing = _missing("client_secret_file", where, also="client_secret")
        raise ConfigError(f"{missing}: missing: {_MISSING['client_secret_file']}")
    name = text(item["name"]) if "name" in item else _default_name(api_url)
    if not name:
        raise item.get("name", item["api_url"]).fail("the mandant name must not be empty")

    def value(option: Option) -> Any:
        key = option.file_key or ""
        return option.parse(item[key]) if key in item else defaults.get(key, option.default)

    return Mandant(
        name=name,
        api_url=api_url,
        token_url=value(OPTION["api.token-url"]),
        client_id=text(client_id),
        client_secret=secret,
        token_auth_method=value(OPTION["api.token-auth-method"]),
        target_firmware=value(OPTION["firmware.target"]),
        ca_file=value(OPTION["api.ca-file"]),
        firmware_max_versions=value(OPTION["firmware.max-versions"]),
        authorization=value(OPTION["api.authorization"]),
    )


def _resolve_mandants(
    sources: _Sources, config: _ConfigFile | None, defaults: Mapping[str, Any]
) -> list[Mandant]:
    """One mandant from flags/environment, or the config file's list, or none in demo mode."""
    item = _flag_env_mandant(sources)
    offender = next(iter(item.values()), None)
    file_list = config if config is not None and config.mandants is not None else None
    demo = sources.pick(OPTION["demo"])
    if demo is not None and boolean(demo):
        if offender is None and file_list is not None:
            offender = Given(None, f"mandants: from {file_list.path}")
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
        return _file_mandants(file_list, defaults)
    return [_mandant(item, defaults)]


def _format_seconds(seconds: float) -> str:
    return f"{seconds:g}s"


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
    reject_secret_flag(argv)
    args = (parser or build_parser()).parse_args(list(argv))
    sources = _Sources(args, environ)
    config_given = sources.pick(OPTION["config.file"])
    config = _load_config_file(config_given) if config_given is not None else None
    if config is not None:
        sources.file = config.globals

    defaults = {
        o.file_key: sources.value(o) for o in GLOBAL_OPTIONS if o.scope is Scope.BOTH and o.file_key
    }
    mandants = _resolve_mandants(sources, config, defaults)
    environment_ca = sources.environment_ca_file()
    if environment_ca is not None:
        mandants = [m if m.ca_file else replace(m, ca_file=environment_ca) for m in mandants]
    warnings = deprecation_warnings(args)
    warnings += [warning for mandant in mandants for warning in _mandant_warnings(mandant)]

    fields: dict[str, Any] = {}
    for option in GLOBAL_OPTIONS:
        if option.setting is not None:
            fields[option.setting] = sources.value(option)
    refresh_given = sources.pick(OPTION["refresh.interval"])
    if refresh_given is not None and fields["refresh_interval"] < SHORT_REFRESH_INTERVAL:
        warnings.append(
            f"{refresh_given.where}: {_format_seconds(fields['refresh_interval'])} is below "
            f"{_format_seconds(SHORT_REFRESH_INTERVAL)}; every refresh reads all stations "
            "of every mandant from the CPO API, so 1m or more is kinder to it"
        )
    listen_given = sources.pick(OPTION["web.listen-address"])
    systemd_given = sources.pick(OPTION["web.systemd-socket"])
    if fields["systemd_socket"] and listen_given is not None:
        assert systemd_given is not None
        raise listen_given.fail(
            f"not used with {systemd_given.where}, which listens on the sockets systemd "
            "passes; remove one"
        )
    return Settings(mandants=tuple(mandants), warnings=tuple(warnings), **fields)
