"""The test suite's own rules: test modules stand alone, and the unit tier starts no process."""

from __future__ import annotations

import ast
import subprocess
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
