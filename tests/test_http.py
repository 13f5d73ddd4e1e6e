import threading
import time

import pytest
import requests
import responses

from exporter.errors import ApiConnectionError, ApiTimeoutError
from exporter.http import Deadline, RetryPolicy, retry_after, send

URL = "https://api.example.test/thing"
FAST = RetryPolicy(attempts=4, backoff_base=0.001, backoff_cap=0.002)


def call(deadline: float = 10.0, retry: RetryPolicy = FAST, cancel=None):
    counted: list[tuple[str, str]] = []
    response = send(
        requests.Session(),
        "GET",
        URL,
        endpoint="charging_stations",
        what="stations",
        on_response=lambda e, c: counted.append((e, c)),
        deadline=Deadline(deadline, cancel),
        retry=retry,
    )
    return response, counted


@responses.activate
@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_retryable_statuses_are_retried_until_success(status):
    responses.get(URL, status=status)
    responses.get(URL, status=status)
    responses.get(URL, json={"ok": True})
    response, counted = call()
    assert response.status_code == 200
    assert [code for _, code in counted] == [str(status), str(status), "200"]


@responses.activate
@pytest.mark.parametrize("status", [400, 401, 403, 404, 500])
def test_other_statuses_are_returned_at_once(status):
    responses.get(URL, status=status)
    response, counted = call()
    assert response.status_code == status
    assert len(counted) == 1


@responses.activate
def test_retries_stop_after_the_last_attempt_and_return_the_answer():
    responses.get(URL, status=503)
    response, counted = call(retry=RetryPolicy(attempts=3, backoff_base=0.001))
    assert response.status_code == 503
    assert len(counted) == 3


@responses.activate
def test_connection_errors_are_retried_then_raised():
    responses.get(URL, body=requests.ConnectionError("refused"))
    with pytest.raises(ApiConnectionError, match="stations: cannot connect"):
        call()
    assert len(responses.calls) == 4


@responses.activate
def test_a_read_timeout_is_not_retried():
    responses.get(URL, body=requests.ReadTimeout("slow"))
    with pytest.raises(ApiTimeoutError, match="waiting for the answer"):
        call()
    assert len(responses.calls) == 1


@responses.activate
def test_retry_after_is_honoured():
    responses.get(URL, status=429, headers={"Retry-After": "1"})
    responses.get(URL, json={})
    started = time.monotonic()
    response, _ = call(retry=RetryPolicy(backoff_base=0.001))
    assert response.status_code == 200
    assert time.monotonic() - started >= 1.0


@responses.activate
def test_a_retry_after_beyond_the_deadline_gives_up_at_once():
    responses.get(URL, status=503, headers={"Retry-After": "5"})
    started = time.monotonic()
    response, counted = call(deadline=2.0)
    assert response.status_code == 503
    assert len(counted) == 1
    assert time.monotonic() - started < 1.0


@responses.activate
def test_an_unreasonable_retry_after_is_not_waited_for():
    responses.get(URL, status=429, headers={"Retry-After": "3600"})
    response, counted = call(deadline=7200)
    assert response.status_code == 429 and len(counted) == 1


@responses.activate
def test_an_expired_deadline_sends_nothing():
    responses.get(URL, json={})
    with pytest.raises(ApiTimeoutError, match="deadline"):
        call(deadline=0)
    assert len(responses.calls) == 0


@responses.activate
def test_cancelling_ends_a_backoff_wait_at_once():
    responses.get(URL, status=503, headers={"Retry-After": "30"})
    cancel = threading.Event()
    cancel.set()
    started = time.monotonic()
    with pytest.raises(ApiTimeoutError):
        call(deadline=60, retry=RetryPolicy(max_retry_after=60), cancel=cancel)
    assert time.monotonic() - started < 1.0


def test_retry_after_reads_seconds_and_http_dates():
    def with_header(value: str) -> requests.Response:
        response = requests.Response()
        response.headers["Retry-After"] = value
        return response

    assert retry_after(with_header("7")) == 7.0
    assert retry_after(with_header("Wed, 21 Oct 2015 07:28:00 GMT")) == 0.0  # in the past
    assert retry_after(with_header("soon")) is None
    assert retry_after(requests.Response()) is None


def test_backoff_grows_exponentially_with_full_jitter_and_a_cap():
    policy = RetryPolicy(backoff_base=1.0, backoff_cap=4.0)
    for attempt, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (6, 4.0)):
        delays = [policy.backoff(attempt) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling / 2  # jitter spreads over the whole range


def test_an_untrusted_certificate_is_a_tls_error_saying_what_to_set(tmp_path):
    from exporter.api import new_session
    from exporter.errors import TlsError
    from exporter.simulator import Inventory, Simulator
    from tests.helpers import private_ca

    ca, server = private_ca(tmp_path)
    with Simulator(Inventory(size=1), tls_cert_file=str(server), tls_key_file=str(server)) as sim:
        counted: list[tuple[str, str]] = []

        def get(session: requests.Session) -> requests.Response:
            return send(
                session,
                "GET",
                sim.api_url + "/_sim/state?client_secret=hidden",
                endpoint="state",
                what="state",
                on_response=lambda e, c: counted.append((e, c)),
                deadline=Deadline(10),
                retry=FAST,
            )

        with pytest.raises(TlsError) as caught:
            get(new_session())
        assert str(caught.value) == (
            "state: TLS certificate of 127.0.0.1 not trusted (unable to get local issuer "
            "certificate); if a private CA or a TLS-inspecting proxy is in the way, set "
            "ca_file (--api.ca-file) or REQUESTS_CA_BUNDLE to its CA certificate"
        )
        assert caught.value.reason == "tls"
        assert "hidden" not in str(caught.value)  # the host only, never the URL
        assert counted == [("state", "error")]  # not retried
        assert get(new_session(ca_file=str(ca))).status_code == 200

    with Simulator(Inventory(size=1)) as plain, pytest.raises(TlsError) as caught:
        send(
            new_session(),
            "GET",
            plain.api_url.replace("http://", "https://") + "/_sim/state",
            endpoint="state",
            what="state",
            on_response=lambda e, c: None,
            deadline=Deadline(10),
            retry=FAST,
        )
    assert str(caught.value).startswith("state: TLS handshake with 127.0.0.1 failed (wrong ")
    assert str(caught.value).endswith("does the URL's scheme and port speak HTTPS?")
