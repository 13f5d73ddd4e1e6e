"""Tests of exporter/options.py: the table of settings agrees with itself and with README.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from exporter.check import build_check_parser
from exporter.commandline import build_parser
from exporter.options import (
    FILE_GLOBAL_KEYS,
    FILE_MANDANT_KEYS,
    OPTION,
    OPTIONS,
    Option,
    Scope,
)
from exporter.values import Given

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_configuration_rows() -> list[list[str]]:
    """The cells of the table under "## Configuration" (the flag | environment | ... table)."""
    section = README.read_text(encoding="utf-8").split("\n## Configuration\n", 1)[1]
    table = section.split("| flag | environment |", 1)[1].split("\n\n", 1)[0]
    rows = [line for line in table.splitlines()[1:] if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows[1:]]


def names_in(cell: str) -> set[str]:
    return set(re.findall(r"`([^`]+)`", cell))


def test_readme_table_lists_every_option_with_its_flag_and_variable() -> None:
    rows = readme_configuration_rows()
    for option in OPTIONS:
        matches = [row for row in rows if option.env in names_in(row[1])]
        assert len(matches) == 1, option.env
        assert (option.flag in names_in(matches[0][0])) if option.flag else True, option.flag
        if option.flag is None:
            assert not any(name.startswith("--") for name in names_in(matches[0][0]))


def test_readme_table_names_no_unknown_flag_or_variable() -> None:
    flags = {option.flag for option in OPTIONS} | {f"--no-{o.name}" for o in OPTIONS if o.negatable}
    variables = {option.env for option in OPTIONS}
    for row in readme_configuration_rows():
        for name in names_in(row[0]):
            assert name in flags or not name.startswith("-"), name
        for name in names_in(row[1]):
            assert name in variables or not name.startswith("BEENERGISED_"), name


def test_readme_table_shows_each_default_as_help_does() -> None:
    rows = readme_configuration_rows()
    for option in OPTIONS:
        if option.flag is not None and option.default is not None:
            (row,) = [row for row in rows if option.flag in names_in(row[0])]
            assert row[2] == f"`{option.default_text}`", option.flag


def test_the_release_notes_name_each_flag_of_0_1_beside_its_new_name() -> None:
    """Operators upgrading look up the flag they use in the release notes."""
    notes = (README.parent / "CHANGELOG.md").read_text(encoding="utf-8")
    unreleased = notes.split("## [Unreleased]", 1)[1].split("\n## [", 1)[0]
    for option in OPTIONS:
        if option.old_flag is not None:
            assert f"| `{option.old_flag}` | `{option.new_flag}` |" in unreleased, option.old


@pytest.mark.parametrize(
    "option", [o for o in OPTIONS if o.default is not None], ids=lambda o: o.name
)
def test_the_default_shown_parses_to_the_default(option: Option) -> None:
    value = option.parse(Given(option.default_text, "default"))
    assert value == option.default


def test_the_variable_derives_from_the_flag() -> None:
    assert {o.name: o.env for o in OPTIONS if o.name in ("api.ca-file", "web.config.file")} == {
        "api.ca-file": "BEENERGISED_API_CA_FILE",
        "web.config.file": "BEENERGISED_WEB_CONFIG_FILE",
    }


VARIABLES_OF_0_1 = {
    "BEENERGISED_API_URL": "api.url",
    "BEENERGISED_TOKEN_URL": "api.token-url",
    "BEENERGISED_CLIENT_ID": "api.client-id",
    "BEENERGISED_CLIENT_SECRET_FILE": "api.client-secret-file",
    "BEENERGISED_CLIENT_SECRET": "api.client-secret",
    "BEENERGISED_TOKEN_AUTH_METHOD": "api.token-auth-method",
    "BEENERGISED_REFRESH_INTERVAL": "refresh.interval",
    "BEENERGISED_PAGE_LIMIT": "api.page-limit",
    "BEENERGISED_CONCURRENCY": "api.concurrency",
    "BEENERGISED_TARGET_FIRMWARE": "firmware.target",
    "BEENERGISED_NO_STATION_INFO": "collector.station-info",
    "BEENERGISED_CONFIG_FILE": "config.file",
    "BEENERGISED_DEMO": "demo",
    "BEENERGISED_WEB_LISTEN_ADDRESS": "web.listen-address",
    "BEENERGISED_LOG_LEVEL": "log.level",
}
"""Variables of 0.1 whose flags were renamed or that deployments set most: the rename of the
flags keeps every one of them."""


def test_the_variables_of_0_1_keep_their_names_when_their_flags_are_renamed() -> None:
    assert {name: OPTION[option].env for name, option in VARIABLES_OF_0_1.items()} == {
        name: name for name in VARIABLES_OF_0_1
    }


def test_every_flag_is_dotted_but_the_demo_switch() -> None:
    assert [o.flag for o in OPTIONS if o.flag and "." not in o.flag] == ["--demo"]
    assert all(o.old is None or "." not in o.old for o in OPTIONS)


def test_every_flag_of_the_table_is_on_the_command_line_and_no_other() -> None:
    parser = build_parser()
    flags = {s for action in parser._actions for s in action.option_strings}
    negations = {f"--no-{o.name}" for o in OPTIONS if o.negatable}
    old = {o.old_flag for o in OPTIONS if o.old_flag}
    expected = {o.flag for o in OPTIONS if o.flag} | negations | old
    assert flags - {"-h", "--help", "--version"} == expected


def test_help_shows_no_flag_of_0_1() -> None:
    text = build_parser().format_help()
    shown = {o.old_flag for o in OPTIONS if o.old_flag and o.old_flag in text.split()}
    assert not shown
    assert "--api.url URL" in text and "--no-collector.station-info" in text


def test_the_usage_names_the_check_command_beside_the_flags() -> None:
    first, *flags, last = build_parser().format_usage().splitlines()
    assert first.startswith("usage: beenergised-exporter [-h] ")
    assert "[--config.file PATH]" in " ".join(flags)
    assert last.strip() == "beenergised-exporter check [--output FORMAT] [the flags above]"
    check_usage = build_check_parser().format_usage()
    assert check_usage.startswith("usage: beenergised-exporter check [-h] ")
    assert "[--output FORMAT]" in check_usage and "[the flags above]" not in check_usage


def test_file_keys_come_from_the_table() -> None:
    assert FILE_GLOBAL_KEYS == (
        "mandants",
        "api_max_response_size",
        "api_max_stations",
        "api_request_timeout",
        "authorization",
        "changes_max_entries",
        "concurrency",
        "firmware_max_versions",
        "page_limit",
        "refresh_interval",
        "refresh_timeout",
        "station_info",
        "token_auth_method",
    )
    assert FILE_MANDANT_KEYS == (
        "api_url",
        "authorization",
        "ca_file",
        "client_id",
        "client_secret",
        "client_secret_file",
        "firmware_max_versions",
        "name",
        "target_firmware",
        "token_auth_method",
        "token_url",
    )


def test_the_scope_says_where_a_value_goes() -> None:
    """A global option's value is a field of Settings (but the config file's own name); the
    value of a mandant's option goes to the mandant, from a key of the file."""
    unstored = [o.name for o in OPTIONS if o.scope is Scope.GLOBAL and o.setting is None]
    assert unstored == ["config.file"]
    assert all(o.setting is None and o.file_key for o in OPTIONS if o.scope is not Scope.GLOBAL)


def test_the_switch_on_by_default_is_the_one_turned_off_by_its_variable() -> None:
    assert [o.name for o in OPTIONS if o.negatable] == ["collector.station-info"]
    assert [o.env for o in OPTIONS if o.env_negated] == ["BEENERGISED_NO_STATION_INFO"]
