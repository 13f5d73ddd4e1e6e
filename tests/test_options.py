"""Tests of exporter/options.py: the table of settings agrees with itself and with README.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from exporter.check import build_check_parser
from exporter.options import FILE_GLOBAL_KEYS, FILE_MANDANT_KEYS, OPTIONS, Option, build_parser
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
        if option.env is None:
            continue  # a key of the config file only (a mandant's name)
        matches = [row for row in rows if option.env in names_in(row[1])]
        assert len(matches) == 1, option.env
        assert (option.flag in names_in(matches[0][0])) if option.flag else True, option.flag
        if option.flag is None:
            assert not any(name.startswith("--") for name in names_in(matches[0][0]))


def test_readme_table_names_no_unknown_flag_or_variable() -> None:
    flags = {option.flag for option in OPTIONS}
    variables = {option.env for option in OPTIONS}
    for row in readme_configuration_rows():
        for name in names_in(row[0]):
            assert name in flags or not name.startswith("-"), name
        for name in names_in(row[1]):
            assert name in variables or not name.startswith("BEENERGISED_"), name


def test_readme_table_shows_each_default_as_help_does() -> None:
    rows = {row[0]: row for row in readme_configuration_rows()}
    for option in OPTIONS:
        if option.flag is not None and option.default is not None:
            assert rows[f"`{option.flag}`"][2] == f"`{option.default_text}`", option.flag


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


def test_every_flag_of_the_table_is_on_the_command_line_and_no_other() -> None:
    parser = build_parser()
    flags = {s for action in parser._actions for s in action.option_strings}
    assert flags - {"-h", "--help", "--version"} == {o.flag for o in OPTIONS if o.flag}


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
