import base64
import gzip
import http.client
import logging
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest
import requests
import trustme
from prometheus_client import CollectorRegistry, ProcessCollector

from exporter.exposition import Exposition
from exporter.lifecycle import ReloadResult
from exporter.listeners import listen
from exporter.metrics import FleetCollector
from exporter.model import Change, MandantState, Snapshot, Station
from exporter.stationchanges import StationChanges
from exporter.web import ExporterApp, serve
from exporter.webauth import BasicAuth, WebConfig
from exporter.webconfig import load_web_config
from tests.helpers import wait_until


class States:
    """The app's inputs: the mandant states (``value``) and the station changes."""

    def __init__(self) -> None:
        self.value = [MandantState(name="north"), MandantState(name="<south>")]
        self.station_changes = StationChanges(max_entries=5)

    def __call__(self) -> list[MandantState]:
        return self.value


def exposition_of(states) -> Exposition:
    live = CollectorRegistry()
    ProcessCollector(registry=live)
    return Exposition(FleetCollector(), states, live)


@pytest.fixture
def server() -> Iterator[tuple[str, States]]:
    states = States()
    app = ExporterApp(
        exposition_of(states), states, states.station_changes, telemetry_path="/custom-metrics"
    )
    httpd, thread = serve(app, [listen("127.0.0.1", 0)])
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


def changes_of(n: int, kind: str = "added") -> list[Change]:
    return [Change(kind, f"id-{i}", f"Station {i}", f"cp_{i}", "", "1.0") for i in range(n)]


def test_changes_newest_first_with_filters_and_limit(server):
    url, states = server
    states.station_changes.record("north", 100.0, changes_of(2))
    states.station_changes.record(
        "<south>", 200.0, [Change("firmware_changed", "s1", "S <1>", "cp_s1", "1.0", "2.0")]
    )
    body = requests.get(url + "/changes", timeout=5).json()
    assert [c["id"] for c in body["changes"]] == [3, 2, 1]
    assert body["max_entries"] == 5
    assert body["changes"][0] == {
        "id": 3,
        "time": "1970-01-01T00:03:20Z",
        "timestamp": 200.0,
        "mandant": "<south>",
        "kind": "firmware_changed",
        "station_id": "s1",
        "label": "S <1>",
        "charge_box_identity": "cp_s1",
        "firmware_from": "1.0",
        "firmware_to": "2.0",
    }
    north = requests.get(url + "/changes", params={"mandant": "north"}, timeout=5).json()
    assert [c["station_id"] for c in north["changes"]] == ["id-1", "id-0"]
    moved = requests.get(url + "/changes", params={"kind": "firmware_changed"}, timeout=5).json()
    assert [c["id"] for c in moved["changes"]] == [3]
    one = requests.get(url + "/changes", params={"limit": "1", "kind": "added"}, timeout=5).json()
    assert [c["id"] for c in one["changes"]] == [2]


def test_changes_ring_keeps_the_newest(server):
    url, states = server
    states.station_changes.record("north", 1.0, changes_of(7))  # the ring holds 5
    ids = [c["id"] for c in requests.get(url + "/changes", timeout=5).json()["changes"]]
    assert ids == [7, 6, 5, 4, 3]


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("kind=moved", "'moved'"),
        ("mandant=east", "'east'"),
        ("limit=0", "limit"),
        ("limit=ten", "limit"),
        ("limit=", "limit"),
        ("mandnat=north", "'mandnat'"),
        ("kind=added&kind=removed", "'kind'"),
    ],
)
def test_changes_rejects_bad_parameters_with_a_reason(server, query, named):
    url, _ = server
    response = requests.get(f"{url}/changes?{query}", timeout=5)
    assert response.status_code == 400
    assert response.headers["Content-Type"] == "application/json"
    assert named in response.json()["error"]


