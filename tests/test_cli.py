"""The console script as a user runs it: exit codes, one-line errors, signals."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import ExporterProcess, env_for, wait_until

SCRIPT = str(Path(sys.executable).with_name("beenergised-exporter"))
SECRET = "cli-Secret-42"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SCRIPT, *args], capture_output=True, text=True, timeout=30, env=env or {"PATH": ""}
    )


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("mandants: [\n  - name: a\n", ["not valid YAML", "line"]),
        ("refresh_intervall: 5m\n", ["unknown key 'refresh_intervall'", "refresh_interval"]),
        (
            "page_limit: many\nmandants:\n  - api_url: https://a.example.test\n"
            f"    client_id: x\n    client_secret: {SECRET}\n",
            ["page_limit", "not an integer"],
        ),
        (
            "mandants:\n  - api_url: https://a.example.test\n    client_id: x\n"
            "    client_secret_file: missing-secret\n",
            ["mandants[0].client_secret_file", "cannot read"],
        ),
        (
            "mandants:\n  - api_url: https://a.example.test\n    client_id: x\n"
            f"    client_secret: {SECRET}\n    clientsecret: typo\n",
            ["mandants[0]", "unknown key 'clientsecret'"],
        ),
    ],
)
def test_a_bad_config_file_exits_2_with_one_line_naming_file_and_key(tmp_path, content, expected):
    config = tmp_path / "exporter.yml"
    config.write_text(content)
    result = run(f"--config.file={config}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(config) in lines[0]
    for fragment in expected:
        assert fragment in lines[0]
    assert SECRET not in result.stderr + result.stdout
    assert result.stdout == ""


def stop_with(exporter: ExporterProcess, signum: int) -> tuple[int, float]:
    """Send ``signum``; the exit status and the seconds it took (fails after 5 s)."""
    try:
        exporter.popen.send_signal(signum)
        started = time.monotonic()
        code = exporter.popen.wait(timeout=5)
        return code, time.monotonic() - started
    finally:
        exporter.stop()


@pytest.mark.e2e
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_stop_the_exporter_within_5_seconds_with_status_0(signum, exporter_process):
    exporter = exporter_process(["--demo", "--refresh.interval=1s"], {})
    exporter.wait_for_line("first refresh")
    code, elapsed = stop_with(exporter, signum)
    assert code == 0
    assert elapsed < 5
    assert "shutting down" in exporter.output
    assert "Traceback" not in exporter.output


OLD_FLAGS = {
    "--api-url": "--api.url",
    "--token-url": "--api.token-url",
    "--client-id": "--api.client-id",
    "--client-secret-file": "--api.client-secret-file",
    "--token-auth-method": "--api.token-auth-method",
    "--target-firmware": "--firmware.target",
    "--refresh-interval": "--refresh.interval",
    "--page-limit": "--api.page-limit",
    "--concurrency": "--api.concurrency",
    "--no-station-info": "--no-collector.station-info",
}


@pytest.mark.e2e
def test_the_flags_of_0_1_still_work_and_each_warns_once_naming_the_new_one(
    tmp_path, simulator_process, exporter_process
):
    import json

    simulator = simulator_process("--stations", "9", "--client-secret", SECRET)
    secret = tmp_path / "secret"
    secret.write_text(SECRET)
    values = {
        "--api-url": simulator.url,
        "--token-url": simulator.url + "/oauth2/token",
        "--client-id": "demo-client",
        "--client-secret-file": str(secret),
        "--token-auth-method": "post",
        "--target-firmware": "2.5.0",
        "--refresh-interval": "1s",
        "--page-limit": "4",
        "--concurrency": "2",
    }
    args = [f"{flag}={value}" for flag, value in values.items()]
    args += ["--no-station-info", "--page-limit", "4", "--log.format=json"]  # one given twice
    exporter = exporter_process(args, {})
    wait_until(
        lambda: 'beenergised_up{mandant="127.0.0.1"} 1.0' in exporter.get("/metrics").text,
        what="the mandant read with the old flags",
    )
    metrics = exporter.get("/metrics").text
    assert 'beenergised_charging_stations_firmware_target{mandant="127.0.0.1",target="2.5.0"}' in (
        metrics
    )
    assert "beenergised_charging_station_info{" not in metrics
    assert "beenergised_refresh_interval_seconds 1.0" in metrics
    paths = [request["path"] for request in simulator.request_log()]
    assert any("limit%5D=4" in path or "limit]=4" in path for path in paths), paths
    assert exporter.stop() == 0
    lines = [json.loads(line) for line in exporter.lines]  # every line is the logger's
    deprecations = [line["msg"] for line in lines if "deprecated" in line["msg"]]
    assert sorted(deprecations) == sorted(
        f"{old} is deprecated and will be removed in a later release; use {new}"
        for old, new in OLD_FLAGS.items()
    )
    assert all(line["level"] == "warn" for line in lines if "deprecated" in line["msg"])
    assert SECRET not in exporter.output
    shown = set(re.findall(r"--[\w.-]+", run("--help").stdout))
    assert not shown & set(OLD_FLAGS) and set(OLD_FLAGS.values()) <= shown


@pytest.mark.e2e
def test_web_config_file_puts_tls_and_basic_auth_on_the_real_exporter(tmp_path, exporter_process):
    bcrypt = pytest.importorskip("bcrypt")
    trustme = pytest.importorskip("trustme")
    requests = pytest.importorskip("requests")
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1")
    server_cert.cert_chain_pems[0].write_to_path(str(tmp_path / "server.crt"))
    server_cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.crt"))
    password = "scrape-Pass-1"
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    (tmp_path / "web.yml").write_text(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        f"basic_auth_users:\n  prometheus: '{hashed}'\n"
    )
    exporter = exporter_process(
        ["--demo", f"--web.config.file={tmp_path / 'web.yml'}"], {}, scheme="https"
    )
    try:
        exporter.wait_for_line("first refresh")
        ca_file = str(tmp_path / "ca.crt")
        ok = requests.get(
            exporter.url + "/metrics", auth=("prometheus", password), verify=ca_file, timeout=10
        )
        assert ok.status_code == 200 and "beenergised_up" in ok.text
        wrong = requests.get(
            exporter.url + "/metrics", auth=("prometheus", "nope"), verify=ca_file, timeout=10
        )
        assert wrong.status_code == 401
        assert requests.get(exporter.url + "/", verify=ca_file, timeout=10).status_code == 401
        assert (
            requests.get(exporter.url + "/healthz", verify=ca_file, timeout=10).status_code == 200
        )
        refused = requests.get(
            exporter.url + "/metrics", auth=("prometheus", password), verify=ca_file, timeout=10
        ).text
        assert 'beenergised_web_requests_refused_total{reason="unauthorized"} 2.0' in refused
        assert 'beenergised_web_requests_refused_total{reason="too_many_logins"} 0.0' in refused
    finally:
        assert exporter.stop() == 0
    assert password not in exporter.output and hashed not in exporter.output


@pytest.mark.e2e
def test_a_bad_web_config_file_exits_2_naming_it(tmp_path):
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users:\n  prometheus: not-a-bcrypt-hash\n")
    result = run("--demo", f"--web.config.file={web}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(web) in lines[0] and "basic_auth_users" in lines[0]
    assert "not-a-bcrypt-hash" not in result.stderr


@pytest.mark.e2e
def test_sigterm_ends_the_exporter_within_5_seconds_even_while_the_api_hangs(
    simulator_process, exporter_process
):
    simulator = simulator_process()
    requests = pytest.importorskip("requests")
    requests.post(
        simulator.url + "/_sim/faults", json={"kind": "hang", "seconds": 60, "times": 1}, timeout=5
    ).raise_for_status()
    exporter = exporter_process(
        ["--refresh.interval=5m"],
        env_for(simulator, ("demo-client", "demo-secret")),
    )
    # the first refresh has its token and now waits on a page that never comes
    wait_until(
        lambda: requests.get(simulator.url + "/_sim/faults", timeout=5).json()["faults"] == [],
        what="the first page request to start hanging",
    )
    code, elapsed = stop_with(exporter, signal.SIGTERM)
    assert code == 0
    assert elapsed < 5
    assert "still waiting for the API" in exporter.output


@pytest.mark.e2e
def test_sigterm_during_a_retry_wait_says_it_is_shutting_down(simulator_process, exporter_process):
    """Not "refresh deadline reached": the deadline was far, the exporter was told to stop."""
    simulator = simulator_process()
    requests = pytest.importorskip("requests")
    requests.post(
        simulator.url + "/_sim/faults",
        json={"kind": "status", "status": 503, "retry_after": "60", "times": 1},
        timeout=5,
    ).raise_for_status()
    exporter = exporter_process(
        ["--refresh.interval=5m"],
        env_for(simulator, ("demo-client", "demo-secret")),
    )
    exporter.wait_for_line(r"HTTP 503|503; retry 1")
    code, _ = stop_with(exporter, signal.SIGTERM)
    assert code == 0
    assert "refresh of mandant 127.0.0.1 stopped: shutting down" in exporter.output
    assert "deadline" not in exporter.output
    assert "failed" not in exporter.output


@pytest.mark.parametrize("argv", [["--version"], ["check", "--version"]])
def test_version_prints_the_project_version_python_and_platform(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    import platform
    import tomllib

    from exporter import cli

    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code in (0, None)
    lines = capsys.readouterr().out.splitlines()
    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert lines[0].endswith(f", version {project['project']['version']}")
    assert lines[1].split() == [
        "python",
        "version:",
        platform.python_version(),
        f"({platform.python_implementation()})",
    ]
    assert lines[2].split() == ["platform:", f"{platform.system().lower()}/{platform.machine()}"]


@pytest.mark.parametrize(
    ("burst", "expected"),
    [
        ([signal.SIGHUP] * 500, signal.SIGHUP),
        ([signal.SIGHUP] * 200 + [signal.SIGTERM] + [signal.SIGHUP] * 200, signal.SIGTERM),
        ([signal.SIGINT, signal.SIGHUP], signal.SIGINT),
        (["reload"] * 3, signal.SIGHUP),
        ([signal.SIGHUP, "reload", signal.SIGHUP, "reload"], signal.SIGHUP),
        (["reload", signal.SIGTERM, "reload"], signal.SIGTERM),
    ],
)
def test_a_burst_of_signals_counts_once_and_a_stop_wins(
    burst: list[int | str], expected: signal.Signals
) -> None:
    """SIGHUPs and reloads asked for over HTTP in one burst are one reload, and every request
    of the burst gets its outcome; a stop among them wins."""
    import queue

    from exporter.cli import _next_signal
    from exporter.lifecycle import Event, ReloadRequest

    events: queue.SimpleQueue[Event] = queue.SimpleQueue()
    requests = []
    for event in burst:
        if event == "reload":
            requests.append(ReloadRequest())
            events.put(requests[-1])
        else:
            events.put(event)
    assert _next_signal(events) == (expected, requests)
    assert events.empty()
