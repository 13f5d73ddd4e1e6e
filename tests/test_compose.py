"""The docker compose demo stack (deploy/compose/) and the Dockerfile, checked without Docker."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path, PurePosixPath

import pytest
import yaml

from exporter.config import load_settings
from exporter.values import DEFAULT_PORT
from tests.dockerfile import DOCKERFILE, final_stage, instructions
from tests.helpers import ROOT, load_script, require_tool

COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
OVERRIDE_EXAMPLE = COMPOSE_DIR / "docker-compose.override.example.yml"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
PROMETHEUS_CONFIG = COMPOSE_DIR / "prometheus.yml"
ALERTMANAGER_CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
DOCKERIGNORE = ROOT / ".dockerignore"
SECRET_PATH = "/run/secrets/beenergised_client_secret"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def services(path: Path = COMPOSE_FILE) -> dict[str, dict]:
    return load(path)["services"]


def bind_mounts(path: Path) -> list[tuple[str, str, str, bool]]:
    """(service, host path as written, container path, read-only) of every bind mount."""
    mounts = []
    for name, service in services(path).items():
        for volume in service.get("volumes", []):
            if isinstance(volume, dict):
                if volume.get("type") == "bind":
                    mounts.append(
                        (name, volume["source"], volume["target"], bool(volume.get("read_only")))
                    )
                continue
            source, target, *mode = volume.split(":")
            if source.startswith((".", "/", "~")):  # otherwise a named volume
                mounts.append((name, source, target, mode == ["ro"]))
    return mounts


def host_path(written: str) -> Path:
    """A host path of a compose file, resolved as compose does: relative to the file's folder."""
    return (COMPOSE_DIR / written).resolve()


def mount_source(service: str, target: str) -> Path:
    sources = [s for name, s, t, _ in bind_mounts(COMPOSE_FILE) if (name, t) == (service, target)]
    assert len(sources) == 1, f"{service} should mount exactly one file at {target}"
    return host_path(sources[0])


def published_ports(service: dict) -> list[tuple[int, int]]:
    """(host port, container port) of each entry of a service's short-syntax `ports`."""
    pairs = []
    for entry in service.get("ports", []):
        *host, container = str(entry).split(":")
        pairs.append((int(host[-1]) if host else int(container), int(container)))
    return pairs


# -- docker-compose.yml -----------------------------------------------------------------------


def test_compose_file_is_compose_spec_with_the_four_services():
    document = load(COMPOSE_FILE)
    assert "version" not in document, "the Compose spec has no version: key (it is obsolete)"
    assert set(document["services"]) == {"exporter", "prometheus", "alertmanager", "grafana"}


@pytest.mark.parametrize(
    "mount",
    bind_mounts(COMPOSE_FILE) + bind_mounts(OVERRIDE_EXAMPLE),
    ids=lambda mount: f"{mount[0]}:{mount[1]}",
)
def test_mounted_host_paths_are_relative_read_only_and_exist_in_the_repository(mount):
    service, written, target, read_only = mount
    assert not PurePosixPath(written).is_absolute() and not written.startswith("~"), (
        f"{service}: {written} must be relative to deploy/compose/ so the stack runs from any "
        "checkout"
    )
    path = host_path(written)
    assert path.is_relative_to(ROOT), f"{service}: {written} resolves outside the repository"
    assert read_only, f"{service}: mount {written} at {target} with :ro"
    assert path.exists(), f"{service}: {written} ({path.relative_to(ROOT)}) does not exist"


def test_images_are_pinned_to_a_version():
    for name, service in services().items():
        if "build" in service and "image" not in service:
            continue
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest" and re.search(r"\d", tag), f"{name}: pin {image} to a version"


def test_exporter_is_built_from_the_dockerfile_and_runs_a_valid_demo_command():
    exporter = services()["exporter"]
    assert host_path(exporter["build"]) == ROOT
    assert DOCKERFILE.is_file()
    assert (DEFAULT_PORT, DEFAULT_PORT) in published_ports(exporter)
    assert "environment" not in exporter and "secrets" not in exporter
    settings = load_settings(exporter["command"], {})  # what the real CLI makes of it
    assert settings.demo
    assert settings.refresh_interval == 30
    assert settings.listen_addresses == (("", DEFAULT_PORT),)


def test_each_service_publishes_its_usual_port():
    expected = {"exporter": DEFAULT_PORT, "prometheus": 9090, "alertmanager": 9093, "grafana": 3000}
    for name, port in expected.items():
        assert (port, port) in published_ports(services()[name]), f"{name} on port {port}"


