"""What a release publishes: the sdist and the wheel built with ``python -m build`` from a clean
copy of the tracked files, checked with ``twine check --strict``, the wheel installed alone
into a fresh virtualenv (its dependencies from the configured package index) and run from
there. This catches a module or a data file that the package forgot."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest
import requests

from exporter.demo import DEMO_STATIONS
from tests.helpers import IN_CI, ROOT, Process, matching, samples, value, wait_until

pytestmark = pytest.mark.e2e

VERSION: str = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
NOT_IN_SDIST = (".github/", ".gitignore")
"""Tracked files a distribution packager has no use for: the forge's workflows, git's list."""


def missing(message: str) -> None:
    """Skip for a tool that is truly missing; fail in CI, where it must be there."""
    if IN_CI:
        pytest.fail(message + " but CI=true requires it")
    pytest.skip(message)


def run(args: list[str], timeout: float, cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run a command to the end within ``timeout``; fail with its output unless it exits 0."""
    done = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done.stdout


def clean_env() -> dict[str, str]:
    """This environment without what would point a child at the source tree or its venv."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
    return {
        k: v for k, v in os.environ.items() if k not in drop and not k.startswith("BEENERGISED_")
    }


def tracked_files() -> list[str]:
    """The files git tracks, as paths relative to the root of the tree."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        missing("git and a git checkout are needed to copy the tracked files (Debian 'git')")
    out = run(["git", "ls-files", "-z"], 30, ROOT)
    return [name for name in out.split("\0") if name and (ROOT / name).exists()]


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sdist and wheel of a copy of the tracked files (the wheel built from the sdist, as
    ``python -m build`` does by default, so the sdist is proven to build)."""
    for module in ("build", "twine"):
        if importlib.util.find_spec(module) is None:
            missing(f"the Python package {module!r} is not installed (test extras)")
    work = tmp_path_factory.mktemp("packaging")
    source = work / "source"
    for name in tracked_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    run([sys.executable, "-m", "build", "--outdir", str(work / "dist"), str(source)], 120, work)
    return work / "dist"


def only(directory: Path, pattern: str) -> Path:
    (found,) = directory.glob(pattern)
    return found


@pytest.fixture(scope="module")
def venv(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel alone installed; pip resolves its dependencies."""
    target = tmp_path_factory.mktemp("venv") / "venv"
    work = target.parent
    run([sys.executable, "-m", "venv", str(target)], 60, work, clean_env())
    pip = [str(target / "bin" / "python"), "-m", "pip", "install", "--quiet", "--timeout", "30"]
    run([*pip, str(only(dist, "*.whl"))], 180, work, clean_env())
    return target


def test_twine_check_strict_passes_for_both_distributions(dist: Path):
    files = [only(dist, "*.tar.gz"), only(dist, "*.whl")]
    assert [f.name for f in files] == [
        f"beenergised_exporter-{VERSION}.tar.gz",
        f"beenergised_exporter-{VERSION}-py3-none-any.whl",
    ]
    out = run([sys.executable, "-m", "twine", "check", "--strict", *map(str, files)], 60, dist)
    assert out.count("PASSED") == 2, out


def test_sdist_holds_every_tracked_file_a_packager_needs(dist: Path):
    with tarfile.open(only(dist, "*.tar.gz")) as sdist:
        prefix = f"beenergised_exporter-{VERSION}/"
        names = {m.name.removeprefix(prefix) for m in sdist.getmembers() if m.isfile()}
    wanted = {name for name in tracked_files() if not name.startswith(NOT_IN_SDIST)}
    assert wanted - names == set(), "tracked files missing from the sdist (MANIFEST.in)"
    for needed in ("Makefile", "README.md", "CHANGELOG.md", "tests/conftest.py"):
        assert needed in names
    for folder in ("tests/golden/", "prometheus/", "grafana/", "deploy/", "docs/", "bench/"):
        assert any(name.startswith(folder) for name in names), folder
    assert not any("__pycache__" in name for name in names)


def test_the_installed_wheel_is_what_runs(dist: Path, venv: Path):
    """The venv imports the package from its own site-packages, never from the source tree,
    and the wheel holds every module of exporter/."""
    where = run(
        [str(venv / "bin" / "python"), "-c", "import exporter; print(exporter.__file__)"],
        30,
        venv.parent,
        clean_env(),
    )
    assert Path(where.strip()).is_relative_to(venv), where
    with zipfile.ZipFile(only(dist, "*.whl")) as wheel:
        shipped = set(wheel.namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "exporter").rglob("*.py")}
    assert modules - shipped == set()


def test_installed_wheel_serves_the_demo_fleet_and_stops_on_sigterm(venv: Path):
    script = str(venv / "bin" / "beenergised-exporter")
    exporter = Process(
        [script, "--demo", "--web.listen-address=127.0.0.1:0"], clean_env(), cwd=venv.parent
    )
    try:
        port = exporter.wait_for_line(r"listening on 127\.0\.0\.1:(\d+)").group(1)

        def fleet() -> dict | None:
            response = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
            assert response.status_code == 200
            metrics = samples(response.text)
            return (
                metrics if value(metrics, "beenergised_charging_stations", mandant="demo") else None
            )

        metrics = wait_until(fleet, 30, "the demo fleet on /metrics")
        assert value(metrics, "beenergised_charging_stations", mandant="demo") == DEMO_STATIONS
        assert len(matching(metrics, "beenergised_charging_station_info")) == DEMO_STATIONS
        assert value(metrics, "beenergised_up", mandant="demo") == 1
    finally:
        code = exporter.stop()
    assert code == 0, exporter.output


def test_installed_wheel_checks_the_demo(venv: Path):
    script = str(venv / "bin" / "beenergised-exporter")
    out = run([script, "check", "--demo"], 60, venv.parent, clean_env())
    assert str(DEMO_STATIONS) in out, out


def test_installed_wheel_answers_version_with_the_project_version(venv: Path):
    script = str(venv / "bin" / "beenergised-exporter")
    done = subprocess.run(
        [script, "--version"],
        cwd=venv.parent,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    output = done.stdout + done.stderr
    assert re.search(rf"(?<![\w.]){re.escape(VERSION)}(?![\w.])", output), output
