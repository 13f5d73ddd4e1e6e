"""Deployment files: the Kubernetes manifests (deploy/kubernetes/: a base for any cluster and
an overlay adding the Prometheus Operator's resources) and the systemd unit (deploy/systemd/),
checked against the exporter they deploy; and the PrometheusRule that `make rules`
(deploy/prometheusrule.py) writes from prometheus/alerts.yml.
"""

from __future__ import annotations

import functools
import re
import subprocess
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
import requests
import yaml

from exporter.config import load_settings
from exporter.values import DEFAULT_PORT, parse_duration
from tests.dockerfile import final_stage
from tests.helpers import IN_CI, ROOT, load_script, require_tool, wait_until

KUBERNETES_DIR = ROOT / "deploy" / "kubernetes"
BASE_DIR = KUBERNETES_DIR / "base"  # applies on any cluster
OPERATOR_DIR = KUBERNETES_DIR / "prometheus-operator"  # the base and the operator's resources
KUSTOMIZATIONS = (BASE_DIR, OPERATOR_DIR)
SYSTEMD_DIR = ROOT / "deploy" / "systemd"
ALERTS = ROOT / "prometheus" / "alerts.yml"
PROMETHEUS_RULE = OPERATOR_DIR / "prometheusrule.yaml"
SECRET_EXAMPLE = BASE_DIR / "secret.example.yaml"
PERFORMANCE = ROOT / "docs" / "performance.md"
UNIT = SYSTEMD_DIR / "beenergised-exporter.service"
SOCKET_UNIT = SYSTEMD_DIR / "beenergised-exporter.socket"
ENV_EXAMPLE = SYSTEMD_DIR / "beenergised-exporter.env.example"
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}  # CRDs of the Prometheus Operator
CORE_API_VERSIONS = {"v1", "apps/v1", "networking.k8s.io/v1"}  # built into every cluster


def rule_generator() -> ModuleType:
    """deploy/prometheusrule.py, which `make rules` runs."""
    return load_script(ROOT / "deploy" / "prometheusrule.py")


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def manifest_files(directory: Path | None = None) -> list[Path]:
    """The manifests of one kustomization directory, or of all."""
    directories = KUSTOMIZATIONS if directory is None else (directory,)
    return sorted(
        path
        for folder in directories
        for path in folder.glob("*.yaml")
        if path.name != "kustomization.yaml"
    )


def manifest(kind: str) -> dict:
    (found,) = [load(path) for path in manifest_files() if load(path)["kind"] == kind]
    return found


def kustomization(directory: Path = BASE_DIR) -> dict:
    return load(directory / "kustomization.yaml")


def deployment() -> dict:
    return manifest("Deployment")


def pod_spec() -> dict:
    return deployment()["spec"]["template"]["spec"]


def exporter_container() -> dict:
    (container,) = pod_spec()["containers"]
    return container


def image_user() -> tuple[int, int]:
    """uid and gid of the Dockerfile's USER."""
    (user,) = [arguments for keyword, arguments in final_stage() if keyword == "USER"]
    uid, gid = user.split(":")
    return int(uid), int(gid)


def alerts_job() -> str:
    """The scrape job name the alert rules select with up{job=...}."""
    (job,) = set(re.findall(r'up\{job="([^"]+)"\}', ALERTS.read_text()))
    return job


# -- every manifest ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", manifest_files(), ids=lambda path: path.name)
def test_manifest_has_api_version_kind_name_and_labels(path: Path):
    documents = list(yaml.safe_load_all(path.read_text()))
    assert len(documents) == 1, f"{path.name}: one resource per file"
    (resource,) = documents
    assert re.fullmatch(r"([a-z0-9.-]+/)?v\d+(alpha\d+|beta\d+)?", resource["apiVersion"])
    assert resource["kind"]
    assert resource["metadata"]["name"] == "beenergised-exporter"
    assert "namespace" not in resource["metadata"], "the namespace is the user's choice"
    assert resource["metadata"]["labels"]["app.kubernetes.io/name"] == "beenergised-exporter"


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda path: path.name)
def test_kustomization_lists_every_manifest_but_the_secret_example(directory: Path):
    """Applying the directory again must never replace the real secret with the placeholder."""
    resources = [r for r in kustomization(directory)["resources"] if not r.startswith("../")]
    expected = [p.name for p in manifest_files(directory) if p != SECRET_EXAMPLE]
    assert sorted(resources) == expected
    assert SECRET_EXAMPLE.name not in resources