def test_grafana_gets_provisioning_dashboards_and_anonymous_viewers():
    grafana = services()["grafana"]
    assert mount_source("grafana", "/etc/grafana/provisioning") == ROOT / "grafana/provisioning"
    assert mount_source("grafana", "/var/lib/grafana/dashboards") == ROOT / "grafana/dashboards"
    environment = grafana["environment"]
    assert str(environment["GF_AUTH_ANONYMOUS_ENABLED"]).lower() == "true"
    assert environment["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


# -- running with real credentials ------------------------------------------------------------


def env_example() -> dict[str, str]:
    lines = ENV_EXAMPLE.read_text().splitlines()
    pairs = [line.split("=", 1) for line in lines if line.strip() and not line.startswith("#")]
    return {key.strip(): value.strip() for key, value in pairs}


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, enough for the example files."""

    def substitute(match: re.Match[str]) -> str:
        name, operator, argument = match.group(1, 2, 3)
        if variables.get(name):
            return variables[name]
        assert operator != ":?", f"${{{name}}} is not set: {argument}"
        return argument or ""

    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", substitute, value)


def test_override_example_turns_the_demo_into_a_real_mandant_with_a_secret_file(tmp_path):
    exporter = services(OVERRIDE_EXAMPLE)["exporter"]
    assert "--demo" not in exporter["command"], "compose replaces command: --demo must be gone"
    environment = {
        key: interpolate(str(value), env_example())
        for key, value in exporter["environment"].items()
    }
    assert "BEENERGISED_CLIENT_SECRET" not in environment, "the secret goes in a file"
    assert environment["BEENERGISED_CLIENT_SECRET_FILE"] == SECRET_PATH
    secret_name = Path(SECRET_PATH).name
    assert exporter["secrets"] == [secret_name]
    secret_file = load(OVERRIDE_EXAMPLE)["secrets"][secret_name]["file"]
    assert host_path(secret_file).is_relative_to(COMPOSE_DIR)

    secret = tmp_path / secret_name
    secret.write_text("not-a-real-secret\n")
    environment["BEENERGISED_CLIENT_SECRET_FILE"] = str(secret)
    settings = load_settings(exporter["command"], environment)  # no demo/mandant conflict
    assert not settings.demo
    (mandant,) = settings.mandants
    assert mandant.api_url == env_example()["BEENERGISED_API_URL"]
    assert mandant.client_id == env_example()["BEENERGISED_CLIENT_ID"]


def test_env_example_holds_no_secret():
    assert set(env_example()) == {"BEENERGISED_API_URL", "BEENERGISED_CLIENT_ID"}


@pytest.mark.e2e
@pytest.mark.parametrize(
    "path", [".env", "docker-compose.override.yml", "secrets/beenergised_client_secret"]
)
def test_local_credentials_are_ignored_by_git(path):
    result = subprocess.run(
        ["git", "check-ignore", "--quiet", str(COMPOSE_DIR / path)], cwd=ROOT, timeout=30
    )
    assert result.returncode == 0, f"deploy/compose/{path} would be committed"


# -- prometheus.yml ---------------------------------------------------------------------------


def scrape_targets(config: dict, job: str) -> list[str]:
    (scrape,) = [s for s in config["scrape_configs"] if s["job_name"] == job]
    return [target for static in scrape["static_configs"] for target in static["targets"]]


def test_prometheus_scrapes_the_exporter_as_job_beenergised_and_alerts_to_alertmanager():
    config = load(PROMETHEUS_CONFIG)
    assert config["global"]["scrape_interval"] == "15s"
    assert config["global"]["evaluation_interval"] == "15s"
    # The alert rules select up{job="beenergised"}: the job name is part of their contract.
    assert scrape_targets(config, "beenergised") == [f"exporter:{DEFAULT_PORT}"]
    assert scrape_targets(config, "prometheus") == ["localhost:9090"]
    alertmanagers = config["alerting"]["alertmanagers"]
    targets = [t for am in alertmanagers for s in am["static_configs"] for t in s["targets"]]
    assert targets == ["alertmanager:9093"]
    assert {"exporter", "alertmanager"} <= set(services())


def test_prometheus_loads_its_config_and_the_project_rule_files_from_the_mounts():
    prometheus = services()["prometheus"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert mount_source("prometheus", "/etc/prometheus/prometheus.yml") == PROMETHEUS_CONFIG
    rule_files = load(PROMETHEUS_CONFIG)["rule_files"]
    assert rule_files == ["/etc/prometheus/alerts.yml", "/etc/prometheus/rules.yml"]
    for rule_file in rule_files:
        expected = ROOT / "prometheus" / Path(rule_file).name
        assert mount_source("prometheus", rule_file) == expected


def promtool_check_config(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [require_tool("promtool"), "check", "config", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.e2e
def test_prometheus_config_passes_promtool_syntax_check():
    """--syntax-only leaves out the rule files, which exist only inside the container."""
    result = promtool_check_config("--syntax-only", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.e2e
def test_prometheus_config_passes_promtool_with_the_real_rule_files(tmp_path):
    """promtool reads rule_files, so they point at the files compose mounts there."""
    config = load(PROMETHEUS_CONFIG)
    rules = [mount_source("prometheus", rule_file) for rule_file in config["rule_files"]]
    missing = [str(path.relative_to(ROOT)) for path in rules if not path.exists()]
    if missing:
        pytest.skip(f"rule files not written yet: {', '.join(missing)}")
    config["rule_files"] = [str(path) for path in rules]
    copy = tmp_path / "prometheus.yml"
    copy.write_text(yaml.safe_dump(config))
    result = promtool_check_config(str(copy))
    assert result.returncode == 0, result.stdout + result.stderr


# -- alertmanager.yml -------------------------------------------------------------------------


def test_alertmanager_config_routes_to_a_receiver_it_defines():
    config = load(ALERTMANAGER_CONFIG)
    route = config["route"]
    names = [receiver["name"] for receiver in config["receivers"]]
    assert route["receiver"] in names
    assert len(names) == len(set(names))
    assert route["group_by"] == ["alertname", "mandant"]
    assert mount_source("alertmanager", "/etc/alertmanager/alertmanager.yml") == (
        ALERTMANAGER_CONFIG
    )


@pytest.mark.e2e
def test_alertmanager_config_passes_amtool():
    result = subprocess.run(
        [require_tool("amtool"), "check-config", str(ALERTMANAGER_CONFIG)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- Dockerfile -------------------------------------------------------------------------------


def test_dockerfile_has_a_build_stage_and_a_runtime_stage_on_python_slim():
    bases = [arguments.split()[0] for keyword, arguments in instructions() if keyword == "FROM"]
    assert bases == ["python:3.11-slim", "python:3.11-slim"]
    copies = [arguments for keyword, arguments in final_stage() if keyword == "COPY"]
    assert copies and all(arguments.startswith("--from=") for arguments in copies), (
        "the runtime stage copies only the wheel from the build stage"
    )


def test_dockerfile_uses_only_commands_every_python_image_has():
    """python3 and `python3 -m pip`/`-m venv`: the Debian stand-in that tests/test_image.py
    builds on has no `python`."""
    for keyword, arguments in instructions():
        if keyword == "RUN":
            commands = re.split(r"&&|\|\||;|\|", arguments)
            assert not [c for c in commands if re.match(r"\s*(python|pip3?)\b", c)], arguments


def test_dockerfile_runs_as_a_non_root_user_before_the_entrypoint():
    steps = final_stage()
    keywords = [keyword for keyword, _ in steps]
    assert "USER" in keywords, "the runtime stage must switch to a non-root user"
    user = steps[keywords.index("USER")][1]
    assert user.split(":")[0] == "10001"
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")
    assert keywords.count("USER") == 1


def test_dockerfile_entrypoint_is_the_console_script():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    (entrypoint,) = [json.loads(args) for keyword, args in final_stage() if keyword == "ENTRYPOINT"]
    assert entrypoint == ["/opt/venv/bin/beenergised-exporter"]
    assert Path(entrypoint[0]).name in scripts


def test_dockerfile_exposes_the_port_and_has_a_healthcheck_without_curl():
    steps = final_stage()
    assert ("EXPOSE", str(DEFAULT_PORT)) in steps
    (healthcheck,) = [arguments for keyword, arguments in steps if keyword == "HEALTHCHECK"]
    assert f"http://127.0.0.1:{DEFAULT_PORT}/healthz" in healthcheck
    assert "urllib" in healthcheck
    assert not re.search(r"\b(curl|wget)\b", healthcheck)


def test_dockerfile_labels_and_environment():
    arguments = " ".join(args for keyword, args in final_stage() if keyword in ("LABEL", "ENV"))
    for key in ("title", "description", "source"):
        assert f"org.opencontainers.image.{key}=" in arguments
    license_ = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    assert f'org.opencontainers.image.licenses="{license_}"' in arguments
    # version and revision from build arguments that `make image` and the release both pass
    release = (ROOT / ".github" / "workflows" / "release.yml").read_text()
    image_script = load_script(ROOT / "deploy" / "image.py")
    image_script.revision = lambda: "0" * 40  # git is a process: not in the unit tier
    build_args = image_script.build_args()
    for key, argument in (("version", "VERSION"), ("revision", "REVISION")):
        assert f'org.opencontainers.image.{key}="${{{argument}}}"' in arguments
        assert ("ARG", f'{argument}=""') in final_stage()
        assert argument in build_args and f"            {argument}=${{{{" in release
    assert "PYTHONDONTWRITEBYTECODE=1" in arguments
    assert "PYTHONUNBUFFERED=1" in arguments


def test_dockerfile_pip_keeps_no_cache():
    for keyword, arguments in instructions():
        if keyword == "RUN":
            for command in re.findall(r"pip (?:install|wheel)[^&;]*", arguments):
                assert "--no-cache-dir" in command, command


def test_dockerfile_adds_no_remote_files_and_holds_no_secrets():
    steps = instructions()
    assert not [args for keyword, args in steps if keyword == "ADD" and "://" in args]
    for keyword, arguments in steps:
        if keyword in ("ENV", "ARG"):
            names = re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)(?==|\s|$)", arguments)
            secrets = [n for n in names if re.search(r"SECRET|PASSWORD|TOKEN|API_KEY", n, re.I)]
            assert not secrets, f"{keyword} {arguments}: secrets do not belong in an image"
    assert "demo-secret" not in DOCKERFILE.read_text()


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` (or a folder holding it) out of the build context."""
    excluded = False
    for pattern in dockerignore_patterns():
        negated = pattern.startswith("!")
        glob = pattern.lstrip("!").strip("/")
        regex = re.escape(glob).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        regex = re.sub(r"\\\[(.*?)\\\]", lambda m: f"[{m.group(1)}]", regex)
        parts = PurePosixPath(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


def build_stage_sources() -> list[str]:
    """What the build stage copies from the build context."""
    sources = []
    for keyword, arguments in instructions():
        if keyword == "COPY" and not arguments.startswith("--from="):
            sources += arguments.split()[:-1]
    return sources


def test_dockerignore_keeps_what_the_build_needs():
    assert build_stage_sources() == [
        "pyproject.toml",
        "setup.py",
        "README.md",
        "LICENSE",
        "exporter",
    ]
    needed = [
        *build_stage_sources()[:-1],
        *(str(p.relative_to(ROOT)) for p in ROOT.glob("exporter/*.py")),
    ]
    assert not [path for path in needed if dockerignored(path)]


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        ".pytest_cache/v/cache/lastfailed",
        ".ruff_cache/CACHEDIR.TAG",
        ".hypothesis/examples/x",
        "exporter/__pycache__/cli.cpython-311.pyc",
        "beenergised_exporter.egg-info/PKG-INFO",
        "tests/test_compose.py",
        "deploy/compose/docker-compose.yml",
        "deploy/compose/secrets/beenergised_client_secret",
        "grafana/dashboards/fleet.json",
        ".env",
    ],
)
def test_dockerignore_keeps_the_rest_out_of_the_build_context(path):
    assert dockerignored(path)


