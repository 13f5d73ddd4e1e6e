"""The package index's long description: README.md with its relative links made absolute.

A package index shows the README away from the repository, where a relative link
(``docs/deployment.md``, ``#quickstart``) leads nowhere. pyproject.toml declares the readme
dynamic and this supplies it, linked to the files of the release's tag: the release workflow
publishes only from the tag ``v`` + the version. Everything else is in pyproject.toml.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent
REPOSITORY = "https://github.com/beenergised-exporter/beenergised-exporter"
FENCE = re.compile(r"^\s*(```|~~~)")
# The target of an inline link or image: [text](target) or [text](<target> "title").
LINK_TARGET = re.compile(r"(\]\(\s*<?)([^)\s>]+)")
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def absolute_links(markdown: str, version: str) -> str:
    """``markdown`` (the text of README.md) with every link outside code blocks that has no
    scheme made absolute: a file or folder of the repository at the tag of ``version``, a bare
    ``#anchor`` the heading of README.md there."""
    base = f"{REPOSITORY}/blob/v{version}/"

    def absolute(match: re.Match[str]) -> str:
        target = match.group(2)
        if SCHEME.match(target):
            return match.group(0)
        if target.startswith("#"):
            target = "README.md" + target
        url = base + target
        if target.endswith("/"):
            url = url.replace("/blob/", "/tree/", 1)
        return match.group(1) + url

    lines, fenced = [], False
    for line in markdown.splitlines(keepends=True):
        if FENCE.match(line):
            fenced = not fenced
        lines.append(line if fenced or FENCE.match(line) else LINK_TARGET.sub(absolute, line))
    return "".join(lines)


def long_description() -> str:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    return absolute_links((ROOT / "README.md").read_text(encoding="utf-8"), version)


if __name__ == "__main__":  # run by the build backend
    from setuptools import setup

    setup(long_description=long_description(), long_description_content_type="text/markdown")
