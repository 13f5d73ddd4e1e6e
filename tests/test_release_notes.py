"""The release notes, CHANGELOG.md: Keep a Changelog's shape, an entry for pyproject's version."""

from __future__ import annotations

import re
import tomllib

from tests.helpers import ROOT

CHANGELOG = (ROOT / "CHANGELOG.md").read_text()
VERSION: str = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
RELEASE = re.compile(r"^## \[(?P<name>[^\]]+)\](?: - (?P<date>\d{4}-\d{2}-\d{2}))?$", re.M)
KINDS = {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}


def releases() -> list[str]:
    return [m["name"] for m in RELEASE.finditer(CHANGELOG)]


def test_every_second_level_heading_is_a_release():
    headings = re.findall(r"^## .*$", CHANGELOG, re.M)
    assert len(headings) == len(releases()), headings


def test_unreleased_comes_first_then_the_project_version():
    assert releases()[:2] == ["Unreleased", VERSION]


def test_the_project_version_has_entries():
    """Between the version's heading and the next release: at least one listed change."""
    body = CHANGELOG.split(f"## [{VERSION}]", 1)[1]
    body = RELEASE.split(body, 1)[0]
    assert re.search(r"^- \S", body, re.M), f"no entry under [{VERSION}]"


def test_change_kinds_are_keep_a_changelog_ones():
    kinds = set(re.findall(r"^### (.*)$", CHANGELOG, re.M))
    assert kinds and kinds <= KINDS, kinds - KINDS


def test_every_release_has_a_link_reference():
    links = dict(re.findall(r"^\[([^\]]+)\]: (\S+)$", CHANGELOG, re.M))
    assert set(releases()) == set(links)
    assert links[VERSION].endswith(f"/v{VERSION}")