@pytest.mark.e2e
def test_build_stage_sources_make_a_wheel_with_the_console_script(tmp_path):
    """What stage 1 does, on exactly the files it copies (offline: the test extras bring
    setuptools, so no build environment is downloaded)."""
    context = tmp_path / "src"
    for source in build_stage_sources():
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, context / source, ignore=lambda *_: ["__pycache__"])
        else:
            context.mkdir(exist_ok=True)
            shutil.copy(ROOT / source, context / source)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            "wheels",
            ".",
        ],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (context / "wheels").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        assert "beenergised-exporter = exporter.cli:main" in archive.read(entry_points).decode()
    sources = {path.relative_to(ROOT).as_posix() for path in (ROOT / "exporter").rglob("*.py")}
    assert "exporter/simulator/server.py" in sources
    assert sources <= set(names), "every module, subpackages too, is in the wheel"


@pytest.mark.e2e
def test_healthcheck_command_passes_on_a_running_exporter_and_fails_without_one(
    exporter_process,
):
    (healthcheck,) = [args for keyword, args in final_stage() if keyword == "HEALTHCHECK"]
    command = json.loads(healthcheck[healthcheck.index("CMD") + 3 :])
    assert command[0] == "/opt/venv/bin/python"
    exporter = exporter_process(["--demo"], {})
    here = exporter.url.removeprefix("http://")
    probe = [
        sys.executable,
        *(arg.replace(f"127.0.0.1:{DEFAULT_PORT}", here) for arg in command[1:]),
    ]
    assert subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
    assert exporter.stop() == 0
    assert subprocess.run(probe, capture_output=True, timeout=30).returncode != 0