def test_landing_page_shows_the_latest_changes_escaped(server):
    url, states = server
    assert "no changes since the exporter started" in requests.get(url + "/", timeout=5).text
    states.station_changes.record(
        "north", 0.0, [Change("firmware_changed", "s1", "Hof <Süd>", "cp_s1", "1.0", "2.0")]
    )
    page = requests.get(url + "/", timeout=5).text
    assert "<td>Hof &lt;Süd&gt;</td>" in page
    assert "<td>1.0 → 2.0</td>" in page
    assert "<td>firmware changed</td>" in page


def test_unknown_paths_and_methods(server):
    url, _ = server
    assert requests.get(url + "/nope", timeout=5).status_code == 404
    assert requests.post(url + "/custom-metrics", timeout=5).status_code == 405


# Basic auth and TLS from the web config file

PASSWORD = "scrape-me"
USERS = {"prometheus": bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4))}
CHALLENGE = 'Basic realm="beenergised-exporter"'


@dataclass(frozen=True)
class Pki:
    """A test CA, a server certificate for 127.0.0.1, and client certificates (PEM files)."""

    directory: Path
    ca: Path
    client: Path  # key and certificate, signed by the CA
    stranger: Path  # key and certificate from another CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(directory / "ca.crt")
    server = ca.issue_cert("127.0.0.1")
    server.cert_chain_pems[0].write_to_path(directory / "server.crt")
    server.private_key_pem.write_to_path(directory / "server.key")
    ca.issue_cert("prometheus.test").private_key_and_cert_chain_pem.write_to_path(
        directory / "client.pem"
    )
    trustme.CA().issue_cert("stranger.test").private_key_and_cert_chain_pem.write_to_path(
        directory / "stranger.pem"
    )
    return Pki(
        directory, directory / "ca.crt", directory / "client.pem", directory / "stranger.pem"
    )


def tls_config(pki: Pki, extra: str = "") -> WebConfig:
    """The web config of a file next to the certificates (relative paths), plus ``extra``."""
    path = pki.directory / "web.yml"
    path.write_text(f"tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n{extra}")
    return load_web_config(str(path))


@pytest.fixture
def start() -> Iterator[Callable[..., int]]:
    """Starts the real app with a web config and optional basic auth; returns the port."""
    servers = []

    def start(
        web_config: WebConfig | None,
        *,
        auth: bool = True,
        telemetry_path: str = "/metrics",
        reload: Callable[[], ReloadResult] | None = None,
    ) -> int:
        states = States()
        states.value = ready_states()
        app = ExporterApp(
            exposition_of(states),
            states,
            states.station_changes,
            telemetry_path=telemetry_path,
            auth=BasicAuth(USERS) if auth else None,
            reload=reload,
        )
        httpd, thread = serve(app, [listen("127.0.0.1", 0)], web_config)
        servers.append((httpd, thread))
        return httpd.server_address[1]

    yield start
    for httpd, thread in servers:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def web_log(caplog) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="exporter.web")
    caplog.set_level(logging.DEBUG, logger="exporter.webserver")
    return caplog


def assert_no_traceback(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture) -> None:
    assert not [record for record in caplog.records if record.exc_info]
    assert "Traceback" not in capfd.readouterr().err


def test_tls_with_basic_auth(start, pki, web_log, capfd):
    url = f"https://127.0.0.1:{start(tls_config(pki))}"
    good = ("prometheus", PASSWORD)
    response = requests.get(url + "/metrics", auth=good, verify=pki.ca, timeout=5)
    assert response.status_code == 200
    assert 'beenergised_charging_stations{mandant="north"} 1.0' in response.text
    for auth in [("prometheus", "wrong"), ("nobody", PASSWORD), None]:
        for path in ["/metrics", "/", "/readyz", "/nope"]:
            denied = requests.get(url + path, auth=auth, verify=pki.ca, timeout=5)
            assert denied.status_code == 401, (auth, path)
            assert denied.headers["WWW-Authenticate"] == CHALLENGE
            assert denied.text == "unauthorized\n"
    healthz = requests.get(url + "/healthz", verify=pki.ca, timeout=5)
    assert healthz.status_code == 200 and healthz.text == "ok\n"
    assert requests.get(url + "/readyz", auth=good, verify=pki.ca, timeout=5).status_code == 200
    logged = web_log.text
    assert PASSWORD not in logged and "Authorization" not in logged and "Basic " not in logged
    assert_no_traceback(web_log, capfd)