def test_the_base_holds_no_custom_resource_and_the_overlay_adds_the_operators():
    """The base applies on a cluster without the Prometheus Operator's CRDs."""
    base = {load(BASE_DIR / name)["kind"] for name in kustomization()["resources"]}
    assert base == {"Namespace", "ConfigMap", "Deployment", "Service", "NetworkPolicy"}
    overlay = kustomization(OPERATOR_DIR)["resources"]
    assert "../base" in overlay
    added = {load(OPERATOR_DIR / name)["kind"] for name in overlay if name != "../base"}
    assert added == OPERATOR_KINDS


def test_the_namespace_is_set_once_and_the_base_creates_it():
    namespace = kustomization()["namespace"]
    assert kustomization(OPERATOR_DIR)["namespace"] == namespace
    created = manifest("Namespace")
    assert created["metadata"]["name"] == namespace
    assert created["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_the_overlay_labels_the_custom_resources_for_kube_prometheus_stack():
    """kube-prometheus-stack's Prometheus selects ServiceMonitors and PrometheusRules by
    `release: <Helm release>`; the overlay patches exactly the operator's kinds."""
    (patch,) = kustomization(OPERATOR_DIR)["patches"]
    assert patch["target"] == {"group": "monitoring.coreos.com"}
    (operation,) = yaml.safe_load(patch["patch"])
    assert operation == {
        "op": "add",
        "path": "/metadata/labels/release",
        "value": "kube-prometheus-stack",
    }
    documented = (ROOT / "docs" / "deployment.md").read_text()
    assert "release: <" in documented and "deploy/kubernetes/prometheus-operator" in documented


def test_kustomization_image_is_the_released_image_of_the_project_version():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    repository = project["urls"]["Source"].removeprefix("https://github.com/")
    (image,) = kustomization()["images"]
    assert image["name"] == exporter_container()["image"].split(":")[0]
    assert image["newName"] == f"ghcr.io/{repository.lower()}"  # as the release workflow pushes
    assert image["newTag"] == project["version"]
    assert exporter_container()["image"] == f"beenergised-exporter:{project['version']}"


def kubernetes_validate():
    try:
        import kubernetes_validate  # a test extra: the other tests run without it
    except ImportError:
        message = "kubernetes-validate is not installed (PyPI; in the test extras)"
        if IN_CI:
            pytest.fail(message + " but CI=true requires it")
        pytest.skip(message)
    return kubernetes_validate


def kubernetes_versions() -> list[str]:
    """The oldest and the newest Kubernetes whose schemas kubernetes-validate ships."""
    validator = kubernetes_validate()
    versions = sorted(validator.utils.all_versions(), key=lambda v: tuple(map(int, v.split("."))))
    return [versions[0], versions[-1]]


@pytest.mark.parametrize(
    "path",
    [path for path in manifest_files() if load(path)["kind"] not in OPERATOR_KINDS],
    ids=lambda path: path.name,
)
def test_manifest_passes_kubernetes_validate_strictly(path: Path):
    """Kubernetes' own OpenAPI schemas, offline, rejecting unknown fields (a typo of
    readOnlyRootFilesystem would otherwise be silently ignored by the cluster). The Prometheus
    Operator's kinds have no schema there: the tests below check them field by field."""
    validator = kubernetes_validate()
    resource = load(path)
    for version in kubernetes_versions():
        validator.validate(resource, version, strict=True)


@functools.cache
def rendered(directory: Path) -> tuple[dict, ...]:
    """The objects `kubectl kustomize` renders of a kustomization directory."""
    kubectl = require_tool("kubectl")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return tuple(yaml.safe_load_all(result.stdout))


@pytest.mark.e2e
def test_kustomize_renders_the_base_in_its_namespace_without_custom_resources():
    built = rendered(BASE_DIR)
    assert sorted(r["kind"] for r in built) == sorted(
        load(BASE_DIR / name)["kind"] for name in kustomization()["resources"]
    )
    assert not [r["kind"] for r in built if r["apiVersion"] not in CORE_API_VERSIONS]
    (namespace,) = [r["metadata"]["name"] for r in built if r["kind"] == "Namespace"]
    assert {r["metadata"].get("namespace") for r in built if r["kind"] != "Namespace"} == {
        namespace
    }
    (built_deployment,) = [r for r in built if r["kind"] == "Deployment"]
    (container,) = built_deployment["spec"]["template"]["spec"]["containers"]
    (image,) = kustomization()["images"]
    assert container["image"] == f"{image['newName']}:{image['newTag']}"


@pytest.mark.e2e
def test_kustomize_renders_the_overlay_as_the_base_plus_the_labelled_custom_resources():
    base, overlay = rendered(BASE_DIR), rendered(OPERATOR_DIR)
    core = [r for r in overlay if r["kind"] not in OPERATOR_KINDS]
    assert sorted(core, key=str) == sorted(base, key=str), "the overlay changes no base object"
    custom = [r for r in overlay if r["kind"] in OPERATOR_KINDS]
    assert sorted(r["kind"] for r in custom) == sorted(OPERATOR_KINDS)
    (namespace,) = [r["metadata"]["name"] for r in base if r["kind"] == "Namespace"]
    for resource in custom:
        assert resource["apiVersion"] == "monitoring.coreos.com/v1"
        assert resource["metadata"]["namespace"] == namespace
        assert resource["metadata"]["labels"]["release"] == "kube-prometheus-stack"


@pytest.mark.e2e
@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda path: path.name)
def test_rendered_core_objects_pass_kubernetes_validate_strictly(directory: Path):
    """What a cluster receives, namespace and image set, against Kubernetes' schemas."""
    validator = kubernetes_validate()
    core = [r for r in rendered(directory) if r["kind"] not in OPERATOR_KINDS]
    assert len(core) == len(kustomization()["resources"])
    for resource in core:
        for version in kubernetes_versions():
            validator.validate(resource, version, strict=True)


