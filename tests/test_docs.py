"""README.md and docs/: the front door stays small, and every link and runbook_url leads somewhere.

README.md is the manual's front door (what it is, quickstart, configuration, metrics,
endpoints); reference material lives in docs/. These tests keep it that way: the README stays
under 30 KB, still names every flag and metric, and every relative link of README.md and
docs/*.md, and every alert's runbook_url, resolves to a file and, with an anchor, to a heading.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml

from tests.helpers import ROOT, TOOL_PACKAGES, load_script, rendered_links

README = ROOT / "README.md"
DOCS = ROOT / "docs"
RUNBOOKS = DOCS / "runbooks.md"
MARKDOWN = [README, ROOT / "CONTRIBUTING.md", ROOT / "SECURITY.md", *sorted(DOCS.glob("*.md"))]
# The base the alerts' runbook_url uses (the project's GitHub blob URL of its main branch).
URL_BASE = "https://github.com/beenergised-exporter/beenergised-exporter/blob/main/"
README_MAX_BYTES = 30 * 1024

FENCE = re.compile(r"^\s*(```|~~~)")
# [text](target) or [text](target "title"); an image's ![..](..) too.
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks: a `# comment` in a code block is no heading."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lowercase, punctuation but '-' and '_' dropped, ' ' to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor of a markdown file's headings, a repeated one numbered as GitHub does."""
    seen: dict[str, int] = {}
    out = set()
    for line in prose_lines(path.read_text()):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        anchor = github_anchor(match.group(1))
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        out.add(anchor if count == 0 else f"{anchor}-{count}")
    return out


def relative_links(path: Path) -> list[str]:
    """The link targets of a markdown file that point into the repository."""
    return [
        target
        for line in prose_lines(path.read_text())
        for target in LINK.findall(line)
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE)
    ]


def unresolved(source: Path, target: str) -> str | None:
    """Why a relative link of source does not resolve, or None when it does."""
    file_part, _, anchor = target.partition("#")
    resolved = (source.parent / unquote(file_part)).resolve() if file_part else source
    if not resolved.exists():
        return f"{target}: no file {resolved}"
    if anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
        return f"{target}: {resolved.relative_to(ROOT)} has no heading #{anchor}"
    return None


def test_readme_stays_under_30_kb():
    size = len(README.read_bytes())
    assert size < README_MAX_BYTES, f"README.md is {size} bytes; move reference text to docs/"


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_resolves_to_a_file_and_heading(path):
    problems = [problem for target in relative_links(path) if (problem := unresolved(path, target))]
    assert not problems, "\n".join(problems)


def test_the_link_check_catches_a_missing_file_and_a_missing_heading():
    assert "docs/runbooks.md" in relative_links(README)
    assert "https://www.beenergised.com" not in relative_links(README)
    assert unresolved(README, "docs/runbooks.md#runbook-exporter-down") is None
    assert unresolved(README, "#quickstart") is None
    assert "no heading" in unresolved(README, "docs/runbooks.md#runbook-no-such-alert")
    assert "no heading" in unresolved(README, "#no-such-section")
    assert "no file" in unresolved(README, "docs/no-such-page.md")


def test_github_anchor_rules():
    assert github_anchor("Checking a configuration: `beenergised-exporter check`") == (
        "checking-a-configuration-beenergised-exporter-check"
    )
    assert github_anchor("Reloading: SIGHUP") == "reloading-sighup"
    assert github_anchor("Runbook: TLS certificate not trusted") == (
        "runbook-tls-certificate-not-trusted"
    )
    assert github_anchor("snake_case and dash-case") == "snake_case-and-dash-case"


def test_every_page_of_docs_is_linked_from_the_readme():
    linked = {
        (README.parent / target.partition("#")[0]).resolve() for target in relative_links(README)
    }
    orphans = [path.name for path in DOCS.glob("*.md") if path.resolve() not in linked]
    assert not orphans, f"README.md does not link to docs/{orphans}"


