import gzip
from collections.abc import Iterator

import pytest
import requests
from prometheus_client import CollectorRegistry

from exporter.metrics import FleetCollector
from exporter.model import Snapshot, Station
from exporter.refresh import MandantState
from exporter.web import ExporterApp, serve


class States:
    def __init__(self) -> None:
        self.value = [MandantState(name="north"), MandantState(name="<south>")]

    def __call__(self) -> list[MandantState]:
        return self.value


@pytest.fixture
def server() -> Iterator[tuple[str, States]]:
    states = States()
    registry = CollectorRegistry()
    registry.register(FleetCollector(states))
    app = ExporterApp(registry, states, telemetry_path="/custom-metrics")
    httpd, thread = serve(app, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", states
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def ready_states() -> list[MandantState]:
    snapshot = Snapshot.build([Station("a", "A", "cp_a", "1.0", "SN")], 0.0)
    return [
        MandantState(name="north", snapshot=snapshot, up=True, last_success=0.0),
        MandantState(name="<south>", snapshot=snapshot, up=True, last_success=0.0),
    ]


def test_healthz_answers_while_the_process_runs(server):
    url, _ = server
    response = requests.get(url + "/healthz", timeout=5)
    assert response.status_code == 200


def test_readyz_waits_for_every_mandant(server):
    url, states = server
    response = requests.get(url + "/readyz", timeout=5)
    assert response.status_code == 503
    assert "north" in response.text and "<south>" in response.text
    states.value = ready_states()
    assert requests.get(url + "/readyz", timeout=5).status_code == 200


def test_metrics_on_the_configured_path_only(server):
    url, states = server
    states.value = ready_states()
    response = requests.get(url + "/custom-metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert 'beenergised_charging_stations{mandant="north"} 1.0' in response.text
    assert requests.get(url + "/metrics", timeout=5).status_code == 404


def test_openmetrics_when_the_scraper_asks(server):
    url, _ = server
    response = requests.get(
        url + "/custom-metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0"},
        timeout=5,
    )
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")


def test_gzip_when_accepted(server):
    url, _ = server
    response = requests.get(
        url + "/custom-metrics", headers={"Accept-Encoding": "gzip"}, stream=True, timeout=5
    )
    assert response.headers["Content-Encoding"] == "gzip"
    body = gzip.decompress(response.raw.read())
    assert b"beenergised_up" in body
    plain = requests.get(
        url + "/custom-metrics", headers={"Accept-Encoding": "identity"}, timeout=5
    )
    assert "Content-Encoding" not in plain.headers


def test_landing_page_shows_each_mandant_escaped(server):
    url, states = server
    page = requests.get(url + "/", timeout=5)
    assert page.status_code == 200
    assert "&lt;south&gt;" in page.text and "<south>" not in page.text
    assert 'href="/custom-metrics"' in page.text
    states.value = ready_states()
    assert ">up<" in requests.get(url + "/", timeout=5).text


def test_unknown_paths_and_methods(server):
    url, _ = server
    assert requests.get(url + "/nope", timeout=5).status_code == 404
    assert requests.post(url + "/custom-metrics", timeout=5).status_code == 405