# -- Deployment -------------------------------------------------------------------------------


def test_deployment_runs_as_the_image_user_without_privileges():
    uid, gid = image_user()
    pod = pod_spec()
    container = exporter_container()
    for context in (pod["securityContext"], container["securityContext"]):
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] == uid
        assert context["runAsGroup"] == gid
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["fsGroup"] == gid
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert "privileged" not in security and "add" not in security["capabilities"]
    assert pod["automountServiceAccountToken"] is False
    assert not pod.get("hostNetwork") and not pod.get("hostPID")


def test_deployment_selects_its_pods():
    spec = deployment()["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert spec["replicas"] == 1, "replicas of one configuration would only read the API twice"


def test_deployment_port_and_probes_match_the_exporter():
    container = exporter_container()
    (port,) = container["ports"]
    assert port == {"name": "metrics", "containerPort": DEFAULT_PORT, "protocol": "TCP"}
    liveness = container["livenessProbe"]["httpGet"]
    readiness = container["readinessProbe"]["httpGet"]
    assert (liveness["path"], liveness["port"]) == ("/healthz", "metrics")
    assert (readiness["path"], readiness["port"]) == ("/readyz", "metrics")
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["timeoutSeconds"] < container[probe]["periodSeconds"]


@pytest.mark.e2e
def test_probe_paths_answer_on_a_real_exporter(exporter_process):
    exporter = exporter_process(["--demo"], {})
    container = exporter_container()
    liveness = container["livenessProbe"]["httpGet"]["path"]
    assert requests.get(exporter.url + liveness, timeout=5).status_code == 200, liveness
    # Ready once the first refresh has published: on a busy machine that comes after listening.
    readiness = container["readinessProbe"]["httpGet"]["path"]
    wait_until(
        lambda: requests.get(exporter.url + readiness, timeout=5).status_code == 200,
        what=f"{readiness} to answer 200 after the first refresh",
    )


def measured_peak(stations: str) -> float:
    """Peak RSS in bytes at a fleet size, from the one place that states it:
    docs/performance.md's Memory table."""
    (mib,) = re.findall(rf"^\| {stations} \| (\d+) MiB", PERFORMANCE.read_text(), re.MULTILINE)
    return int(mib) * 2**20


def quantity(value: str) -> float:
    """A Kubernetes quantity (cpu: 25m, 1; memory: 64Mi, 1Gi) as a number."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "": 1}
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]*)", str(value)).groups()
    return float(number) * units[unit]


def test_deployment_requests_and_limits_cover_the_measured_memory():
    resources = exporter_container()["resources"]
    for resource in ("cpu", "memory"):
        request = quantity(resources["requests"][resource])
        limit = quantity(resources["limits"][resource])
        assert 0 < request <= limit, resource
    assert quantity(resources["requests"]["memory"]) >= measured_peak("10,000")
    assert quantity(resources["limits"]["memory"]) >= measured_peak("100,000")


def test_unit_memory_limit_covers_the_measured_memory():
    assert quantity(unit_value("Service", "MemoryMax").replace("M", "Mi")) >= measured_peak(
        "100,000"
    )


def test_client_secret_is_a_mounted_file_named_by_the_environment():
    container = exporter_container()
    environment = {e["name"]: e for e in container["env"]}
    assert "BEENERGISED_CLIENT_SECRET" not in environment, "the secret goes in a file"
    secret_file = Path(environment["BEENERGISED_CLIENT_SECRET_FILE"]["value"])
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(secret_file.parent)]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod_spec()["volumes"] if v["name"] == mount["name"]]
    secret = load(SECRET_EXAMPLE)
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    (item,) = volume["secret"]["items"]
    assert item["path"] == secret_file.name
    assert item["key"] in secret["stringData"]
    assert volume["secret"]["defaultMode"] & 0o040, "readable by the group (fsGroup)"
    assert not volume["secret"]["defaultMode"] & 0o007, "not readable by others"


def test_secret_example_holds_only_a_placeholder():
    secret = load(SECRET_EXAMPLE)
    assert secret["kind"] == "Secret" and secret["type"] == "Opaque"
    (value,) = secret["stringData"].values()
    assert "REPLACE" in value
    assert "demo-secret" not in SECRET_EXAMPLE.read_text()


@pytest.mark.e2e
@pytest.mark.parametrize("path", ["client-secret", "secret.yaml"])
def test_local_secret_files_are_ignored_by_git(path):
    result = subprocess.run(
        ["git", "check-ignore", "--quiet", str(BASE_DIR / path)], cwd=ROOT, timeout=30
    )
    assert result.returncode == 0, f"deploy/kubernetes/base/{path} would be committed"


def test_configmap_and_secret_make_valid_settings(tmp_path):
    """What the container gets: the ConfigMap as environment plus the mounted secret file."""
    container = exporter_container()
    (source,) = container["envFrom"]
    configmap = manifest("ConfigMap")
    assert source["configMapRef"]["name"] == configmap["metadata"]["name"]
    assert not [key for key in configmap["data"] if re.search("SECRET|PASSWORD", key)]
    secret = tmp_path / "client-secret"
    secret.write_text("not-a-real-secret\n")
    environment = dict(configmap["data"])
    environment["BEENERGISED_CLIENT_SECRET_FILE"] = str(secret)
    settings = load_settings(container.get("args", []), environment)
    (mandant,) = settings.mandants
    assert mandant.api_url == configmap["data"]["BEENERGISED_API_URL"]
    assert settings.listen_addresses == (("", DEFAULT_PORT),)


# -- Service, ServiceMonitor, PrometheusRule --------------------------------------------------


def test_service_exposes_the_metrics_port_of_the_pods():
    service = manifest("Service")
    pod_labels = deployment()["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port == {
        "name": "metrics",
        "port": DEFAULT_PORT,
        "targetPort": "metrics",
        "protocol": "TCP",
    }
    # Scraped before the first successful refresh too, so failures reach the alerts.
    assert service["spec"]["publishNotReadyAddresses"] is True


def test_networkpolicy_lets_scrapers_in_and_the_exporter_out_to_dns_and_https_only():
    policy = manifest("NetworkPolicy")["spec"]
    pod_labels = deployment()["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    (ingress,) = policy["ingress"]
    assert ingress["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert [p["name"] for p in exporter_container()["ports"]] == ["metrics"]
    egress = {(p["port"], p["protocol"]) for rule in policy["egress"] for p in rule["ports"]}
    assert egress == {(53, "UDP"), (53, "TCP"), (443, "TCP")}
    api_url = manifest("ConfigMap")["data"]["BEENERGISED_API_URL"]
    assert api_url.startswith("https://") and ":" not in api_url.removeprefix("https://")


def test_servicemonitor_scrapes_the_service_as_the_job_the_alerts_expect():
    monitor = manifest("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service = manifest("Service")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in [port["name"] for port in service["spec"]["ports"]]
    assert endpoint["path"] == "/metrics"
    jobs = [r for r in endpoint["relabelings"] if r.get("targetLabel") == "job"]
    assert jobs == [{"action": "replace", "targetLabel": "job", "replacement": alerts_job()}]
    assert parse_duration(endpoint["scrapeTimeout"]) < parse_duration(endpoint["interval"])


def test_prometheusrule_groups_are_identical_to_alerts_yml():
    rule = load(PROMETHEUS_RULE)
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == load(ALERTS)["groups"], (
        "prometheus/alerts.yml changed: run `make rules`"
    )


def test_prometheusrule_is_what_make_rules_writes():
    generator = rule_generator()
    assert generator.PROMETHEUS_RULE == PROMETHEUS_RULE
    assert generator.ALERTS == ALERTS
    assert PROMETHEUS_RULE.read_text() == generator.render(ALERTS.read_text()), (
        "deploy/kubernetes/prometheus-operator/prometheusrule.yaml is stale: run `make rules`"
    )


# -- systemd ----------------------------------------------------------------------------------


def unit_settings(unit: Path = UNIT) -> list[tuple[str, str, str]]:
    """(section, key, value) of each line of the unit; keys may repeat, as systemd allows."""
    settings, section = [], ""
    for line in unit.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, value = line.split("=", 1)
        settings.append((section, key, value))
    return settings


def unit_value(section: str, key: str, unit: Path = UNIT) -> str:
    (value,) = [v for s, k, v in unit_settings(unit) if (s, k) == (section, key)]
    return value


def test_unit_starts_the_console_script_with_its_environment_file():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {s for s, _, _ in unit_settings()} == {"Unit", "Service", "Install"}
    exec_start = unit_value("Service", "ExecStart")
    assert exec_start == "/opt/beenergised-exporter/bin/beenergised-exporter"
    assert Path(exec_start).name in scripts
    assert unit_value("Service", "EnvironmentFile") == "/etc/default/beenergised-exporter"
    assert unit_value("Service", "Restart") == "on-failure"
    assert unit_value("Service", "RestartPreventExitStatus") == "2"  # a wrong setting
    assert unit_value("Unit", "After") == "network-online.target"
    assert unit_value("Install", "WantedBy") == "multi-user.target"
    assert not [k for _, k, _ in unit_settings() if k == "Environment"], "settings go in the file"


def test_systemctl_reload_sends_sighup():
    assert unit_value("Service", "ExecReload") == "/bin/kill -HUP $MAINPID"


def test_socket_unit_listens_on_the_default_port_for_the_service_of_its_name():
    """systemd hands a socket to the service of the same name; the exporter takes it with
    --web.systemd-socket, which the environment file's example names."""
    assert SOCKET_UNIT.stem == UNIT.stem
    assert {s for s, _, _ in unit_settings(SOCKET_UNIT)} == {"Unit", "Socket", "Install"}
    assert unit_value("Socket", "ListenStream", SOCKET_UNIT) == str(DEFAULT_PORT)
    assert unit_value("Socket", "BindIPv6Only", SOCKET_UNIT) == "both"  # as the default :PORT
    assert unit_value("Install", "WantedBy", SOCKET_UNIT) == "sockets.target"
    assert "# BEENERGISED_WEB_SYSTEMD_SOCKET=true" in ENV_EXAMPLE.read_text()
    settings = load_settings(
        [], {"BEENERGISED_WEB_SYSTEMD_SOCKET": "true", "BEENERGISED_DEMO": "1"}
    )
    assert settings.systemd_socket


HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "CapabilityBoundingSet": "",
    "RestrictNamespaces": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
}