def runbook_urls() -> list[tuple[str, str]]:
    """(where, runbook_url) of every alert and of every alert the rule unit tests expect."""
    urls = []
    alerts = yaml.safe_load((ROOT / "prometheus" / "alerts.yml").read_text())
    for group in alerts["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                urls.append((f"alerts.yml {rule['alert']}", rule["annotations"]["runbook_url"]))
    tests = yaml.safe_load((ROOT / "prometheus" / "alerts_test.yml").read_text())["tests"]
    for test in tests:
        for case in test.get("alert_rule_test", []):
            for alert in case["exp_alerts"]:
                url = alert.get("exp_annotations", {}).get("runbook_url")
                if url:
                    urls.append((f"alerts_test.yml {case['alertname']}", url))
    return urls


@pytest.mark.parametrize(("where", "url"), runbook_urls(), ids=lambda value: str(value))
def test_every_runbook_url_resolves_to_a_heading_of_docs_runbooks(where, url):
    page, _, anchor = url.partition("#")
    assert page == URL_BASE + "docs/runbooks.md", f"{where}: {url} is not docs/runbooks.md"
    assert anchor in anchors(RUNBOOKS), f"{where}: docs/runbooks.md has no heading #{anchor}"


def help_flags(*args: str) -> set[str]:
    """The flags `beenergised-exporter [args] --help` lists."""
    result = subprocess.run(
        [sys.executable, "-m", "exporter", *args, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9.-]*[a-z0-9]", result.stdout)) - {"--help"}


@pytest.mark.e2e  # starts a Python interpreter
def test_every_flag_is_in_the_readme():
    flags = help_flags() | help_flags("check")
    assert {"--api.url", "--output"} <= flags, "the --help parsing found too little"
    readme = README.read_text()
    missing = sorted(flag for flag in flags if f"`{flag}" not in readme)
    assert not missing, f"README.md does not mention {missing}"


def test_every_metric_is_in_the_readme():
    golden = (ROOT / "tests" / "golden" / "metrics.txt").read_text()
    names = set(re.findall(r"^# TYPE (beenergised_\w+)", golden, re.MULTILINE))
    for module in (ROOT / "exporter").rglob("*.py"):
        names |= set(re.findall(r"\"(beenergised_\w+)\"", module.read_text()))
    assert "beenergised_up" in names, "the metric name search found too little"
    readme = README.read_text()
    missing = sorted(name for name in names if f"`{name}" not in readme)
    assert not missing, f"README.md's metrics table does not name {missing}"


def test_every_test_the_table_of_bounds_names_exists():
    """docs/failure-behaviour.md's bounds name their proofs; a renamed test must not leave a
    proof behind that no longer runs. ``::name`` after a file name means the same file."""
    text = (ROOT / "docs" / "failure-behaviour.md").read_text()
    bounds = text[text.index("## Bounds") : text.index("## What it does")]
    named = 0
    for cell in re.findall(r"\| ([^|]*test_[^|]*) \|$", bounds, re.MULTILINE):
        module = None
        for file, name in re.findall(r"`(?:(test_\w+\.py))?::(test_\w+)`", cell):
            module = file or module
            assert module, f"{name}: no test file before it in {cell!r}"
            assert f"def {name}(" in (ROOT / "tests" / module).read_text(), f"{module}::{name}"
            named += 1
    assert named > 30


PERFORMANCE = DOCS / "performance.md"
RESULTS = ROOT / "bench" / "results.md"
MEMORY_FIGURE = re.compile(r"\d[\d.,]* MiB(?: peak)? (?:at|with|per) \d[\d,]*")
"""A memory figure by fleet size ("47 MiB at 10,000", "0.33 MiB per 1,000 stations")."""


def table_cells(text: str, first: str) -> list[str]:
    """The cells of the one table row of ``text`` whose first cell starts with ``first``."""
    (row,) = [line for line in text.splitlines() if line.startswith(f"| {first} |")]
    return [cell.strip() for cell in row.strip("|").split("|")]


def test_memory_figures_of_docs_performance_are_those_of_bench_results():
    """docs/performance.md, "Memory", quotes bench/results.md; the copies stay equal."""
    results = RESULTS.read_text()
    memory = PERFORMANCE.read_text().split("## Memory", 1)[1].split("\n## ", 1)[0]
    for stations in ("1,000", "10,000", "100,000"):
        measured = table_cells(results, f"{stations} | beenergised-exporter | on")[-1]
        assert table_cells(memory, stations)[1] == f"{measured} MiB", stations
    info_on = table_cells(results, "on")  # the 1,000,000-station table
    info_off = table_cells(results, "off")
    gzip_peak, plain_peak, off_peak = int(info_on[1]), int(info_on[3]), int(info_off[1])
    assert table_cells(memory, "1,000,000")[1] == (
        f"{gzip_peak} MiB ({plain_peak} once a scrape asked for uncompressed text; "
        f"{off_peak} without the info metric)"
    )
    many = table_cells(results, "100 | 10,000 | default")[3]
    assert table_cells(memory, "100 mandants x 10,000")[1] == f"{many} MiB"
    interpreter = int(re.search(r"less the (\d+) MiB of the interpreter", memory).group(1))
    per_thousand = [
        f"{(peak - interpreter) / 1000:.2f}" for peak in (gzip_peak, plain_peak, off_peak)
    ]
    stated = re.search(r"about ([\d.]+) MiB \(([\d.]+) once .*?, ([\d.]+)\s+without", memory, re.S)
    assert stated and list(stated.groups()) == per_thousand


def test_memory_figures_by_fleet_size_are_stated_only_in_docs_performance():
    """Elsewhere they are referred to, so that a new measurement changes one place."""
    elsewhere = [README, *DOCS.glob("*.md"), ROOT / "Dockerfile"]
    elsewhere += [p for p in (ROOT / "deploy").rglob("*") if p.is_file()]
    elsewhere += [p for p in (ROOT / "examples").rglob("*") if p.is_file()]
    found = [
        f"{path.relative_to(ROOT)}: {match}"
        for path in elsewhere
        if path != PERFORMANCE
        for match in MEMORY_FIGURE.findall(path.read_text())
    ]
    assert not found, "refer to docs/performance.md#memory instead:\n" + "\n".join(found)
    assert MEMORY_FIGURE.findall(PERFORMANCE.read_text()), "the pattern finds the figures"


def test_development_docs_list_every_system_tool_the_suite_needs_in_one_apt_line():
    """docs/development.md's table and apt-get line follow the tools the tests require and
    the packages .ci/run installs."""
    section = (DOCS / "development.md").read_text().split("## System tools", 1)[1]
    section = section.split("\n## ", 1)[0]
    (line,) = re.findall(r"^apt-get install (.*)$", section, re.MULTILINE)
    packages = {word for word in line.split() if not word.startswith("-")}
    required = {
        node.args[0].value
        for path in (ROOT / "tests").glob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", None) == "require_tool"
        and isinstance(node.args[0], ast.Constant)
    }
    assert {"promtool", "buildah", "kubectl", "make"} <= required, "the search found too little"
    for tool in required | {"git"}:  # git: tests/test_packaging.py copies the tracked files
        assert f"`{tool}`" in section, f"docs/development.md does not list {tool}"
        assert TOOL_PACKAGES.get(tool, tool if tool == "git" else "prometheus") in packages, tool
    installed_by_ci = set(
        re.findall(r"packages\+=\(([\w-]+)\)", (ROOT / ".ci" / "run").read_text())
    )
    # CI's python:3.11-bookworm image has git and make already.
    assert packages - installed_by_ci == {"git", "make"}
    assert installed_by_ci <= packages


def test_security_policy_supports_the_current_version_and_reports_privately():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    minor = ".".join(project["version"].split(".")[:2])
    policy = (ROOT / "SECURITY.md").read_text()
    assert f"| {minor}.x | yes |" in policy, "SECURITY.md: the supported versions are stale"
    assert project["urls"]["Source"] + "/security/advisories/new" in policy
    contributing = (ROOT / "CONTRIBUTING.md").read_text()
    assert "SECURITY.md" in contributing and "docs/development.md#system-tools" in contributing


def headings(markdown: str) -> list[str]:
    return [m.group(1) for m in map(HEADING.match, prose_lines(markdown)) if m]


HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
LINK_TARGET = re.compile(r"\]\(\s*<?[^)\s>]+>?")


def test_the_package_index_shows_the_readme_whole_with_no_relative_link():
    """setup.py makes the long description: README.md with only its link targets changed,
    each relative one (a file, a folder, a bare #anchor) made absolute at the release's tag."""
    setup = load_script(ROOT / "setup.py")
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    readme = README.read_text()
    description = setup.long_description()
    assert LINK_TARGET.sub("](", description) == LINK_TARGET.sub("](", readme)
    assert headings(description) == headings(readme)
    links = rendered_links(description)
    relative = [link for link in links if not re.match(r"(https?|mailto):", link)]
    assert not relative, f"links that lead nowhere on the package index: {relative}"
    base = f"{setup.REPOSITORY}/blob/v{version}/"
    for target in relative_links(README):
        folder = target.endswith("/")
        url = base + ("README.md" + target if target.startswith("#") else target)
        assert (url.replace("/blob/", "/tree/", 1) if folder else url) in links, target
    assert rendered_links(readme) != links, "the README itself keeps its relative links"


def test_the_readme_quickstart_names_the_image_and_wheel_of_this_version():
    """The image the release workflow pushes (ghcr.io/<repository>:<version>) and the wheel
    `python -m build` writes; a release bumps both with the version."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    repository = project["urls"]["Source"].removeprefix("https://github.com/")
    readme = README.read_text()
    assert f"ghcr.io/{repository.lower()}:{project['version']}" in readme
    assert f"dist/beenergised_exporter-{project['version']}-py3-none-any.whl" in readme
    release = (ROOT / ".github" / "workflows" / "release.yml").read_text()
    assert 'echo "image=ghcr.io/${REPOSITORY,,}"' in release
    assert f"pipx install {project['name']}" in readme


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda path: str(path.relative_to(ROOT)))
def test_no_blank_line_splits_a_sentence(path):
    """A blank line after a line that ends mid-sentence, before one that goes on in lower case,
    renders as two paragraphs of half a sentence each."""
    lines = prose_lines(path.read_text())
    splits = [
        f"{before[-40:]!r} / {after[:40]!r}"
        for before, blank, after in zip(lines, lines[1:], lines[2:], strict=False)
        if not blank.strip()
        and re.search(r"[\w,]$", before)
        and not before.lstrip().startswith(("|", "#", "-", "*"))
        and re.match(r"[a-z]", after)
    ]
    assert not splits, "\n".join(splits)
