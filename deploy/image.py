"""Build the container image from the Dockerfile with buildah, without a registry (`make image`).

tests/test_image.py builds the image with these same functions. Nothing is pulled from a
container registry: the Dockerfile's base image (python:3.11-slim) is replaced by a stand-in,
Debian bookworm from debootstrap with python3, python3-venv and python3-pip, tagged with the
name the Dockerfile's FROM uses. The stand-in and buildah's storage are kept under CACHE_DIR,
so only the first build on a machine pays for debootstrap (about a minute). pip in the build
stage still fetches the dependencies' wheels from the configured package index.

The image is labelled with the project's version and the git commit (the Dockerfile's VERSION
and REVISION build arguments, as the release workflow sets them) and written to a
docker-archive that `docker load` and `podman load` read. Needs root, buildah and debootstrap
(buildah builds with chroot isolation). With a registry at hand, build as the Dockerfile's
header says instead: that uses the real base image.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
CACHE_DIR = Path("/var/cache/beenergised-exporter-ci")  # the stand-in and buildah's storage
RUN_ROOT = Path("/run/beenergised-exporter-ci")  # buildah's locks and mounts
BUILDAH = [
    "buildah",
    "--root",
    str(CACHE_DIR / "containers"),
    "--runroot",
    str(RUN_ROOT),
    "--storage-driver",
    "vfs",  # works everywhere, overlay mounts need not
]
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
STANDIN_PACKAGES = ("python3", "python3-venv", "python3-pip")
# The stand-in trusts the CA certificates this machine added (e.g. of a TLS-inspecting proxy
# on the way to PyPI), so that pip in the build reaches PyPI as the host does.
LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")
STANDIN_RECIPE = 1  # bump when the recipe below changes, to rebuild cached stand-ins
STANDIN_LABEL = "io.beenergised-exporter.ci-standin"


class BuildError(Exception):
    """A step of the build failed; the message says which and what it printed."""


def run(args: list[str], timeout: float, what: str) -> str:
    """Run a command to the end; its stdout, or BuildError with its output."""
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise BuildError(
            f"{what} failed (exit {result.returncode}):\n{result.stdout}{result.stderr}"
        )
    return result.stdout


def buildah(*args: str, timeout: float = 120, check: bool = True) -> str:
    """buildah on this project's storage; raises BuildError when ``check`` and it fails."""
    if check:
        return run([*BUILDAH, *args], timeout, f"buildah {' '.join(args[:2])}")
    result = subprocess.run([*BUILDAH, *args], capture_output=True, text=True, timeout=timeout)
    return result.stdout


def inspect_image(name: str) -> dict | None:
    output = buildah("inspect", "--type", "image", name, check=False)
    return json.loads(output) if output.strip() else None


def image_labels(inspected: dict) -> dict[str, str]:
    return inspected["Docker"]["config"].get("Labels") or {}


def base_image() -> str:
    """The Dockerfile's base image, fully qualified as buildah resolves it."""
    (base,) = set(re.findall(r"^FROM\s+(\S+)", DOCKERFILE.read_text(), re.MULTILINE))
    return base if "/" in base else f"docker.io/library/{base}"


def version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def revision() -> str:
    """The git commit of the tree, or "unknown" outside a git checkout."""
    try:
        return run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], 30, "git rev-parse").strip()
    except (BuildError, OSError):
        return "unknown"


def build_args() -> dict[str, str]:
    """The Dockerfile's build arguments: what the image's OCI labels say."""
    return {"VERSION": version(), "REVISION": revision()}


