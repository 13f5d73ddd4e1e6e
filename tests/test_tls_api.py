"""TLS to the API end to end: the simulator serves HTTPS with a certificate of a private CA.

Without the CA every refresh fails with reason ``tls`` and a message that says it is a
certificate problem and what to set; with ``ca_file`` (here added by a reload) the mandant is
up; a CA path that does not exist is a configuration error at start-up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import ROOT, ExporterProcess, SimulatorProcess, private_ca, wait_until

pytestmark = pytest.mark.e2e

SECRET = "tls-Secret-7c1d0"
SCRIPT = str(Path(sys.executable).with_name("beenergised-exporter"))


def value(exporter: ExporterProcess, name: str, **labels: str) -> float:
    text = exporter.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def mandant(name: str, simulator: SimulatorProcess, extra: str = "") -> str:
    return f"""\
  - name: {name}
    api_url: {simulator.url}
    token_url: {simulator.url}/oauth2/token
    client_id: demo-client
    client_secret: {SECRET}
{extra}"""


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The console script once (check, or a start that fails), with a clean environment."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BEENERGISED_")}
    clean.pop("REQUESTS_CA_BUNDLE", None)
    clean.pop("CURL_CA_BUNDLE", None)
    return subprocess.run(
        [SCRIPT, *args], env=clean | env, cwd=ROOT, capture_output=True, text=True, timeout=30
    )


@pytest.fixture
def https_simulator(
    tmp_path: Path, simulator_process: Callable[..., SimulatorProcess]
) -> tuple[SimulatorProcess, Path]:
    ca, server = private_ca(tmp_path)
    simulator = simulator_process(
        "--stations", "7", "--client-secret", SECRET,
        "--tls-cert-file", str(server), "--tls-key-file", str(server),
    )  # fmt: skip
    return simulator, ca


def test_a_private_ca_is_a_tls_failure_until_its_ca_file_is_set(
    tmp_path: Path,
    https_simulator: tuple[SimulatorProcess, Path],
    exporter_process: Callable[..., ExporterProcess],
) -> None:
    simulator, ca = https_simulator
    config = tmp_path / "exporter.yml"
    trusting = mandant("trusting", simulator, f"    ca_file: {ca.name}\n")
    config.write_text("mandants:\n" + trusting + mandant("private", simulator))
    exporter = exporter_process(["--config.file", str(config), "--refresh.interval=1s"], {})

    # Before: the mandant with ca_file is up; the other one fails as a certificate problem.
    wait_until(lambda: value(exporter, "beenergised_up", mandant="trusting") == 1, what="up")
    assert value(exporter, "beenergised_charging_stations", mandant="trusting") == 7
    failures = "beenergised_refresh_failures_total"
    wait_until(
        lambda: value(exporter, failures, mandant="private", reason="tls") >= 1,
        what="a tls failure",
    )
    assert value(exporter, "beenergised_up", mandant="private") == 0
    assert value(exporter, failures, mandant="private", reason="connection") == 0
    logged = exporter.wait_for_line(r'refresh of mandant private failed \(tls\): (.*)"$').group(1)
    assert logged == (
        f"token endpoint {simulator.url.removeprefix('https://')}: TLS certificate of 127.0.0.1 "
        "not trusted (unable to get local issuer certificate); if a private CA or a "
        "TLS-inspecting proxy is in the way, set ca_file (--api.ca-file) or REQUESTS_CA_BUNDLE "
        "to its CA certificate"
    )

    # After: ca_file set, reloaded, up with the simulator's fleet; no failure since.
    config.write_text(
        "mandants:\n" + trusting + mandant("private", simulator, f"    ca_file: {ca}\n")
    )
    exporter.popen.send_signal(signal.SIGHUP)
    wait_until(lambda: value(exporter, "beenergised_up", mandant="private") == 1, what="up")
    assert value(exporter, "beenergised_charging_stations", mandant="private") == 7
    assert SECRET not in exporter.output
    assert exporter.stop() == 0


def test_check_names_the_certificate_problem_and_trusts_requests_ca_bundle(
    https_simulator: tuple[SimulatorProcess, Path],
) -> None:
    simulator, ca = https_simulator
    env = {
        "BEENERGISED_API_URL": simulator.url,
        "BEENERGISED_TOKEN_URL": simulator.url + "/oauth2/token",
        "BEENERGISED_CLIENT_ID": "demo-client",
        "BEENERGISED_CLIENT_SECRET": SECRET,
    }
    untrusted = run(["check"], env)
    assert untrusted.returncode == 1, untrusted.stderr
    assert "reason       tls" in untrusted.stdout
    assert "a certificate problem, not the network" in untrusted.stdout
    assert "(DNS, proxy, firewall)" not in untrusted.stdout

    trusted = run(["check"], env | {"REQUESTS_CA_BUNDLE": str(ca)})
    assert trusted.returncode == 0, trusted.stdout + trusted.stderr
    assert run(["check", f"--api.ca-file={ca}"], env).returncode == 0


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--api.ca-file=/nonexistent/ca.pem"], {}, "--api.ca-file: cannot read"),
        ([], {"BEENERGISED_API_CA_FILE": "/nonexistent/ca.pem"}, "BEENERGISED_API_CA_FILE: cannot"),
        ([], {"REQUESTS_CA_BUNDLE": "/nonexistent/ca.pem"}, "REQUESTS_CA_BUNDLE: cannot read"),
    ],
)
def test_a_missing_ca_file_is_a_configuration_error(
    args: list[str], env: dict[str, str], message: str
) -> None:
    env = {
        "BEENERGISED_API_URL": "https://127.0.0.1:9",
        "BEENERGISED_CLIENT_ID": "demo-client",
        "BEENERGISED_CLIENT_SECRET": SECRET,
        **env,
    }
    for command in (args, ["check", *args]):
        result = run(command, env)
        assert result.returncode == 2
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and message in lines[0], result.stderr
        assert "'/nonexistent/ca.pem': No such file or directory" in lines[0]