def test_basic_auth_without_tls(start):
    url = f"http://127.0.0.1:{start(None)}"
    assert requests.get(url + "/metrics", timeout=5).status_code == 401
    assert requests.get(url + "/metrics", auth=("prometheus", PASSWORD), timeout=5).ok
    assert requests.get(url + "/healthz", timeout=5).status_code == 200
    assert requests.post(url + "/metrics", timeout=5).status_code == 401
    assert requests.post(url + "/healthz", timeout=5).status_code == 405


def test_reload_endpoint_answers_as_prometheus_lifecycle_api(start):
    outcomes = [
        ReloadResult(True, "configuration reloaded: 1 mandant(s); added: none; ..."),
        ReloadResult(True, "configuration reloaded: 2 mandant(s); added: south; ..."),
        ReloadResult(False, "reload failed, still running the previous configuration: x.yml: y"),
        ReloadResult(False, "the exporter is shutting down; nothing reloaded", done=False),
    ]
    asked: list[ReloadResult] = []

    def reload() -> ReloadResult:
        asked.append(outcomes[len(asked)])
        return asked[-1]

    url = f"http://127.0.0.1:{start(None, reload=reload)}/-/reload"
    good = ("prometheus", PASSWORD)
    for method in ("POST", "PUT", "GET"):
        denied = requests.request(method, url, timeout=5)
        assert (denied.status_code, denied.text) == (401, "unauthorized\n"), method
    for method in ("GET", "HEAD", "DELETE", "PATCH"):
        response = requests.request(method, url, auth=good, timeout=5)
        assert response.status_code == 405, method
        assert response.headers["Allow"] == "POST, PUT"
    assert requests.get(url, auth=good, timeout=5).text == "Only POST or PUT requests allowed\n"
    assert asked == [], "no reload without POST or PUT and credentials"
    answers = [
        requests.post(url, auth=good, timeout=5),
        requests.put(url, auth=good, timeout=5),
        requests.post(url, auth=good, timeout=5),
        requests.post(url, auth=good, timeout=5),
    ]
    assert [(r.status_code, r.text) for r in answers] == [
        (200, outcomes[0].message + "\n"),
        (200, outcomes[1].message + "\n"),
        (500, outcomes[2].message + "\n"),
        (503, outcomes[3].message + "\n"),
    ]
    assert all(r.headers["Content-Type"] == "text/plain; charset=utf-8" for r in answers)


def test_reload_endpoint_is_forbidden_unless_enabled(start):
    url = f"http://127.0.0.1:{start(None, auth=False)}/-/reload"
    for method in ("POST", "PUT"):
        response = requests.request(method, url, timeout=5)
        assert (response.status_code, response.text) == (403, "Lifecycle API is not enabled.\n")
    assert requests.get(url, timeout=5).status_code == 405


def test_a_telemetry_path_of_healthz_still_needs_credentials(start):
    url = f"http://127.0.0.1:{start(None, telemetry_path='/healthz')}"
    assert requests.get(url + "/healthz", timeout=5).status_code == 401
    response = requests.get(url + "/healthz", auth=("prometheus", PASSWORD), timeout=5)
    assert "beenergised_up" in response.text


def test_web_config_without_tls_serves_plain_http(start, pki):
    port = start(WebConfig(ssl_context=None, users=USERS), auth=False)
    assert requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).status_code == 200


def test_plain_http_to_the_tls_port_gets_400_and_the_server_keeps_serving(
    start, pki, web_log, capfd
):
    port = start(tls_config(pki), auth=False)
    response = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert response.status_code == 400
    assert response.text == "Client sent an HTTP request to an HTTPS server.\n"
    assert requests.get(f"https://127.0.0.1:{port}/metrics", verify=pki.ca, timeout=5).ok
    assert [r.message for r in web_log.records if "plain HTTP" in r.message] == [
        "127.0.0.1 sent plain HTTP (or no TLS) to the TLS port; answered 400"
    ]
    assert_no_traceback(web_log, capfd)


