"""The test suite's own rules: test modules stand alone, and the unit tier starts no process."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
TEST_MODULES = sorted(TESTS.glob("test_*.py"))


def imported_modules(path: Path) -> set[str]:
    """Every module an import statement of ``path`` names, relative ones resolved to tests.*."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = "tests." + base if base else "tests"
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}
    return names


def is_test_module(name: str) -> bool:
    """A dotted name that is one of our test modules (``tests.test_x`` or a bare ``test_x``)."""
    return name.removeprefix("tests.").split(".")[0] in {p.stem for p in TEST_MODULES}


@pytest.mark.parametrize("path", TEST_MODULES, ids=lambda path: path.name)
def test_no_test_module_imports_another(path: Path):
    others = sorted(name for name in imported_modules(path) if is_test_module(name))
    assert not others, (
        f"{path.name} imports {others}: move what they share into a support module "
        "(tests/helpers.py, tests/dockerfile.py, tests/states.py, ...)"
    )


@pytest.mark.parametrize(
    "source",
    [
        "from tests.test_e2e import scrape",
        "import tests.test_compose",
        "from tests import test_metrics",
        "from .test_e2e import env_for",
        "from . import test_e2e",
        "import test_e2e",
    ],
)
def test_every_spelling_of_a_test_module_import_is_caught(source, tmp_path):
    path = tmp_path / "test_sample.py"
    path.write_text(source + "\n")
    assert any(is_test_module(name) for name in imported_modules(path))


def test_support_module_imports_are_allowed(tmp_path):
    path = tmp_path / "test_sample.py"
    path.write_text("from tests.helpers import scrape\nimport tests.dockerfile\n")
    assert not any(is_test_module(name) for name in imported_modules(path))


def test_a_unit_test_that_starts_a_process_fails_naming_the_e2e_mark():
    with pytest.raises(AssertionError, match=r"starts a process: mark it .*pytest\.mark\.e2e"):
        subprocess.run(["true"], check=True, timeout=5)


@pytest.mark.e2e
def test_an_e2e_test_may_start_a_process():
    assert subprocess.run(["true"], check=True, timeout=5).returncode == 0


SKIPPING = """
import pytest

from tests.helpers import require_tool


def test_a():
    require_tool("no-such-tool-b")


def test_b():
    require_tool("no-such-tool-a")


def test_c():
    require_tool("no-such-tool-a")


def test_d():
    pytest.skip("a reason that names no tool")


def test_e():
    assert True
"""


@pytest.mark.e2e
def test_a_run_ends_with_one_line_naming_the_tools_it_skipped_for(tmp_path):
    """What `make test` prints last, on xdist workers as it runs: each tool once, the others
    skips not at all."""
    (tmp_path / "test_tools.py").write_text(SKIPPING)
    environment = {k: v for k, v in os.environ.items() if k != "CI"}  # CI would fail them
    plugins = ["-p", "tests.conftest", "-p", "no:cacheprovider"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *plugins, "-n", "2", "-rs", str(tmp_path)],
        cwd=TESTS.parent,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    *_, summary, last = result.stdout.strip().splitlines()
    assert "1 passed, 4 skipped" in summary
    assert last == (
        "skipped tests for want of no-such-tool-a, no-such-tool-b: docs/development.md#system-tools"
    )
