"""The forge workflows cannot run here: validated offline against the GitHub workflow schema
(check-jsonschema) and audited with zizmor."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import IN_CI, ROOT

pytestmark = pytest.mark.e2e

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def tool(name: str) -> str:
    """The console script of a test extra beside this interpreter; skip (fail in CI) without."""
    path = Path(sys.executable).with_name(name)
    found = str(path) if path.exists() else shutil.which(name)
    if found:
        return found
    message = f"{name} is not installed (test extras of pyproject.toml)"
    if IN_CI:
        pytest.fail(message + " but CI=true requires it")
    pytest.skip(message)


def run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)


def test_the_ci_and_release_workflows_exist():
    assert [w.name for w in WORKFLOWS] == ["ci.yml", "release.yml"]


def test_workflows_match_the_github_workflow_schema():
    done = run(
        [
            tool("check-jsonschema"),
            "--builtin-schema",
            "vendor.github-workflows",
            *map(str, WORKFLOWS),
        ]
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_zizmor_finds_nothing():
    done = run([tool("zizmor"), "--offline", str(ROOT / ".github" / "workflows")])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No findings" in done.stdout + done.stderr
