"""The Makefile: every target says what it does, and `make help` (also plain `make`) lists them."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

import pytest

from tests.helpers import ROOT, require_tool

MAKEFILE = ROOT / "Makefile"


def phony_targets() -> list[str]:
    (line,) = re.findall(r"^\.PHONY:(.*)$", MAKEFILE.read_text(), re.MULTILINE)
    return line.split()


def documented() -> dict[str, str]:
    """Each target's `## name: text` comment (continuation lines joined) above its rule."""
    comments: dict[str, str] = {}
    lines = MAKEFILE.read_text().splitlines()
    for index, line in enumerate(lines):
        match = re.match(r"^## ([a-z0-9-]+): (.*)$", line)
        if not match:
            continue
        name, text, following = match.group(1), match.group(2), index + 1
        while lines[following].startswith("## "):
            text += " " + lines[following].removeprefix("## ").strip()
            following += 1
        assert lines[following].startswith(f"{name}:"), f"## {name}: is not above its rule"
        comments[name] = text
    return comments


def test_every_target_has_a_help_comment_and_every_comment_a_target():
    assert sorted(documented()) == sorted(phony_targets())
    assert "help" in phony_targets() and "image" in phony_targets()


def make(*args: str) -> str:
    result = subprocess.run(
        [require_tool("make"), "--no-print-directory", "-C", str(ROOT), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.e2e
@pytest.mark.parametrize("args", [["help"], []], ids=["make help", "make"])
def test_make_help_prints_each_target_with_its_comment(args):
    lines = make(*args).splitlines()
    expected = [f"{name:<12} {text}" for name, text in documented().items()]
    assert lines == expected


@pytest.mark.e2e
def test_make_image_runs_the_script_the_image_test_builds_with():
    assert "deploy/image.py" in make("--dry-run", "image")


def test_the_tools_make_lint_runs_are_pinned_to_a_minor_version():
    """A new ruff or mypy release can add a rule and fail `make lint` on unchanged code."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {re.split(r"[<>=\[]", spec)[0]: spec for spec in extras["optional-dependencies"]["test"]}
    for tool in ("ruff", "mypy"):
        assert re.fullmatch(rf"{tool}>=(\d+)\.(\d+),<\1\.\d+", pins[tool]), pins[tool]


@pytest.mark.e2e  # runs ruff
def test_make_lint_refuses_a_function_with_more_than_ten_branches(tmp_path):
    """The complexity gate: ruff with the project's settings flags the eleventh branch."""
    ifs = "".join(f"    if x == {n}:\n        return {n}\n" for n in range(10))
    source = tmp_path / "branchy.py"
    source.write_text(f"def branchy(x: int) -> int:\n{ifs}    return -1\n")
    settings = ROOT / "pyproject.toml"
    lint = [sys.executable, "-m", "ruff", "check", "--config", str(settings), "--no-cache"]
    flagged = subprocess.run([*lint, str(source)], capture_output=True, text=True, timeout=60)
    assert "C901 `branchy` is too complex (11 > 10)" in flagged.stdout, flagged.stdout
    source.write_text(
        f"def branchy(x: int) -> int:\n{ifs.split('    if x == 9')[0]}    return -1\n"
    )
    passed = subprocess.run([*lint, str(source)], capture_output=True, text=True, timeout=60)
    assert passed.returncode == 0, passed.stdout
