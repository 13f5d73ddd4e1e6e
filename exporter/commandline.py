"""The command line built from the options table: one flag per option with a flag.

Values stay raw strings here, stored with the flag as the user wrote it, so that
:mod:`exporter.config` parses them by the table and its messages name the flag as given. A 0.1
flag name still works, hidden from --help, and is noted for the deprecation warning. The client
secret has no flag: its spellings are refused before argparse could echo the value.
"""

from __future__ import annotations

import argparse
import re
import textwrap
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, NoReturn

from exporter import version_text
from exporter.errors import ConfigError
from exporter.options import DEFAULT_TOKEN_URL, OPTIONS


def _wrap(paragraph: str, width: int) -> list[str]:
    return textwrap.wrap(
        " ".join(paragraph.split()), max(width, 20), break_long_words=False, break_on_hyphens=False
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
        """A hint for a flag written with underscores (--api_url for --api.url, --client_id
        for --api.client-id): the flag of that spelling, or what replaces its 0.1 name."""
        for flag in flags:
            spelled = flag.replace("_", "-").lower()
            action = self._option_string_actions.get(spelled)
            if spelled != flag and action is not None:
                return f"; did you mean {getattr(action, 'new', None) or spelled}?"
        return ""


_ARGPARSE_VALUE_RE = re.compile(
    r": (ignored explicit argument|invalid \w+ value|invalid choice):? .*?(?= \(choose from |$)"
)
"""The quoted value at the end of the argparse messages that show one."""
_NO_SECRET_FLAG = (
    "the client secret has no flag, a command line is visible in ps; use "
    "--api.client-secret-file, BEENERGISED_CLIENT_SECRET_FILE or BEENERGISED_CLIENT_SECRET"
)
_SECRET_FLAGS = ("--client-secret", "--api.client-secret")
"""Spellings of the flag the client secret does not have, refused before argparse reads them."""

_EPILOG = f"""\
Each setting is taken from the flag, else the environment variable, else the config file,
else the default. Environment variables that are set but empty count as unset.
Booleans from the environment: true/false, 1/0, yes/no.

The client secret has no flag (a command line is visible in ps): use
--api.client-secret-file, BEENERGISED_CLIENT_SECRET_FILE or BEENERGISED_CLIENT_SECRET.

Without --config.file the flags and variables describe one mandant, named after the first
label of its host name. Default token endpoint: {DEFAULT_TOKEN_URL}

SIGHUP (and POST /-/reload with --web.enable-lifecycle) reloads the config file, the secret
files and the web config file; a configuration with an error is logged and not applied.

The flags of 0.1 without a dot still work in this release, with a warning naming the new one.
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
    """The command line, one flag per option with a flag; every flag's help names its
    environment variable and default (``log_level`` is the default the caller puts in place of
    an unset one). Values stay raw strings: load_settings parses them."""
    parser = _Parser(
        prog=prog,
        description=description,
        epilog=_EPILOG + (_CHECK_EPILOG if prog == "beenergised-exporter" else ""),
        formatter_class=_HelpFormatter,
        # Abbreviations would let "--api.client-secret VALUE" pass as --api.client-secret-file.
        allow_abbrev=False,
    )
    for option in OPTIONS:
        flag = option.flag
        if flag is None:
            continue
        if option.name == "log.level":
            option = replace(option, default=log_level)
        common: dict[str, Any] = {
            "dest": option.dest,
            "action": _Flag,
            "repeatable": option.repeatable,
            **({"nargs": 0} if option.metavar is None else {"metavar": option.metavar}),
        }
        negation = [f"--no-{option.name}"] if option.negatable else []
        parser.add_argument(flag, *negation, help=option.help_text, **common)
        if option.old_flag is not None:
            parser.add_argument(
                option.old_flag, help=argparse.SUPPRESS, new=option.new_flag, **common
            )
    # Not a setting, like --help: it prints and exits before any setting is read.
    parser.add_argument(
        "--version",
        action=_PrintVersion,
        help="print the version, the Python version and the platform, then exit",
    )
    if prog == "beenergised-exporter":  # the usage names the command `check` too
        flags = parser.format_usage().removeprefix("usage: ").rstrip()
        parser.usage = f"{flags}\n       {prog} check [--output FORMAT] [the flags above]"
    return parser


GIVEN_AS = "given_as"
"""The parsed arguments' attribute that maps a dest to the flag that gave it, as written."""
OLD_FLAGS_USED = "old_flags_used"
"""The parsed arguments' attribute that maps each 0.1 flag name used to its new name."""


class _Flag(argparse.Action):
    """Stores a flag's raw value (a switch's: True, False for its --no- form; a repeatable
    flag's: the list of its values) and the flag as written, so that messages name it as the
    user did; a 0.1 name (``new`` set) is noted for the deprecation warning."""

    def __init__(
        self,
        option_strings: Sequence[str],
        dest: str,
        *,
        repeatable: bool = False,
        new: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(option_strings, dest, default=None, **kwargs)
        self.repeatable = repeatable
        self.new = new

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        assert option_string is not None  # flags only, no positional arguments
        if self.nargs == 0:
            values = not option_string.startswith("--no-")
        elif self.repeatable:
            values = [*(getattr(namespace, self.dest) or []), values]
        setattr(namespace, self.dest, values)
        vars(namespace).setdefault(GIVEN_AS, {})[self.dest] = option_string
        if self.new is not None:
            vars(namespace).setdefault(OLD_FLAGS_USED, {})[option_string] = self.new


def deprecation_warnings(args: argparse.Namespace) -> list[str]:
    """One warning for each 0.1 flag name in ``args``, however often it was given."""
    used: dict[str, str] = getattr(args, OLD_FLAGS_USED, {})
    return [
        f"{old} is deprecated and will be removed in a later release; use {new}"
        for old, new in used.items()
    ]


class _PrintVersion(argparse.Action):
    """``--version``: the lines of version_text as they are (argparse's own version action
    would rewrap them into one paragraph), then exit 0."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        print(version_text(parser.prog))
        parser.exit()


def reject_secret_flag(argv: Sequence[str]) -> None:
    """Refuse --api.client-secret and --client-secret in any spelling before argparse could
    echo the value."""
    for arg in argv:
        if arg == "--":
            return
        flag = arg.partition("=")[0]
        if flag.replace("_", "-").lower() in _SECRET_FLAGS:
            raise ConfigError(f"{flag}: not supported: {_NO_SECRET_FLAG}")