@pytest.mark.parametrize("key", HARDENING)
def test_unit_is_hardened(key):
    assert unit_value("Service", key) == HARDENING[key]


def test_unit_runs_as_an_unprivileged_user_with_the_system_service_syscalls():
    assert unit_value("Service", "User") == "beenergised-exporter"
    filters = [v for s, k, v in unit_settings() if (s, k) == ("Service", "SystemCallFilter")]
    assert filters[0] == "@system-service"
    assert all(f.startswith("~") for f in filters[1:])


def env_example() -> dict[str, str]:
    lines = ENV_EXAMPLE.read_text().splitlines()
    pairs = [line.split("=", 1) for line in lines if line.strip() and not line.startswith("#")]
    return {key.strip(): value.strip() for key, value in pairs}


def test_env_example_makes_valid_settings_with_the_secret_in_a_file(tmp_path):
    environment = env_example()
    assert "BEENERGISED_CLIENT_SECRET" not in environment, "the secret goes in a file"
    assert environment["BEENERGISED_CLIENT_SECRET_FILE"].startswith("/etc/beenergised-exporter/")
    secret = tmp_path / "client-secret"
    secret.write_text("not-a-real-secret\n")
    settings = load_settings([], environment | {"BEENERGISED_CLIENT_SECRET_FILE": str(secret)})
    (mandant,) = settings.mandants
    assert mandant.client_id == environment["BEENERGISED_CLIENT_ID"]


