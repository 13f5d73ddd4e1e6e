"""Hostile token endpoints and secret files end to end (issue 11, findings 5, 7, 8, 10, 13): the
real exporter and ``check`` processes against the real simulator process.

(a) a token endpoint that echoes the secret in every form, or 60 KB of error text: never in the
    log (debug level), /metrics, the open landing page or ``check``; log line and page stay short;
(b) odd ``expires_in`` values: refreshes succeed, a bounded number of token requests, and
    ``check --output json`` stays valid JSON;
(c) redirects to another origin: the secret never arrives there (basic, post, query; 307, 308),
    the other origin's fleet is never published;
(d) a secret file rotated in place: the exporter recovers without a restart;
(e) a secret file with a UTF-8 BOM and CRLF works.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
import requests

from tests.helpers import ExporterProcess, FaultStack, SimulatorProcess, env_for, wait_until

pytestmark = pytest.mark.e2e

SCRIPT = str(Path(sys.executable).with_name("beenergised-exporter"))
CLIENT = "demo-client"
SECRET = "Hostile Secret/+&=%~e2e-7f3a"
STATIONS = 40
OTHER_STATIONS = 3  # the redirect fault's other origin


def forms(secret: str = SECRET) -> list[str]:
    """Every form of the secret a server may echo (see the simulator's echo_secret fault)."""
    basic = f"{CLIENT}:{secret}".encode()
    form = f"{quote_plus(CLIENT)}:{quote_plus(secret)}".encode()
    found = [secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1]]
    for raw in (basic, form):
        text = base64.b64encode(raw).decode()
        found += [text, base64.urlsafe_b64encode(raw).decode().rstrip("=")]
    return found


class Stack(FaultStack):
    def control(self, path: str, body: dict | None = None, url: str | None = None) -> object:
        base = url or self.simulator.url
        if body is None:
            response = requests.get(base + "/_sim/" + path, timeout=5)
        else:
            response = requests.post(base + "/_sim/" + path, json=body, timeout=5)
        assert response.status_code == 200, response.text
        return response.json()

    def failures(self, reason: str) -> float:
        return self.value("beenergised_refresh_failures_total", reason=reason)

    def token_requests(self) -> int:
        return sum(1 for r in self.simulator.request_log() if r["path"].startswith("/oauth2/"))

    def wait_failure(self, reason: str, before: float) -> None:
        wait_until(lambda: self.failures(reason) > before, what=f"a {reason} failure")

    def published(self) -> str:
        """Everything the exporter shows: the open landing page, /metrics and the log."""
        return (
            self.exporter.get("/").text + self.exporter.get("/metrics").text + self.exporter.output
        )


StartStack = Callable[..., Stack]


@pytest.fixture
def start_stack(
    simulator_process: Callable[..., SimulatorProcess],
    exporter_process: Callable[..., ExporterProcess],
) -> StartStack:
    def start(*args: str, secret_file: Path | None = None, method: str = "basic") -> Stack:
        simulator = simulator_process(
            "--stations", str(STATIONS), "--max-page-limit", "20", "--client-secret", SECRET
        )
        env = {
            "BEENERGISED_API_URL": simulator.url,
            "BEENERGISED_TOKEN_URL": simulator.url + "/oauth2/token",
            "BEENERGISED_CLIENT_ID": CLIENT,
            "BEENERGISED_TOKEN_AUTH_METHOD": method,
        }
        if secret_file is None:
            env["BEENERGISED_CLIENT_SECRET"] = SECRET
        else:
            env["BEENERGISED_CLIENT_SECRET_FILE"] = str(secret_file)
        exporter = exporter_process(["--refresh.interval=0.5", "--api.page-limit=20", *args], env)
        stack = Stack(simulator, exporter)
        stack.wait_healthy()
        return stack

    return start


def check_env(simulator: SimulatorProcess, **settings: str) -> dict[str, str]:
    """The whole environment of a ``check`` process against ``simulator``."""
    return {"PATH": os.environ.get("PATH", ""), **env_for(simulator, (CLIENT, SECRET), **settings)}


