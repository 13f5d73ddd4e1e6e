"""The layering of exporter/: what the lower layers load, and no import circle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import exporter
from exporter import errors

PACKAGE = Path(exporter.__file__).parent
HEAVY = ("requests", "apscheduler", "yaml")


def loaded(statement: str) -> set[str]:
    """The top-level names of HEAVY that ``statement`` loads in a fresh interpreter."""
    probe = f"{statement}; import sys; print(' '.join(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    return {name.partition(".")[0] for name in result.stdout.split()} & set(HEAVY)


@pytest.mark.e2e  # starts a Python interpreter
def test_metrics_and_web_load_no_http_client_scheduler_or_yaml() -> None:
    assert loaded("import exporter.metrics, exporter.web") == set()


@pytest.mark.e2e  # starts a Python interpreter
def test_auth_loads_no_scheduler_or_yaml() -> None:
    assert loaded("import exporter.auth") == {"requests"}


@pytest.mark.e2e  # starts a Python interpreter
def test_the_api_client_loads_no_scheduler_or_yaml() -> None:
    assert loaded("import exporter.api") == {"requests"}


@pytest.mark.e2e  # starts a Python interpreter
def test_the_probe_sees_what_a_module_loads() -> None:
    assert loaded("import exporter.cli") == set(HEAVY)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # ``from exporter import check`` imports the module exporter.check.
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        found.update(name for name in names if name in modules)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    modules = set(paths)
    return {name: imports_of(path, modules) - {name} for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (its modules in order), or None."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        for imported in sorted(graph[module]):
            if (cycle := visit(imported, [*path, module])) is not None:
                return cycle
        done.add(module)
        return None

    for module in sorted(graph):
        if (cycle := visit(module, [])) is not None:
            return cycle
    return None


def test_the_import_graph_of_the_package_has_no_circle() -> None:
    graph = import_graph()
    assert "exporter.cli" in graph and "exporter.check" in graph["exporter.cli"]
    assert find_cycle(graph) is None


def test_find_cycle_finds_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]


def test_the_model_imports_nothing_of_ours() -> None:
    assert import_graph()["exporter.model"] == set()


def all_subclasses(cls: type) -> list[type]:
    return [sub for direct in cls.__subclasses__() for sub in (direct, *all_subclasses(direct))]


@pytest.mark.parametrize(
    "error", all_subclasses(errors.RefreshError), ids=lambda error: error.__name__
)
def test_every_refresh_error_has_a_failure_reason(error: type[errors.RefreshError]) -> None:
    assert error.reason in errors.FAILURE_REASONS


def renderers() -> set[str]:
    """The modules of exporter/ that import a text format of the client library."""
    formats = {"prometheus_client.exposition", "prometheus_client.openmetrics.exposition"}
    found = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: set[str] = set()
            if isinstance(node, ast.Import):
                names = {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            if names & formats or "prometheus_client.generate_latest" in names:
                found.add(module_name(path))
    return found


def test_the_exposition_is_the_one_renderer_and_its_rooms_stand_on_their_floors() -> None:
    """Only the exposition cache renders text; the metric families know nothing of it; the gzip
    segments and the live families of the web and the reload import nothing of ours."""
    graph = import_graph()
    assert renderers() == {"exporter.exposition"}
    assert graph["exporter.exposition"] >= {"exporter.metrics", "exporter.gzipsegments"}
    assert "exporter.exposition" not in graph["exporter.metrics"]
    for floor in ("exporter.gzipsegments", "exporter.refused", "exporter.reloadstatus"):
        assert graph[floor] == set(), floor