def copy_of_the_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's console script, which
    systemd-analyze requires to exist; everything else unchanged."""
    script = ROOT / ".venv" / "bin" / "beenergised-exporter"
    if not script.exists():
        pytest.skip("no .venv/bin/beenergised-exporter (run `make test`)")
    copy = tmp_path / UNIT.name
    text = UNIT.read_text().replace(unit_value("Service", "ExecStart"), str(script))
    copy.write_text(text)
    return copy


@pytest.mark.e2e
def test_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = require_tool("systemd-analyze")
    result = subprocess.run(
        [analyze, "verify", str(copy_of_the_unit(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # verify exits 0 on unknown keys and bad values too (it ignores them): its output counts.
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr
    )


@pytest.mark.e2e
def test_socket_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = require_tool("systemd-analyze")
    service = copy_of_the_unit(tmp_path)
    socket_unit = tmp_path / SOCKET_UNIT.name
    socket_unit.write_text(SOCKET_UNIT.read_text())
    result = subprocess.run(
        [analyze, "verify", str(socket_unit), str(service)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr
    )


@pytest.mark.e2e
def test_unit_exposure_is_low_in_systemd_analyze_security(tmp_path):
    analyze = require_tool("systemd-analyze")
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(copy_of_the_unit(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout  # 0 is best, 10 worst; 2.0 is still OK