@contextlib.contextmanager
def locked() -> Iterator[None]:
    """One stand-in build at a time per machine."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    RUN_ROOT.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# -- the stand-in base image ------------------------------------------------------------------


def standin_key() -> str:
    recipe = [DEBIAN_SUITE, DEBIAN_MIRROR, *STANDIN_PACKAGES, str(STANDIN_RECIPE)]
    for certificate in sorted(LOCAL_CA_DIR.glob("**/*.crt")):
        recipe.append(certificate.read_text())
    return hashlib.sha256("\n".join(recipe).encode()).hexdigest()[:16]


def debootstrap_rootfs(tarball: Path) -> None:
    """Debian with Python as the official image has it: pip may install, no docs or apt lists."""
    partial = tarball.with_suffix(".partial")
    with tempfile.TemporaryDirectory(dir=CACHE_DIR) as work:
        rootfs = Path(work) / "rootfs"
        try:
            make_rootfs(rootfs)
            run(
                ["tar", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-cf", str(partial), "."],
                300,
                "tar of the stand-in",
            )
        finally:
            unmount_below(rootfs)  # a failed debootstrap may leave /proc mounted in it
    partial.replace(tarball)


def unmount_below(path: Path) -> None:
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(f"{path}/")), reverse=True):
        subprocess.run(["umount", "--lazy", mount], capture_output=True, timeout=60)


def make_rootfs(rootfs: Path) -> None:
    packages = ",".join(STANDIN_PACKAGES)
    command = ["debootstrap", "--variant=minbase", f"--include={packages}"]
    run([*command, DEBIAN_SUITE, str(rootfs), DEBIAN_MIRROR], 900, "debootstrap")
    for marker in rootfs.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
        marker.unlink()
    for certificate in LOCAL_CA_DIR.glob("**/*.crt"):
        target = rootfs / certificate.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(certificate, target)
    run(["chroot", str(rootfs), "update-ca-certificates"], 120, "update-ca-certificates")
    clutter = [*rootfs.glob("var/cache/apt/archives/*.deb"), *rootfs.glob("var/lib/apt/lists/*_*")]
    for path in clutter:
        path.unlink()
    for folder in ("usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/info"):
        shutil.rmtree(rootfs / folder, ignore_errors=True)


def ensure_standin(image: str) -> None:
    """Tag a stand-in for ``image`` in buildah's storage unless the current one is there.
    Call it under :func:`locked`."""
    key = standin_key()
    existing = inspect_image(image)
    if existing is not None and image_labels(existing).get(STANDIN_LABEL) == key:
        return
    context = CACHE_DIR / f"standin-{key}"
    context.mkdir(parents=True, exist_ok=True)
    tarball = context / "rootfs.tar"
    if not tarball.exists():
        debootstrap_rootfs(tarball)
    (context / "Containerfile").write_text(
        "FROM scratch\n"
        "ADD rootfs.tar /\n"
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8\n"
        f'LABEL {STANDIN_LABEL}="{key}"\n'
        'CMD ["python3"]\n'
    )
    build_from(context / "Containerfile", context, image, timeout=600)
    for stale in CACHE_DIR.glob("standin-*"):
        if stale != context:
            shutil.rmtree(stale, ignore_errors=True)


# -- the image --------------------------------------------------------------------------------


def build_from(file: Path, context: Path, tag: str, *arguments: str, timeout: float) -> None:
    """``buildah bud`` offline (no pull, chroot isolation) in Docker format: OCI images have no
    HEALTHCHECK."""
    buildah(
        "bud",
        "--isolation",
        "chroot",
        "--pull=never",
        "--format",
        "docker",
        *arguments,
        "--tag",
        tag,
        "--file",
        str(file),
        str(context),
        timeout=timeout,
    )


def build(tag: str) -> None:
    """Build the Dockerfile unchanged as ``tag``, on the base image already in the storage."""
    arguments = [f"--build-arg={name}={value}" for name, value in build_args().items()]
    build_from(DOCKERFILE, ROOT, tag, *arguments, timeout=900)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="deploy/image.py", description=__doc__.split("\n")[0])
    parser.add_argument("--tag", default=f"localhost/beenergised-exporter:{version()}")
    parser.add_argument(
        "--archive",
        type=Path,
        default=ROOT / "dist" / f"beenergised-exporter-image-{version()}.tar",
        help="the docker-archive written (for docker load / podman load)",
    )
    args = parser.parse_args(argv)
    missing = [tool for tool in ("buildah", "debootstrap") if shutil.which(tool) is None]
    if missing:
        print(
            f"image.py: needs {' and '.join(missing)} (Debian packages of those names)",
            file=sys.stderr,
        )
        return 2
    if os.geteuid() != 0:
        print("image.py: needs root (buildah with chroot isolation, debootstrap)", file=sys.stderr)
        return 2
    try:
        with locked():
            ensure_standin(base_image())
        build(args.tag)
        args.archive.parent.mkdir(parents=True, exist_ok=True)
        args.archive.unlink(missing_ok=True)
        buildah("push", args.tag, f"docker-archive:{args.archive}:{args.tag}", timeout=600)
    except BuildError as error:
        print(f"image.py: {error}", file=sys.stderr)
        return 1
    labels = ", ".join(f"{name} {value}" for name, value in build_args().items())
    print(f"built {args.tag} ({labels})")
    print(f"wrote {args.archive}: docker load -i {args.archive} (or podman load -i)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
