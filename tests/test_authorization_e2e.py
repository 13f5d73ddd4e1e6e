"""End to end: the form of the Authorization header, the real exporter process against the real
simulator process demanding one form (``--authorization``) or refusing every token."""

from __future__ import annotations

import re

import pytest
import requests

from tests.helpers import (
    E2E_CLIENT,
    ExporterProcess,
    SimulatorProcess,
    env_for,
    scrape,
    value,
    wait_until,
)

pytestmark = pytest.mark.e2e

MANDANT = "127.0.0.1"  # the default name of a mandant whose URL has an IP address
STATIONS = 12
FOUND = re.compile(r"mandant 127\.0\.0\.1: the API (no longer )?accepts the access token as")


def start_simulator(simulator_process, demands: str) -> SimulatorProcess:
    return simulator_process(
        "--stations", str(STATIONS), "--max-page-limit", "5", "--authorization", demands,
        "--client-id", E2E_CLIENT[0], "--client-secret", E2E_CLIENT[1],
    )  # fmt: skip


def start_exporter(exporter_process, simulator: SimulatorProcess, *args: str) -> ExporterProcess:
    return exporter_process(
        ["--refresh.interval=1s", "--api.page-limit=5", *args], env_for(simulator)
    )


def counts(exporter: ExporterProcess) -> dict[str, float]:
    """From one scrape, so they belong to the same refresh: every refresh publishes its failure
    and the requests it made at once."""
    metrics = scrape(exporter)

    def sample(name: str, **labels: str) -> float:
        return value(metrics, name, mandant=MANDANT, **labels) or 0.0

    def requests_to(endpoint: str, code: str) -> float:
        return sample("beenergised_api_requests_total", endpoint=endpoint, code=code)

    return {
        "auth_failures": sample("beenergised_refresh_failures_total", reason="auth"),
        "failures": sum(
            v
            for (name, labels), v in metrics.items()
            if name == "beenergised_refresh_failures_total" and ("mandant", MANDANT) in labels
        ),
        "pages_401": requests_to("charging_stations", "401"),
        "pages_200": requests_to("charging_stations", "200"),
        "tokens": requests_to("token", "200"),
        "successes": sample("beenergised_last_refresh_success_timestamp_seconds"),
        "stations": sample("beenergised_charging_stations"),
    }


def tokens_issued(simulator: SimulatorProcess) -> list[str]:
    return requests.get(simulator.url + "/_sim/tokens", timeout=5).json()["issued"]


def assert_no_token_logged(exporter: ExporterProcess, simulator: SimulatorProcess) -> None:
    issued = tokens_issued(simulator)
    assert issued, "the simulator issued no token"
    assert not [token for token in issued if token in exporter.output]


def test_auto_reads_an_api_that_wants_the_bare_token_and_keeps_that_form(
    simulator_process, exporter_process
):
    simulator = start_simulator(simulator_process, "raw")
    exporter = start_exporter(exporter_process, simulator)  # default: --api.authorization=auto
    first = wait_until(
        lambda: (c := counts(exporter))["stations"] == STATIONS and c,
        what="the fleet on /metrics",
    )
    # The first page: Bearer with the first token, Bearer with a fresh one, then the bare one.
    assert (first["pages_401"], first["tokens"], first["failures"]) == (2, 2, 0)
    wait_until(
        lambda: counts(exporter)["successes"] > first["successes"],
        what="another successful refresh",
    )
    later = wait_until(
        lambda: (c := counts(exporter))["pages_200"] >= first["pages_200"] + 6 and c,
        what="two more refreshes",
    )
    assert (later["pages_401"], later["tokens"], later["failures"]) == (2, 2, 0)
    found = [line for line in exporter.lines if FOUND.search(line)]
    assert len(found) == 1, found
    assert "level=info" in found[0]
    assert "as Authorization: <token> (--api.authorization=auto)" in found[0]
    assert_no_token_logged(exporter, simulator)


def test_auto_against_an_api_that_wants_bearer_makes_no_extra_request(
    simulator_process, exporter_process
):
    simulator = start_simulator(simulator_process, "bearer")
    exporter = start_exporter(exporter_process, simulator)
    first = wait_until(
        lambda: (c := counts(exporter))["stations"] == STATIONS and c,
        what="the fleet on /metrics",
    )
    wait_until(
        lambda: counts(exporter)["successes"] > first["successes"],
        what="another successful refresh",
    )
    statuses = {record["status"] for record in simulator.request_log()}
    assert statuses == {200}
    assert len(tokens_issued(simulator)) == 1
    found = [line for line in exporter.lines if FOUND.search(line)]
    assert len(found) == 1 and "as Authorization: Bearer <token>" in found[0], found


def assert_bounded_auth_failures(
    exporter: ExporterProcess, simulator: SimulatorProcess, pages_per_refresh: int
) -> None:
    """Three refreshes fail with reason auth, each with ``pages_per_refresh`` page requests and
    one token (the first refresh two), and one warning each; nothing else is asked."""
    done = wait_until(
        lambda: (c := counts(exporter))["auth_failures"] >= 3 and c,
        what="three auth failures",
    )
    failed = done["auth_failures"]
    assert done["failures"] == failed  # no other reason
    assert done["pages_401"] == pages_per_refresh * failed
    assert done["pages_200"] == 0
    assert done["tokens"] == failed + 1
    # The simulator's own count, read after the scrape: at most one more refresh went on.
    pages = [r for r in simulator.request_log() if "charging_stations" in r["path"]]
    assert pages_per_refresh * failed <= len(pages) <= pages_per_refresh * (failed + 1)
    warnings = [line for line in exporter.lines if "failed (auth)" in line]
    assert failed <= len(warnings) <= failed + 1
    assert all("level=warn" in line for line in warnings)
    assert not [line for line in exporter.lines if FOUND.search(line)]
    assert_no_token_logged(exporter, simulator)


def test_bearer_set_against_an_api_that_wants_the_bare_token_fails_auth_without_a_loop(
    simulator_process, exporter_process
):
    simulator = start_simulator(simulator_process, "raw")
    exporter = start_exporter(exporter_process, simulator, "--api.authorization=bearer")
    assert_bounded_auth_failures(exporter, simulator, pages_per_refresh=2)
    warning = next(line for line in exporter.lines if "failed (auth)" in line)
    assert "as Authorization: Bearer <token> (--api.authorization=bearer)" in warning
    assert "or try --api.authorization=auto" in warning


def test_a_token_refused_in_both_forms_is_one_auth_failure_a_refresh(
    simulator_process, exporter_process
):
    simulator = start_simulator(simulator_process, "any")
    # Every page request is refused, whatever token and form: a token the API does not take.
    fault = {"kind": "status", "status": 401, "endpoint": "stations"}
    requests.post(simulator.url + "/_sim/faults", json=fault, timeout=5).raise_for_status()
    exporter = start_exporter(exporter_process, simulator)
    assert_bounded_auth_failures(exporter, simulator, pages_per_refresh=3)
    warning = next(line for line in exporter.lines if "failed (auth)" in line)
    assert "as Authorization: Bearer <token>, and as Authorization: <token> (HTTP 401)" in warning
