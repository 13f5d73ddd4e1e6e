"""The layering of exporter/: what the lower layers load, and no import circle."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import exporter
from exporter import errors
from tests.helpers import free_port

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


def test_the_head_reader_and_the_worker_pool_import_nothing_of_ours() -> None:
    """One connection's handshake and head, and the worker threads, know no server, app or
    metric: exporter.webserver wires them."""
    graph = import_graph()
    assert graph["exporter.webheads"] == set()
    assert graph["exporter.webworkers"] == set()


def simulator_modules_after(argv: list[str], environ: dict[str, str]) -> tuple[int, set[str]]:
    """The exit status of ``exporter.cli.main(argv)`` in a fresh interpreter, and the modules
    of exporter.simulator and exporter.demo loaded by then."""
    probe = (
        "import sys, exporter.cli; "
        f"code = exporter.cli.main({argv!r}); "
        "print(code, *(m for m in sys.modules if m.startswith(('exporter.simulator', "
        "'exporter.demo'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={"PATH": os.environ.get("PATH", ""), **environ},
    )
    code, *modules = result.stdout.splitlines()[-1].split()  # after what main printed
    return int(code), set(modules)


@pytest.mark.e2e  # starts a Python interpreter
def test_a_start_without_demo_loads_neither_the_demo_nor_the_simulator() -> None:
    assert simulator_modules_after([], {}) == (2, set())  # no mandant configured
    closed = f"http://127.0.0.1:{free_port()}"
    argv = ["check", f"--api.url={closed}", f"--api.token-url={closed}", "--api.client-id=id"]
    code, modules = simulator_modules_after(argv, {"BEENERGISED_CLIENT_SECRET": "s"})
    assert (code, modules) == (1, set())  # checked the mandant: it cannot be reached


@pytest.mark.e2e  # starts a Python interpreter and the demo's simulated API
def test_demo_loads_the_simulator() -> None:
    code, modules = simulator_modules_after(["check", "--demo", "--output=json"], {})
    assert code == 0
    assert {"exporter.demo", "exporter.simulator", "exporter.simulator.server"} <= modules


def names_imported_at_top(path: Path) -> set[str]:
    """The names a module binds at its top level by importing them."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            names.update((alias.asname or alias.name).partition(".")[0] for alias in node.names)
    return names


def test_each_name_imports_from_the_module_that_defines_it() -> None:
    """One import path per name: no module of exporter/ passes on a name it imported (a
    package's __init__ may: it is the package's face)."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    passed_on = {
        name: names_imported_at_top(path)
        for name, path in modules.items()
        if path.name != "__init__.py"
    }
    root = PACKAGE.parent
    found = []
    for folder in ("exporter", "tests", "bench", "deploy"):
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and node.module in passed_on:
                    found += [
                        f"{path.relative_to(root)}: {alias.name} from {node.module}"
                        for alias in node.names
                        if alias.name in passed_on[node.module]
                    ]
    assert found == []


REPAIRER = "exporter.stations"
REPAIR_NAMES = frozenset({"_repair", "REPLACEMENT", "_INVALID_TEXT"})


def named(node: ast.AST) -> str:
    """The name ``node`` refers to, if it is a name, an attribute or an imported name."""
    for kind, field in ((ast.Name, "id"), (ast.Attribute, "attr"), (ast.alias, "name")):
        if isinstance(node, kind):
            return str(getattr(node, field))
    return ""


def text_repairs(source: str) -> list[str]:
    """What in ``source`` turns untrusted text into a Station, or repairs text as only
    REPAIRER may: a call of ``Station(...)`` (a station whose text skipped the repair), the
    repair's own names, or the replacement character U+FFFD."""
    found = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Call) and named(node.func) == "Station":
            found.append(f"line {line}: builds a Station")
        elif named(node) in REPAIR_NAMES:
            found.append(f"line {line}: uses {named(node)}")
        elif isinstance(node, ast.Constant) and "\ufffd" in str(node.value):
            found.append(f"line {line}: holds U+FFFD")
    return found


def test_text_from_the_api_is_repaired_in_one_module_only() -> None:
    """Every Station is built, and every bad text repaired, in REPAIRER: a second place would
    be a second set of rules for what a label may hold, and a way around the repair."""
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    repairs = {name: text_repairs(path.read_text()) for name, path in paths.items()}
    assert {name: found for name, found in repairs.items() if found and name != REPAIRER} == {}
    assert repairs[REPAIRER]  # the check sees the repair where it is


def test_text_repairs_finds_a_repair_elsewhere() -> None:
    source = (
        "from exporter.model import Station\n"
        "from exporter.stations import REPLACEMENT\n"
        "def parse(row):\n"
        "    return Station(row['id'].replace('\\x1b', '\\ufffd'), '', '', '', '')\n"
    )
    assert text_repairs(source) == [
        "line 2: uses REPLACEMENT",
        "line 4: builds a Station",
        "line 4: holds U+FFFD",
    ]


SESSION_MAKER = "exporter.session"
HTTP_CLIENTS = frozenset(
    {
        *(f"requests.{name}" for name in ("Session", "session", "request", "get", "head")),
        *(f"requests.{name}" for name in ("post", "put", "patch", "delete", "options")),
        "requests.sessions.Session",
        "requests.adapters.HTTPAdapter",
        *(f"urllib3.{name}" for name in ("PoolManager", "ProxyManager", "request")),
        *(f"urllib3.{name}" for name in ("HTTPConnectionPool", "HTTPSConnectionPool")),
        *(f"urllib3.{name}" for name in ("connection_from_url", "proxy_from_url")),
        "urllib3.poolmanager.PoolManager",
        "http.client.HTTPConnection",
        "http.client.HTTPSConnection",
        "urllib.request.urlopen",
        "urllib.request.build_opener",
    }
)
"""What makes HTTP requests without our session: sessions, adapters, pools, connections and
the one-shot request functions of requests, urllib3, http.client and urllib."""


def http_clients(source: str) -> list[str]:
    """Where ``source`` refers to one of HTTP_CLIENTS, by whatever name it imported it."""
    tree = ast.parse(source)
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                first = alias.name.partition(".")[0]
                names[alias.asname or first] = alias.name if alias.asname else first
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})

    def full_name(node: ast.AST) -> str:
        if isinstance(node, ast.Name):
            return names.get(node.id, "")
        if isinstance(node, ast.Attribute) and (base := full_name(node.value)):
            return f"{base}.{node.attr}"
        return ""

    return [
        f"line {node.lineno}: {name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Name | ast.Attribute) and (name := full_name(node)) in HTTP_CLIENTS
    ]


def test_only_the_session_module_makes_http_clients() -> None:
    """Every request of the exporter goes through a BoundedSession, whose wall-clock bound a
    session, pool or connection made elsewhere would not have."""
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    clients = {name: http_clients(path.read_text()) for name, path in paths.items()}
    assert {name: found for name, found in clients.items() if found and name != SESSION_MAKER} == {}
    assert clients[SESSION_MAKER]  # the check sees the clients where they are made


def test_http_clients_finds_a_client_made_elsewhere() -> None:
    source = (
        "import http.client\n"
        "import requests\n"
        "from urllib3 import PoolManager as Pool\n"
        "session = requests.Session()\n"
        "pool = Pool()\n"
        "conn = http.client.HTTPSConnection('api.example.test')\n"
        "answer = requests.get('https://api.example.test')\n"
    )
    assert sorted(http_clients(source)) == [
        "line 4: requests.Session",
        "line 5: urllib3.PoolManager",
        "line 6: http.client.HTTPSConnection",
        "line 7: requests.get",
    ]


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