def test_a_silent_client_does_not_stall_the_others(start, pki):
    port = start(tls_config(pki), auth=False)
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        # Accepted first, says nothing: its handshake waits without holding up the others.
        response = requests.get(f"https://127.0.0.1:{port}/healthz", verify=pki.ca, timeout=5)
        assert response.status_code == 200


def test_a_failed_handshake_is_one_debug_line(start, pki, web_log, capfd):
    port = start(tls_config(pki), auth=False)
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"https://127.0.0.1:{port}/healthz", timeout=5)  # does not trust our CA
    wait_until(
        lambda: any("TLS handshake with 127.0.0.1 failed" in r.message for r in web_log.records),
        timeout=5,
        what="the server to log the failed handshake",
    )
    assert_no_traceback(web_log, capfd)


def tls12_client(pki: Pki, port: int) -> http.client.HTTPSConnection:
    context = ssl.create_default_context(cafile=pki.ca)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    return http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)


def test_tls12_clients_are_welcome_by_default(start, pki):
    connection = tls12_client(pki, start(tls_config(pki), auth=False))
    try:
        connection.request("GET", "/healthz")
        assert connection.sock.version() == "TLSv1.2"
        assert connection.getresponse().status == 200
    finally:
        connection.close()


def test_min_version_tls13_refuses_tls12_clients(start, pki):
    port = start(tls_config(pki, "  min_version: TLS13\n"), auth=False)
    connection = tls12_client(pki, port)
    try:
        with pytest.raises(ssl.SSLError):
            connection.request("GET", "/healthz")
    finally:
        connection.close()
    assert requests.get(f"https://127.0.0.1:{port}/healthz", verify=pki.ca, timeout=5).ok


def test_required_client_certificates(start, pki):
    extra = "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n"
    url = f"https://127.0.0.1:{start(tls_config(pki, extra))}/metrics"
    good = ("prometheus", PASSWORD)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(url, auth=good, verify=pki.ca, timeout=5)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(url, auth=good, verify=pki.ca, cert=str(pki.stranger), timeout=5)
    response = requests.get(url, auth=good, verify=pki.ca, cert=str(pki.client), timeout=5)
    assert response.status_code == 200
    # A certificate is not a password: basic auth still applies.
    assert requests.get(url, verify=pki.ca, cert=str(pki.client), timeout=5).status_code == 401


def test_optional_client_certificates_are_verified_when_given(start, pki):
    extra = "  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca.crt\n"
    url = f"https://127.0.0.1:{start(tls_config(pki, extra), auth=False)}/healthz"
    assert requests.get(url, verify=pki.ca, timeout=5).ok
    assert requests.get(url, verify=pki.ca, cert=str(pki.client), timeout=5).ok
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(url, verify=pki.ca, cert=str(pki.stranger), timeout=5)


def test_new_users_replace_the_old_and_keep_the_queue_of_password_checks():
    states = States()
    states.value = ready_states()
    app = ExporterApp(exposition_of(states), states, states.station_changes, auth=BasicAuth(USERS))

    def status(user: str | None) -> str:
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/readyz", "REMOTE_ADDR": "192.0.2.1"}
        if user is not None:
            token = base64.b64encode(f"{user}:{PASSWORD}".encode()).decode()
            environ["HTTP_AUTHORIZATION"] = f"Basic {token}"
        answered: list[str] = []
        app(environ, lambda status, headers, exc_info=None: answered.append(status))
        return answered[0]

    assert status("prometheus") == "200 OK"
    queue = app._auth._queue
    app.set_users({"carol": USERS["prometheus"]})
    assert app._auth._queue is queue  # one bcrypt run at a time, before and after
    assert (status("prometheus"), status("carol")) == ("401 Unauthorized", "200 OK")
    app.set_users({})
    assert status(None) == "200 OK"