def run_check(simulator: SimulatorProcess, *args: str, method: str = "basic") -> tuple[int, str]:
    env = check_env(simulator, BEENERGISED_TOKEN_AUTH_METHOD=method)
    result = subprocess.run(
        [SCRIPT, "check", "--api.page-limit=20", "--log.level=debug", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    return result.returncode, result.stdout + result.stderr


# --- (a) a token endpoint that echoes the secret ----------------------------------------------


def test_an_echoed_secret_is_never_shown_and_a_huge_error_stays_short(start_stack: StartStack):
    stack = start_stack()
    assert not any(form in stack.published() for form in forms())  # before

    auth_failures = stack.failures("auth")
    stack.fault(kind="echo_secret", endpoint="token")
    stack.revoke_tokens()
    try:
        stack.wait_failure("auth", auth_failures)
        shown = stack.published()
        leaked = [form for form in forms() if form in shown]
        assert not leaked, leaked
        assert "rejected the client credentials" in stack.exporter.get("/").text
        assert stack.value("beenergised_up") == 0
        assert "\nlevel=error forged line" not in stack.exporter.output
    finally:
        stack.clear()
    stack.wait_healthy()

    log_lines = len(stack.exporter.lines)
    http_or_auth = stack.failures("auth")
    stack.fault(kind="huge_error", endpoint="token")
    stack.revoke_tokens()
    try:
        stack.wait_failure("auth", http_or_auth)
        failed = [line for line in stack.exporter.lines[log_lines:] if "failed (auth)" in line]
        assert failed and all(len(line) < 1000 for line in failed), failed
        assert len(stack.exporter.get("/").content) < 20_000
        assert SECRET not in stack.published()
    finally:
        stack.clear()
    stack.wait_healthy()  # after: recovers by itself
    assert not any(form in stack.published() for form in forms())


@pytest.mark.parametrize("output", ["text", "json"])
def test_check_never_shows_an_echoed_secret(simulator_process, output: str):
    simulator = simulator_process("--stations", "5", "--client-secret", SECRET)
    requests.post(
        simulator.url + "/_sim/faults", json={"kind": "echo_secret", "endpoint": "token"}, timeout=5
    ).raise_for_status()
    code, shown = run_check(simulator, f"--output={output}")
    assert code == 1, shown
    assert "rejected the client credentials" in shown
    leaked = [form for form in forms() if form in shown]
    assert not leaked, shown
    if output == "json":
        json.loads(shown[: shown.rindex("}") + 1][shown.index("{") :])


# --- (b) odd expires_in -----------------------------------------------------------------------

ODD_EXPIRES_IN = [
    "expires_in_nan",
    "expires_in_infinity",
    "expires_in_1e400",
    "expires_in_negative",
    "expires_in_string",
]


def test_odd_expires_in_values_never_fail_or_fetch_a_token_per_page(start_stack: StartStack):
    stack = start_stack()
    for kind in ODD_EXPIRES_IN:
        stack.wait_healthy(fresh=False)  # before
        failures = sum(v for (n, _), v in stack.metrics().items() if n.endswith("failures_total"))
        stack.fault(kind=kind, endpoint="token")
        stack.revoke_tokens()
        try:
            tokens_before = stack.token_requests()
            refreshed = stack.successes()
            # during: two more refreshes of two pages each on the odd token
            for _ in range(2):
                stack.wait_healthy()
            asked = stack.token_requests() - tokens_before
            assert stack.successes() > refreshed
        finally:
            stack.clear()
        after = sum(v for (n, _), v in stack.metrics().items() if n.endswith("failures_total"))
        assert after == failures, kind
        assert 1 <= asked <= 2, f"{kind}: {asked} token requests for 2 refreshes"
        expiry = stack.value("beenergised_token_expiry_timestamp_seconds")
        assert 0 < expiry < 1e11, kind
    stack.wait_healthy()  # after


@pytest.mark.parametrize("kind", ODD_EXPIRES_IN)
def test_check_json_is_valid_for_odd_expires_in(simulator_process, kind: str):
    simulator = simulator_process("--stations", "5", "--client-secret", SECRET)
    requests.post(
        simulator.url + "/_sim/faults", json={"kind": kind, "endpoint": "token"}, timeout=5
    ).raise_for_status()
    env = check_env(simulator)
    result = subprocess.run(
        [SCRIPT, "check", "--output=json"], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout, parse_constant=lambda name: pytest.fail(name))
    [mandant] = report["mandants"]
    assert mandant["stations"] == 5
    assert 0 < mandant["token_expires_in"] <= 86400


# --- (c) redirects to another origin ----------------------------------------------------------


@pytest.mark.parametrize("method", ["basic", "post", "query"])
@pytest.mark.parametrize("status", [307, 308])
def test_check_never_sends_the_secret_to_another_origin(simulator_process, method, status):
    simulator = simulator_process("--stations", "5", "--client-secret", SECRET)
    requests.post(
        simulator.url + "/_sim/faults",
        json={"kind": "redirect", "endpoint": "token", "status": status},
        timeout=5,
    ).raise_for_status()
    code, shown = run_check(simulator, method=method)
    other = requests.get(simulator.url + "/_sim/credentials", timeout=5).json()["other_origin"]
    received = requests.get(other + "/_sim/credentials", timeout=5).json()["secret_received"]
    assert received == 0
    assert requests.get(other + "/_sim/requests", timeout=5).json() == []
    assert code == 1
    assert f"redirected (HTTP {status}) to another origin" in shown
    assert other.replace("http://", "") in shown  # the target origin is named
    assert not any(form in shown for form in forms())


def test_exporter_refuses_redirects_to_another_origin(start_stack: StartStack):
    stack = start_stack(method="post")
    for status in (307, 308):
        stack.wait_healthy(fresh=False)
        before = stack.failures("http")
        stack.fault(kind="redirect", endpoint="token", status=status)
        stack.revoke_tokens()
        try:
            stack.wait_failure("http", before)
            assert stack.value("beenergised_charging_stations") == STATIONS
        finally:
            stack.clear()
        stack.wait_healthy()
    other = stack.control("credentials")["other_origin"]
    assert stack.control("credentials", url=other)["secret_received"] == 0

    # The API redirects the stations listing to another origin with a fleet of its own.
    before = stack.failures("http")
    stack.fault(kind="redirect", endpoint="stations")
    try:
        stack.wait_failure("http", before)
        wait_until(lambda: stack.failures("http") > before + 1, what="a second failed refresh")
        assert stack.value("beenergised_charging_stations") == STATIONS  # never 3
        assert stack.value("beenergised_up") == 0
        assert "another origin" in stack.exporter.get("/").text
    finally:
        stack.clear()
    assert stack.control("requests", url=other) == []  # the other origin was never asked
    stack.wait_healthy()
    assert stack.value("beenergised_charging_stations") != OTHER_STATIONS
    assert SECRET not in stack.published()


# --- (d) rotation, (e) BOM ----------------------------------------------------------------------


def test_a_secret_file_rotated_in_place_is_read_again(start_stack: StartStack, tmp_path: Path):
    secret_file = tmp_path / "client-secret"
    secret_file.write_text(SECRET + "\n")
    stack = start_stack(secret_file=secret_file)
    rotated = "Rotated Secret/+&=%~e2e-91c4"

    before = stack.failures("auth")
    stack.control("client_secret", {"client_secret": rotated})  # the server rotates first
    stack.revoke_tokens()
    stack.wait_failure("auth", before)
    assert stack.value("beenergised_up") == 0

    with secret_file.open("w") as file:  # rewritten in place, as a secret mount is
        file.write(rotated + "\n")
    stack.wait_healthy()  # no restart
    assert stack.exporter.popen.poll() is None
    assert "client secret file" in stack.exporter.output and "changed" in stack.exporter.output
    shown = stack.published()
    assert rotated not in shown and SECRET not in shown
    stack.wait_healthy()  # and it stays healthy


@pytest.mark.parametrize("method", ["basic", "post"])
def test_a_secret_file_with_bom_and_crlf_works(
    start_stack: StartStack, tmp_path: Path, method: str
):
    secret_file = tmp_path / "client-secret"
    secret_file.write_bytes(b"\xef\xbb\xbf" + SECRET.encode() + b"\r\n")
    stack = start_stack(secret_file=secret_file, method=method)  # healthy, or it raises
    assert stack.failures("parse") == 0 and stack.failures("auth") == 0
    assert "a bug of the exporter" not in stack.published()
