"""SIGHUP end to end: the real exporter re-reads its config file, secret files and web config.

As Prometheus: a good configuration is applied (mandants added, removed, changed, a rotated
secret, new basic-auth users, a new TLS certificate) without losing what the exporter
published; a bad one changes nothing, logs one error line and sets the reload metric to 0.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import bcrypt
import pytest
import requests

from tests.helpers import ExporterProcess, SimulatorProcess, samples, wait_until

pytestmark = pytest.mark.e2e

OLD_SECRET = "reload-Old-5ecret-1f"
NEW_SECRET = "reload-New-5ecret-2e"


def metrics(exporter: ExporterProcess, **kwargs: object) -> dict[tuple[str, frozenset], float]:
    text = exporter.get("/metrics", **kwargs).text
    return samples(text)


def value(exporter: ExporterProcess, name: str, **labels: str) -> float | None:
    return metrics(exporter).get(key(name, **labels))


def key(name: str, **labels: str) -> tuple[str, frozenset]:
    return name, frozenset(labels.items())


def north(exporter: ExporterProcess, name: str, **labels: str) -> float:
    return value(exporter, name, mandant="north", **labels) or 0.0


def mandant_entry(name: str, simulator: SimulatorProcess, extra: str = "") -> str:
    return f"""\
  - name: {name}
    api_url: {simulator.url}
    token_url: {simulator.url}/oauth2/token
    client_id: demo-client
    client_secret_file: secret.txt
{extra}"""


def reload(exporter: ExporterProcess) -> None:
    """Send SIGHUP and wait for the exporter to log the outcome of that reload."""
    before = len(exporter.lines)
    exporter.popen.send_signal(signal.SIGHUP)

    def logged() -> bool:
        if exporter.popen.poll() is not None:
            raise AssertionError(f"SIGHUP ended the exporter (exit {exporter.popen.returncode})")
        return any(
            "reload failed" in line or "configuration reloaded" in line
            for line in exporter.lines[before:]
        )

    wait_until(logged, what="the exporter to log the outcome of the reload")


def stop_within_5s(exporter: ExporterProcess) -> None:
    started = time.monotonic()
    assert exporter.stop() == 0
    assert time.monotonic() - started < 5


def test_sighup_applies_a_changed_config_and_a_rotated_secret(
    tmp_path: Path,
    simulator_process: Callable[..., SimulatorProcess],
    exporter_process: Callable[..., ExporterProcess],
) -> None:
    simulator = simulator_process("--stations", "12", "--client-secret", OLD_SECRET)
    secret = tmp_path / "secret.txt"
    secret.write_text(OLD_SECRET + "\n")
    config = tmp_path / "exporter.yml"
    config.write_text("mandants:\n" + mandant_entry("north", simulator))
    exporter = exporter_process(["--config.file", str(config), "--refresh.interval=1s"], {})
    wait_until(lambda: value(exporter, "beenergised_up", mandant="north") == 1, what="north up")
    started_at = value(exporter, "beenergised_config_last_reload_success_timestamp_seconds")
    assert value(exporter, "beenergised_config_last_reload_successful") == 1

    # The secret is rotated: at the API first, so refreshes fail until the exporter reloads.
    requests.post(
        simulator.url + "/_sim/client_secret", json={"client_secret": NEW_SECRET}, timeout=5
    ).raise_for_status()
    requests.post(simulator.url + "/_sim/revoke_tokens", timeout=5).raise_for_status()
    wait_until(
        lambda: north(exporter, "beenergised_refresh_failures_total", reason="auth") >= 1,
        what="auth failures with the old secret",
    )
    assert value(exporter, "beenergised_up", mandant="north") == 0

    # In place, as Kubernetes and Docker do, with a firmware target and a second mandant.
    secret.write_text(NEW_SECRET + "\n")
    config.write_text(
        "mandants:\n"
        + mandant_entry("north", simulator, '    target_firmware: "2.5.0"\n')
        + mandant_entry("south", simulator)
    )
    reload(exporter)
    assert "configuration reloaded: 2 mandant(s); added: south; removed: none; changed: north" in (
        exporter.output
    )
    wait_until(
        lambda: (
            value(exporter, "beenergised_up", mandant="north") == 1
            and value(exporter, "beenergised_up", mandant="south") == 1
        ),
        what="both mandants up with the new secret",
    )
    stations = simulator.state()["stations"]
    after = metrics(exporter)
    target = key("beenergised_charging_stations_firmware_target", mandant="north", target="2.5.0")
    assert after[target] == simulator.state()["firmware"].get("2.5.0", 0)
    # The changed mandant kept its counters and saw no false "stations added".
    assert after[key("beenergised_charging_stations_added_total", mandant="north")] == 0
    assert after[key("beenergised_refresh_failures_total", mandant="north", reason="auth")] >= 1
    assert after[key("beenergised_charging_stations", mandant="south")] == stations
    assert after[key("beenergised_config_last_reload_successful")] == 1
    reloaded_at = after[key("beenergised_config_last_reload_success_timestamp_seconds")]
    assert reloaded_at > (started_at or 0)

    # Removing a mandant stops it: its series go away.
    config.write_text("mandants:\n" + mandant_entry("north", simulator))
    reload(exporter)
    wait_until(
        lambda: value(exporter, "beenergised_up", mandant="south") is None,
        what="south's series to go",
    )
    assert value(exporter, "beenergised_up", mandant="north") == 1
    assert NEW_SECRET not in exporter.output and OLD_SECRET not in exporter.output
    stop_within_5s(exporter)


def test_sighup_with_a_bad_config_keeps_the_running_one(
    tmp_path: Path,
    simulator_process: Callable[..., SimulatorProcess],
    exporter_process: Callable[..., ExporterProcess],
) -> None:
    simulator = simulator_process("--stations", "5", "--client-secret", OLD_SECRET)
    (tmp_path / "secret.txt").write_text(OLD_SECRET)
    config = tmp_path / "exporter.yml"
    good = "mandants:\n" + mandant_entry("north", simulator)
    config.write_text(good)
    exporter = exporter_process(["--config.file", str(config), "--refresh.interval=1s"], {})
    wait_until(lambda: value(exporter, "beenergised_up", mandant="north") == 1, what="north up")

    for broken, named in [
        (good + "    client_id: other\n", "duplicate key 'client_id'"),
        (good.replace("secret.txt", "missing.txt"), "mandants[0].client_secret_file: cannot"),
        (good + "    ca_file: nowhere.pem\n", "mandants[0].ca_file: cannot read"),
    ]:
        config.write_text(broken)
        reload(exporter)
        errors = [line for line in exporter.lines if "reload failed" in line]
        assert named in errors[-1], errors
        assert "level=error" in errors[-1]
        assert value(exporter, "beenergised_config_last_reload_successful") == 0
        # Still running, still refreshing north with the old settings.
        seen = north(exporter, "beenergised_last_refresh_success_timestamp_seconds")
        wait_until(
            lambda: north(exporter, "beenergised_last_refresh_success_timestamp_seconds") > seen,  # noqa: B023
            what="a fresh refresh after the failed reload",
        )

    # A setting a reload cannot apply is named, and the rest is applied.
    config.write_text("changes_max_entries: 5\n" + good)
    reload(exporter)
    assert "changes_max_entries changed: it takes a restart" in exporter.output
    assert value(exporter, "beenergised_config_last_reload_successful") == 1
    assert exporter.get("/changes").json()["max_entries"] == 1000
    stop_within_5s(exporter)


def bcrypt_hash(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def test_sighup_reads_new_users_and_a_new_certificate(
    tmp_path: Path,
    simulator_process: Callable[..., SimulatorProcess],
    exporter_process: Callable[..., ExporterProcess],
) -> None:
    import trustme

    simulator = simulator_process("--stations", "3")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "web-ca.pem"))
    certs = []
    for name in ("one", "two"):
        issued = ca.issue_cert("127.0.0.1")
        issued.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / f"{name}.pem"))
        certs.append(issued.cert_chain_pems[0].bytes().decode())
    web = tmp_path / "web.yml"

    def web_config(cert: str, user: str) -> str:
        return (
            f"tls_server_config:\n  cert_file: {cert}.pem\n  key_file: {cert}.pem\n"
            f"basic_auth_users:\n  {user}: {bcrypt_hash(user + '-pw')}\n"
        )

    web.write_text(web_config("one", "alice"))
    exporter = exporter_process(
        ["--web.config.file", str(web), "--refresh.interval=1s"],
        {
            "BEENERGISED_API_URL": simulator.url,
            "BEENERGISED_TOKEN_URL": simulator.url + "/oauth2/token",
            "BEENERGISED_CLIENT_ID": "demo-client",
            "BEENERGISED_CLIENT_SECRET": "demo-secret",
        },
        "https",
    )
    verify = str(tmp_path / "web-ca.pem")
    port = int(exporter.url.rsplit(":", 1)[1])

    def status(user: str) -> int:
        return exporter.get("/metrics", auth=(user, user + "-pw"), verify=verify).status_code

    def served_certificate() -> str:
        return ssl.get_server_certificate(("127.0.0.1", port), timeout=5)

    assert (status("alice"), status("bob")) == (200, 401)
    assert served_certificate() == certs[0]

    web.write_text(web_config("two", "bob"))
    reload(exporter)
    assert (status("alice"), status("bob")) == (401, 200)
    assert served_certificate() == certs[1]

    web.write_text("basic_auth_users:\n  bob: " + bcrypt_hash("bob-pw") + "\n")
    reload(exporter)
    assert "turning TLS off takes a restart; still serving HTTPS" in exporter.output
    assert served_certificate() == certs[1]
    assert status("bob") == 200
    stop_within_5s(exporter)


HOSTILE_CONFIGS = {
    "nested 2,000 levels deep": "".join("  " * depth + "k:\n" for depth in range(2000)),
    "nested 5,000 brackets deep": "a: " + "[" * 5000 + "]" * 5000,
    "an integer of 5,000 digits": "page_limit: 1" + "0" * 5000 + "\n",
    "a control character": "page_limit: 10\n\x01\n",
}


@pytest.mark.parametrize("which", ["config", "web config"])
def test_no_content_of_a_config_file_ends_the_process(
    which: str,
    tmp_path: Path,
    simulator_process: Callable[..., SimulatorProcess],
    exporter_process: Callable[..., ExporterProcess],
) -> None:
    """A start exits 2 with one line naming the file; a reload keeps the running configuration."""
    simulator = simulator_process("--stations", "4", "--client-secret", OLD_SECRET)
    (tmp_path / "secret.txt").write_text(OLD_SECRET)
    config = tmp_path / "exporter.yml"
    good_config = "mandants:\n" + mandant_entry("north", simulator)
    config.write_text(good_config)
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  alice: {bcrypt_hash('alice-pw')}\n")
    args = ["--config.file", str(config), "--web.config.file", str(web), "--refresh.interval=1s"]
    hostile_file = config if which == "config" else web
    auth = ("alice", "alice-pw")

    for name, content in HOSTILE_CONFIGS.items():
        hostile_file.write_text(content)
        started = subprocess.run(
            [str(Path(sys.executable).with_name("beenergised-exporter")), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert started.returncode == 2, (name, started.stderr)
        assert started.stderr.count("\n") == 1, (name, started.stderr)
        assert f"{hostile_file}: not valid YAML" in started.stderr, (name, started.stderr)

    config.write_text(good_config)
    web.write_text(f"basic_auth_users:\n  alice: {bcrypt_hash('alice-pw')}\n")
    exporter = exporter_process(args, {})
    wait_until(
        lambda: (
            samples(exporter.get("/metrics", auth=auth).text).get(
                key("beenergised_up", mandant="north")
            )
            == 1
        ),
        what="north up",
    )
    for name, content in HOSTILE_CONFIGS.items():
        hostile_file.write_text(content)
        reload(exporter)
        errors = [line for line in exporter.lines if "reload failed" in line]
        assert f"{hostile_file}: not valid YAML" in errors[-1], (name, errors)
        text = exporter.get("/metrics", auth=auth).text
        assert samples(text)[key("beenergised_config_last_reload_successful")] == 0, name
    # A FIFO in the file's place would block the reload (and with it every later signal).
    hostile_file.unlink()
    os.mkfifo(hostile_file)
    reload(exporter)
    errors = [line for line in exporter.lines if "reload failed" in line]
    assert "not a regular file" in errors[-1], errors
    assert "Traceback" not in exporter.output
    stop_within_5s(exporter)


# -- POST /-/reload (--web.enable-lifecycle) ----------------------------------------------------


def test_post_reload_is_forbidden_unless_enabled(
    exporter_process: Callable[..., ExporterProcess],
) -> None:
    exporter = exporter_process(["--demo"], {})
    refused = requests.post(exporter.url + "/-/reload", timeout=5)
    assert (refused.status_code, refused.text) == (403, "Lifecycle API is not enabled.\n")
    assert requests.get(exporter.url + "/-/reload", timeout=5).status_code == 405
    assert "reloading" not in exporter.output
    stop_within_5s(exporter)


def test_post_reload_applies_a_changed_config_or_answers_why_not(
    tmp_path: Path,
    simulator_process: Callable[..., SimulatorProcess],
    exporter_process: Callable[..., ExporterProcess],
) -> None:
    """The reload SIGHUP does, over HTTP and behind the web config's basic auth: a new mandant
    appears; a broken file answers 500 naming the field and changes nothing."""
    simulator = simulator_process("--stations", "6", "--client-secret", OLD_SECRET)
    (tmp_path / "secret.txt").write_text(OLD_SECRET)
    config = tmp_path / "exporter.yml"
    good = "mandants:\n" + mandant_entry("north", simulator)
    config.write_text(good)
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  alice: {bcrypt_hash('alice-pw')}\n")
    exporter = exporter_process(
        [
            "--config.file",
            str(config),
            "--web.config.file",
            str(web),
            "--web.enable-lifecycle",
            "--refresh.interval=1s",
        ],
        {},
    )
    auth = ("alice", "alice-pw")
    url = exporter.url + "/-/reload"

    def mandant_up(name: str) -> float | None:
        text = exporter.get("/metrics", auth=auth).text
        return samples(text).get(key("beenergised_up", mandant=name))

    wait_until(lambda: mandant_up("north") == 1, what="north up")
    assert requests.post(url, timeout=5).status_code == 401
    assert requests.post(url, auth=("alice", "wrong"), timeout=5).status_code == 401

    config.write_text(good + mandant_entry("south", simulator))
    applied = requests.post(url, auth=auth, timeout=35)
    assert applied.status_code == 200, applied.text
    assert applied.text == (
        "configuration reloaded: 2 mandant(s); added: south; removed: none; changed: none\n"
    )
    assert "received POST /-/reload, reloading the configuration" in exporter.output
    wait_until(lambda: mandant_up("south") == 1, what="south up after the reload")

    config.write_text(good + mandant_entry("south", simulator).replace(simulator.url, "south"))
    failed = requests.post(url, auth=auth, timeout=35)
    assert failed.status_code == 500
    assert failed.text.startswith("reload failed, still running the previous configuration: ")
    assert f"{config}: mandants[1].api_url: not a URL: 'south'" in failed.text
    assert failed.text.rstrip("\n") in exporter.output, "the answer is the line the log got"
    assert mandant_up("south") == 1 and mandant_up("north") == 1
    metrics = samples(exporter.get("/metrics", auth=auth).text)
    assert metrics[key("beenergised_config_last_reload_successful")] == 0
    assert OLD_SECRET not in exporter.output + applied.text + failed.text
    stop_within_5s(exporter)
