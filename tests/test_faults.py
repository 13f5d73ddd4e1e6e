"""Every API fault end to end: the real exporter against the standalone simulator.

One exporter runs through the whole fault matrix at debug level; each case switches a fault on,
checks the metrics while it lasts, switches it off and checks that the exporter recovers by
itself. The last test greps every log line for the client secret and every token issued.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import requests

from tests.helpers import (
    ExporterProcess,
    FaultStack,
    SimulatorProcess,
    env_for,
    value,
    wait_until,
)

pytestmark = pytest.mark.e2e

SECRET = "faults-Secret-93b1e"
STATIONS = 60


Stack = FaultStack


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    simulator = SimulatorProcess(
        "--stations", str(STATIONS), "--max-page-limit", "20", "--client-secret", SECRET,
    )  # fmt: skip
    exporter = ExporterProcess(
        ["--refresh.interval=1s", "--api.page-limit=20", "--api.request-timeout=2s"],
        env_for(simulator, ("demo-client", SECRET)),
    )
    stack = Stack(simulator, exporter)
    try:
        stack.wait_healthy()
        yield stack
    finally:
        exporter.stop()
        simulator.stop()


@dataclass(frozen=True)
class Failing:
    """A fault that must fail refreshes with ``reason`` while it lasts."""

    name: str
    reason: str
    spec: dict = field(default_factory=dict)
    needs_new_token: bool = False
    log: str = ""

    def __str__(self) -> str:
        return self.name


FAILING = [
    Failing("stations 500", "http", {"kind": "status", "status": 500}, log="HTTP 500"),
    Failing("stations 502 retried then given up", "http", {"kind": "status", "status": 502}),
    Failing("stations 503 with Retry-After", "http",
            {"kind": "status", "status": 503, "retry_after": "1"}),
    Failing("stations 504", "http", {"kind": "status", "status": 504}),
    Failing("stations 429", "http", {"kind": "status", "status": 429}),
    Failing("stations 400", "http", {"kind": "status", "status": 400}),
    Failing("stations 403", "auth", {"kind": "status", "status": 403}, log="forbidden"),
    Failing("stations latency beyond the deadline", "timeout", {"kind": "latency", "seconds": 5}),
    Failing("stations hang", "timeout", {"kind": "hang", "seconds": 20}),
    Failing("stations disconnect mid-body", "connection", {"kind": "disconnect"}),
    Failing("stations truncated JSON", "parse", {"kind": "truncated"}, log="not JSON"),
    Failing("stations proxy HTML page", "parse", {"kind": "html"}, log="text/html"),
    Failing("stations wrong content type", "parse", {"kind": "wrong_content_type"}),
    Failing("stations without data", "parse", {"kind": "no_data"}, log="no data list"),
    Failing("stations data not a list", "parse", {"kind": "data_not_list"}),
    Failing("stations attributes null", "parse", {"kind": "null_attributes"}),
    Failing("stations attributes of wrong type", "parse", {"kind": "wrong_types"}),
    Failing("rows inserted between pages", "pagination", {"kind": "insert_rows", "after": 1},
            log="inconsistent twice"),
    Failing("rows deleted between pages", "pagination", {"kind": "delete_rows", "after": 1}),
    Failing("total drifting", "pagination", {"kind": "total_drift"}),
    Failing("duplicate rows", "pagination", {"kind": "duplicate_rows"}),
    Failing("token endpoint 503", "http",
            {"kind": "status", "status": 503, "endpoint": "token"}, needs_new_token=True),
    Failing("token endpoint hang", "timeout",
            {"kind": "hang", "seconds": 20, "endpoint": "token"}, needs_new_token=True),
    Failing("token endpoint HTML page", "parse",
            {"kind": "html", "endpoint": "token"}, needs_new_token=True),
    Failing("credentials rejected", "auth",
            {"kind": "status", "status": 401, "endpoint": "token"}, needs_new_token=True,
            log="rejected the client credentials"),
]  # fmt: skip


@pytest.mark.parametrize("case", FAILING, ids=str)
def test_a_failing_api_keeps_the_last_good_fleet_and_recovers(stack: Stack, case: Failing):
    stack.wait_healthy(fresh=False)  # every test ends with a fresh healthy refresh
    count = stack.value("beenergised_charging_stations")
    failures = stack.value("beenergised_refresh_failures_total", reason=case.reason)
    added = stack.value("beenergised_charging_stations_added_total")
    removed = stack.value("beenergised_charging_stations_removed_total")
    log_lines = len(stack.exporter.lines)

    stack.fault(**case.spec)
    if case.needs_new_token:
        stack.revoke_tokens()
    try:
        wait_until(
            lambda: (
                stack.value("beenergised_refresh_failures_total", reason=case.reason) > failures
            ),
            what=f"a {case.reason} failure",
        )
        assert stack.value("beenergised_up") == 0
        assert stack.value("beenergised_charging_stations") == count
        assert stack.value("beenergised_charging_stations_added_total") == added
        assert stack.value("beenergised_charging_stations_removed_total") == removed
    finally:
        stack.clear()
    stack.wait_healthy()
    new_lines = stack.exporter.lines[log_lines:]
    failure_lines = [line for line in new_lines if f"failed ({case.reason})" in line]
    assert failure_lines, "\n".join(new_lines)
    assert case.log in failure_lines[0]
    assert "level=warn" in failure_lines[0]
    assert not any("Traceback" in line for line in new_lines)


@dataclass(frozen=True)
class Handled:
    """A fault the exporter must ride out without a failed refresh."""

    name: str
    spec: dict
    counted: tuple[str, str]  # (endpoint, code) of the api request counter that must grow

    def __str__(self) -> str:
        return self.name


HANDLED = [
    Handled("one 503 is retried", {"kind": "status", "status": 503, "times": 1},
            ("charging_stations", "503")),
    Handled("one 429 is retried", {"kind": "status", "status": 429, "times": 1},
            ("charging_stations", "429")),
    Handled("a dropped connection is retried", {"kind": "disconnect", "times": 1},
            ("charging_stations", "error")),
    Handled("token revoked mid-refresh", {"kind": "revoke_token", "times": 1, "after": 1},
            ("charging_stations", "401")),
    Handled("token expired mid-refresh", {"kind": "expire_token", "times": 1, "after": 1},
            ("charging_stations", "401")),
    Handled("one slow page", {"kind": "latency", "seconds": 0.3, "times": 1},
            ("charging_stations", "200")),
    Handled("no pagination meta", {"kind": "no_meta"}, ("charging_stations", "200")),
]  # fmt: skip


@pytest.mark.parametrize("case", HANDLED, ids=str)
def test_a_transient_or_harmless_fault_does_not_fail_a_refresh(stack: Stack, case: Handled):
    stack.wait_healthy(fresh=False)
    endpoint, code = case.counted
    requests_before = stack.value("beenergised_api_requests_total", endpoint=endpoint, code=code)
    failures_before = sum(
        v for (n, _), v in stack.metrics().items() if n == "beenergised_refresh_failures_total"
    )
    stack.fault(**case.spec)
    try:
        wait_until(
            lambda: (
                stack.value("beenergised_api_requests_total", endpoint=endpoint, code=code)
                > requests_before
            ),
            what=f"a {code} answer from {endpoint}",
        )
        stack.wait_healthy()
    finally:
        stack.clear()
    failures_after = sum(
        v for (n, _), v in stack.metrics().items() if n == "beenergised_refresh_failures_total"
    )
    assert failures_after == failures_before


def test_credentials_rejected_are_not_retried_within_a_refresh(stack: Stack):
    stack.wait_healthy(fresh=False)
    stack.fault(kind="status", status=401, endpoint="token")
    stack.revoke_tokens()

    def failed_and_attempts() -> tuple[float, float]:
        """Both from one scrape: a refresh between two scrapes would count in one only."""
        metrics = stack.metrics()
        mandant = stack.mandant
        failed = value(
            metrics, "beenergised_refresh_failures_total", mandant=mandant, reason="auth"
        )
        attempts = value(
            metrics, "beenergised_api_requests_total", mandant=mandant, endpoint="token", code="401"
        )
        return failed or 0.0, attempts or 0.0

    try:
        failed_before, attempts_before = failed_and_attempts()
        wait_until(
            lambda: failed_and_attempts()[0] >= failed_before + 3, what="three failed refreshes"
        )
        failed, attempts = failed_and_attempts()
    finally:
        stack.clear()
    # one token request per refresh at most (the one in flight at the scrape may not have
    # failed yet): the endpoint is not hammered
    assert attempts - attempts_before <= failed - failed_before + 1
    stack.wait_healthy()


def test_no_secret_or_token_in_any_log_line(stack: Stack):
    """Runs last: the whole matrix above ran at debug level."""
    tokens = requests.get(stack.simulator.url + "/_sim/tokens", timeout=5).json()["issued"]
    assert len(tokens) > 5  # the matrix forced many new tokens
    log = stack.exporter.output
    assert "level=debug" in log
    assert SECRET not in log
    for token in tokens:
        assert token not in log
    for request in stack.simulator.request_log():
        assert SECRET not in request["path"]
    page = stack.exporter.get("/").text + stack.exporter.get("/metrics").text
    assert SECRET not in page and not any(token in page for token in tokens)
