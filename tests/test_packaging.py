"""What a release publishes: the sdist and the wheel built with ``python -m build`` from a clean
copy of the tracked files, checked with ``twine check --strict``, the wheel installed alone
into a fresh virtualenv (its dependencies from the configured package index) and run from
there, as the README's operator quickstart says. This catches a module or a data file that the
package forgot, and a licence or metadata that the package index would not show."""

from __future__ import annotations

import email.message
import email.parser
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
from tests.helpers import (
    IN_CI,
    ROOT,
    Process,
    matching,
    rendered_links,
    samples,
    value,
    wait_until,
)

pytestmark = pytest.mark.e2e

PROJECT: dict = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
VERSION: str = PROJECT["version"]
DIST_INFO = f"beenergised_exporter-{VERSION}.dist-info"
SDIST_ROOT = f"beenergised_exporter-{VERSION}/"
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
        names = {m.name.removeprefix(SDIST_ROOT) for m in sdist.getmembers() if m.isfile()}
    wanted = {name for name in tracked_files() if not name.startswith(NOT_IN_SDIST)}
    assert wanted - names == set(), "tracked files missing from the sdist (MANIFEST.in)"
    for needed in ("Makefile", "README.md", "CHANGELOG.md", "LICENSE", "tests/conftest.py"):
        assert needed in names
    folders = ("tests/golden/", "prometheus/", "grafana/", "deploy/", "docs/", "bench/")
    for folder in (*folders, "examples/"):
        assert any(name.startswith(folder) for name in names), folder
    assert not any("__pycache__" in name for name in names)


def parse_metadata(raw: bytes) -> email.message.Message:
    """Core metadata (METADATA, PKG-INFO): headers, and the long description as the body."""
    return email.parser.BytesParser().parsebytes(raw)


def wheel_metadata(dist: Path) -> email.message.Message:
    with zipfile.ZipFile(only(dist, "*.whl")) as wheel:
        return parse_metadata(wheel.read(f"{DIST_INFO}/METADATA"))


def test_wheel_and_sdist_carry_the_licence_and_its_spdx_expression(dist: Path):
    """PEP 639: the licence file in the wheel's .dist-info/licenses/, named by License-File,
    and the SPDX expression in License-Expression (no License :: classifier beside it)."""
    licence = (ROOT / "LICENSE").read_bytes()
    assert licence.lstrip().startswith(b"Apache License")
    assert b"Version 2.0, January 2004" in licence and b"END OF TERMS AND CONDITIONS" in licence
    with zipfile.ZipFile(only(dist, "*.whl")) as wheel:
        assert wheel.read(f"{DIST_INFO}/licenses/LICENSE") == licence
    with tarfile.open(only(dist, "*.tar.gz")) as sdist:
        shipped = sdist.extractfile(SDIST_ROOT + "LICENSE")
        pkg_info = sdist.extractfile(SDIST_ROOT + "PKG-INFO")
        assert shipped is not None and pkg_info is not None
        assert shipped.read() == licence
        sdist_metadata = parse_metadata(pkg_info.read())
    for metadata in (wheel_metadata(dist), sdist_metadata):
        assert tuple(map(int, metadata["Metadata-Version"].split("."))) >= (2, 4)
        assert metadata["License-Expression"] == PROJECT["license"] == "Apache-2.0"
        assert metadata.get_all("License-File") == ["LICENSE"]
        assert not [c for c in metadata.get_all("Classifier") if c.startswith("License ::")]


def test_wheel_metadata_names_project_urls_classifiers_and_keywords(dist: Path):
    metadata = wheel_metadata(dist)
    urls = dict(entry.split(", ", 1) for entry in metadata.get_all("Project-URL"))
    assert urls == PROJECT["urls"]
    assert {"Source", "Issues", "Documentation", "Changelog"} <= urls.keys()
    assert all(url.startswith(urls["Source"]) for url in urls.values())
    classifiers = metadata.get_all("Classifier")
    oldest = PROJECT["requires-python"].removeprefix(">=")
    assert f"Programming Language :: Python :: {oldest}" in classifiers
    assert "Topic :: System :: Monitoring" in classifiers
    assert {"prometheus", "exporter"} <= set(metadata["Keywords"].split(","))


def test_the_package_index_shows_the_whole_readme_with_no_relative_link(dist: Path):
    """The description the wheel carries: README.md, its links absolute (setup.py)."""
    metadata = wheel_metadata(dist)
    assert metadata["Description-Content-Type"].startswith("text/markdown")
    description = metadata.get_payload()
    readme = (ROOT / "README.md").read_text()
    assert description.splitlines()[:3] == readme.splitlines()[:3]
    assert len(description.splitlines()) == len(readme.splitlines()), "the README whole"
    links = rendered_links(description)
    assert len(links) > 40, "the link search found too little"
    relative = [link for link in links if not re.match(r"(https?|mailto):", link)]
    assert not relative, f"links that lead nowhere on the package index: {relative}"


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


def operator_quickstart() -> list[str]:
    """The commands of the README's operator quickstart (the shell block that installs the
    package), comments dropped."""
    blocks = re.findall(r"^```sh\n(.*?)^```", (ROOT / "README.md").read_text(), re.M | re.S)
    (block,) = [block for block in blocks if "pipx install" in block]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def test_the_readme_operator_quickstart_works_step_by_step(venv: Path, simulator_process, tmp_path):
    """Install (the venv has the wheel, as pipx would), set the mandant, `check`, run: each
    step of the README, against the simulator in place of the real API. The test adds only
    the simulator's token URL and a free port."""
    simulator = simulator_process("--stations", "37")
    secret = tmp_path / "client-secret"
    secret.write_text("demo-secret\n")
    values = {
        "BEENERGISED_API_URL": simulator.url,
        "BEENERGISED_CLIENT_ID": "demo-client",
        "BEENERGISED_CLIENT_SECRET_FILE": str(secret),
    }
    env = clean_env() | {"BEENERGISED_TOKEN_URL": simulator.url + "/oauth2/token"}
    script = str(venv / "bin" / "beenergised-exporter")
    steps = operator_quickstart()
    assert steps[0] == f"pipx install {PROJECT['name']}"
    assert steps[-2:] == ["beenergised-exporter check", "beenergised-exporter"]
    for step in steps[1:-2]:
        name, _, example = step.removeprefix("export ").partition("=")
        assert step.startswith("export ") and example, f"a step this test does not know: {step}"
        env[name] = values.pop(name)
    assert not values, f"the quickstart does not set {sorted(values)}"

    checked = subprocess.run(
        [script, "check"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert re.search(r"stations\s+37\b", checked.stdout), checked.stdout

    exporter = Process([script, "--web.listen-address=127.0.0.1:0"], env, cwd=tmp_path)
    try:
        port = exporter.wait_for_line(r"listening on 127\.0\.0\.1:(\d+)").group(1)

        def stations() -> float | None:
            response = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
            assert response.status_code == 200
            metrics = samples(response.text)
            return value(metrics, "beenergised_charging_stations", mandant="127.0.0.1")

        assert wait_until(stations, 30, "the fleet on /metrics") == 37
    finally:
        assert exporter.stop() == 0, exporter.output
