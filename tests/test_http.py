import gzip
import threading
import time
import tracemalloc

import pytest
import requests
import responses

from exporter.errors import (
    ApiConnectionError,
    ApiTimeoutError,
    RedirectError,
    ResponseTooLargeError,
    UnreadableAnswerError,
)
from exporter.http import Answer, Deadline, RetryPolicy, retry_after, send
from exporter.session import BoundedSession
from tests.rawhttp import RawServer, Reply, http

URL = "https://api.example.test/thing"
FAST = RetryPolicy(attempts=4, backoff_base=0.001, backoff_cap=0.002)


def call(deadline: float = 10.0, retry: RetryPolicy = FAST, cancel=None):
    counted: list[tuple[str, str]] = []
    response = send(
        BoundedSession(),
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
            get(BoundedSession())
        assert str(caught.value) == (
            "state: TLS certificate of 127.0.0.1 not trusted (unable to get local issuer "
            "certificate); if a private CA or a TLS-inspecting proxy is in the way, set "
            "ca_file (--api.ca-file) or REQUESTS_CA_BUNDLE to its CA certificate"
        )
        assert caught.value.reason == "tls"
        assert "hidden" not in str(caught.value)  # the host only, never the URL
        assert counted == [("state", "error")]  # not retried
        assert get(BoundedSession(ca_file=str(ca))).status_code == 200

    with Simulator(Inventory(size=1)) as plain, pytest.raises(TlsError) as caught:
        send(
            BoundedSession(),
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


@pytest.mark.parametrize(
    "value",
    ["\xb2", "\u0663", "\uff13", "1\xb2", " \xb2 ", "1e3", "-5", "5.0", "0x10", "1_0", ""],
)
def test_retry_after_reads_ascii_digits_only(value):
    response = requests.Response()
    response.headers["Retry-After"] = value
    assert retry_after(response) is None  # the usual backoff, never an exception


def test_retry_after_bounds_what_it_reads():
    response = requests.Response()
    response.headers["Retry-After"] = "9" * 5000  # past int()'s 4,300 digits
    assert retry_after(response) == 1e18
    for date in (
        "Wed, 21 Oct 2015 07:28:00 GMT" + " " * 20 + "x",
        "Wed, 21 Oct 2015 07:28:00 GMT\xb2",
    ):
        response.headers["Retry-After"] = date
        assert retry_after(response) is None


# --- answers that came but cannot be read: a raw socket double sends the exact bytes ---------


def raw_call(data: bytes, retry: RetryPolicy = FAST) -> tuple[Exception | None, list[str]]:
    """GET against a raw double answering ``data`` to every request: (the error, the codes
    counted). Each answer closes its connection."""
    counted: list[str] = []
    with RawServer(lambda request: Reply(data)) as server:
        try:
            get_thing(server, counted, retry)
        except Exception as exc:  # the test looks at what it is
            return exc, counted
    return None, counted


JSON = [("Content-Type", "application/json")]
CHUNKED = [*JSON, ("Transfer-Encoding", "chunked")]
UNREADABLE = {
    "bad gzip stream": (
        http(200, [*JSON, ("Content-Encoding", "gzip")], b"not gzip at all"),
        "could not decode the answer (not a valid 'gzip' stream)",
        "200",
    ),
    "bad deflate stream": (
        http(200, [*JSON, ("Content-Encoding", "deflate")], b"\x00garbage"),
        "could not decode the answer (not a valid 'deflate' stream)",
        "200",
    ),
    "chunk size not hex": (
        http(200, CHUNKED, b"zz\r\nabc\r\n0\r\n\r\n", length=False),
        "could not read the answer (broken chunked encoding)",
        "200",
    ),
    "negative chunk size": (
        http(200, CHUNKED, b"-1\r\n" + b"x" * 100_000, length=False),
        "could not read the answer (broken chunked encoding)",
        "200",
    ),
    "chunk size line of 70 KB": (
        http(200, CHUNKED, b"1" + b";" * 70_000 + b"\r\nx\r\n0\r\n\r\n", length=False),
        "could not read the answer (broken chunked encoding)",
        "200",
    ),
    "bad status line": (
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        "the answer is not HTTP/1.x (a bad status line)",
        "error",
    ),
    "another protocol": (
        b"SSH-2.0-OpenSSH_9.2\r\n",
        "the answer is not HTTP/1.x (a bad status line)",
        "error",
    ),
    "HTTP/2 status line": (
        b"HTTP/2.0 200 OK\r\n\r\n",
        "the answer is not HTTP/1.x (its status line names another version)",
        "error",
    ),
    "header line of 70 KB": (
        b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000 + b"\r\n\r\n",
        "the answer is not HTTP/1.x (a header line longer than 64 KiB)",
        "error",
    ),
    "120 header lines": (
        b"HTTP/1.1 200 OK\r\n" + b"X: a\r\n" * 120 + b"\r\n",
        "the answer is not HTTP/1.x (more than 100 header lines)",
        "error",
    ),
}


@pytest.mark.parametrize("data, message, code", UNREADABLE.values(), ids=UNREADABLE.keys())
def test_an_answer_that_cannot_be_read_is_a_parse_error_and_not_retried(data, message, code):
    error, counted = raw_call(data)
    assert isinstance(error, UnreadableAnswerError), repr(error)
    assert error.reason == "parse"
    assert str(error) == f"stations: {message}"
    assert counted == [code]  # one attempt: the server would answer the same again


BROKEN = {
    "closed without an answer": (b"", "the server closed the connection without answering"),
    "closed amid a Content-Length body": (
        http(200, [*JSON, ("Content-Length", "100")], b'{"data": [', length=False),
        "the connection broke before the answer was complete",
    ),
    "closed amid a chunk": (
        http(200, CHUNKED, b"10\r\n{}", length=False),
        "the connection broke before the answer was complete",
    ),
    "closed between chunks": (
        http(200, CHUNKED, b"2\r\n{}\r\n", length=False),
        "the connection broke before the answer was complete",
    ),
}


@pytest.mark.parametrize("data, message", BROKEN.values(), ids=BROKEN.keys())
def test_a_connection_that_broke_is_retried_and_says_so(data, message):
    error, counted = raw_call(data)
    assert isinstance(error, ApiConnectionError) and error.reason == "connection", repr(error)
    assert str(error) == f"stations: {message}"
    assert counted == ["error"] * 4


def test_a_negative_chunk_size_does_not_read_the_stream_past_the_size_limit():
    # urllib3 reads chunk size -1 as "read to the end", in one read past every limit
    answer = http(200, CHUNKED, b"-1\r\n" + b"x" * (64 * 1024 * 1024), length=False)
    tracemalloc.start()
    try:
        error, _ = raw_call(answer, retry=RetryPolicy(attempts=1))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(error, UnreadableAnswerError), repr(error)
    assert peak < 16 * 1024 * 1024, f"{peak} bytes allocated at the peak"


@pytest.mark.parametrize("length", ["9" * 5000, "99999999999999999999"])
def test_a_content_length_of_many_digits_is_refused_as_too_large(length):
    data = http(200, [*JSON, ("Content-Length", length)], b"{}", length=False)
    error, counted = raw_call(data)
    assert isinstance(error, ResponseTooLargeError), repr(error)
    assert counted == ["200"]


@pytest.mark.parametrize("location", [b"http://[::1/x", b"http://[zz]/", b"/a\xff\xfe"])
def test_a_redirect_to_a_location_that_is_not_a_url_is_refused(location):
    error, counted = raw_call(http(302, [(b"Location", location)]))
    assert isinstance(error, RedirectError), repr(error)
    assert str(error).endswith(
        "redirected (HTTP 302) to a Location that is not a URL: not followed"
    )
    assert counted == ["302"]


def test_a_unicode_digit_in_retry_after_is_retried_with_the_usual_backoff():
    answers = iter([http(503, [(b"Retry-After", b"\xb2")]), http(200, JSON, b"{}")])
    counted: list[str] = []
    with RawServer(lambda request: Reply(next(answers))) as server:
        answer = get_thing(server, counted)
    assert answer.status_code == 200
    assert counted == ["503", "200"]


def redirect_then_ok(first: bytes) -> tuple[list[str], RawServer]:
    """A GET whose first answer is ``first`` (a redirect to /ok) and every other an empty
    JSON object: the codes counted, and the double (for its requests)."""
    counted: list[str] = []
    answers = iter([first])
    with RawServer(lambda request: Reply(next(answers, http(200, JSON, b"{}")))) as server:
        answer = get_thing(server, counted)
    assert answer.status_code == 200 and answer.body == b"{}"
    return counted, server


def get_thing(server: RawServer, counted: list[str], retry: RetryPolicy = FAST) -> Answer:
    """``send`` a GET of /thing to ``server``; the codes counted go to ``counted``."""
    return send(
        BoundedSession(),
        "GET",
        server.url + "/thing",
        endpoint="charging_stations",
        what="stations",
        on_response=lambda e, c: counted.append(c),
        deadline=Deadline(10),
        retry=retry,
    )


def test_a_redirect_body_is_not_read():
    # requests would read it whole into memory, past --api.max-response-size: 64 MB here
    answer = http(302, [("Location", "/ok")], b"x" * (64 * 1024 * 1024))
    tracemalloc.start()
    try:
        counted, server = redirect_then_ok(answer)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert counted == ["200"]  # one request of ours, the redirect followed within it
    assert [r.path for r in server.requests] == ["/thing", "/ok"]
    assert peak < 16 * 1024 * 1024, f"{peak} bytes allocated at the peak"


def test_a_redirect_body_that_breaks_after_some_was_decoded_is_no_runtime_error():
    part = gzip.compress(b"x" * 100_000)
    headers = [("Location", "/ok"), ("Content-Encoding", "gzip"), ("Content-Length", "99999")]
    counted, server = redirect_then_ok(http(302, headers, part[: len(part) // 2], length=False))
    assert counted == ["200"]
    assert [r.path for r in server.requests] == ["/thing", "/ok"]
