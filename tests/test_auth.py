import base64
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses

from exporter.auth import TokenSource
from exporter.errors import ApiConnectionError, ApiHttpError, AuthError, ParseError
from exporter.http import Deadline, RetryPolicy
from exporter.model import Secret
from exporter.session import BoundedSession

TOKEN_URL = "https://auth.example.test/token"
SECRET = "s3cr3t-client-secret"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def make_source(
    method: str = "basic", clock: Clock | None = None, calls=None, monotonic: Clock | None = None
) -> TokenSource:
    clock = clock or Clock()  # the monotonic clock too, unless one of its own is given
    return TokenSource(
        token_url=TOKEN_URL,
        client_id="my-client",
        client_secret=Secret(SECRET),
        auth_method=method,
        session=BoundedSession(),
        clock=clock,
        monotonic=monotonic or clock,
        on_response=(lambda e, c: calls.append((e, c))) if calls is not None else None,
        retry=RetryPolicy(attempts=1),  # retries are tested in test_http.py
    )


def token_reply(value: str = "tok-1", expires_in: object = 3600) -> dict:
    return {"access_token": value, "expires_in": expires_in, "token_type": "Bearer"}


@responses.activate
def test_basic_method_sends_credentials_in_the_authorization_header_only():
    responses.post(TOKEN_URL, json=token_reply())
    assert make_source("basic").token(Deadline(60)) == "tok-1"
    request = responses.calls[0].request
    expected = base64.b64encode(f"my-client:{SECRET}".encode()).decode()
    assert request.headers["Authorization"] == f"Basic {expected}"
    assert parse_qs(request.body) == {"grant_type": ["client_credentials"]}
    assert SECRET not in request.url


@responses.activate
def test_post_method_sends_credentials_in_the_form_body():
    responses.post(TOKEN_URL, json=token_reply())
    make_source("post").token(Deadline(60))
    request = responses.calls[0].request
    assert "Authorization" not in request.headers
    body = parse_qs(request.body)
    assert body["client_id"] == ["my-client"]
    assert body["client_secret"] == [SECRET]
    assert SECRET not in request.url


@responses.activate
def test_query_method_sends_credentials_like_the_quickstart():
    responses.post(TOKEN_URL, json=token_reply())
    make_source("query").token(Deadline(60))
    query = parse_qs(urlsplit(responses.calls[0].request.url).query)
    assert query["grant_type"] == ["client_credentials"]
    assert query["client_secret"] == [SECRET]


@responses.activate
def test_token_is_cached_until_shortly_before_expiry():
    responses.post(TOKEN_URL, json=token_reply("tok-1", 3600))
    responses.post(TOKEN_URL, json=token_reply("tok-2", 3600))
    clock = Clock()
    source = make_source(clock=clock)
    assert source.token(Deadline(60)) == "tok-1"
    assert source.expires_at == clock.now + 3600
    clock.now += 3600 - 301  # still more than the 300 s renewal margin left
    assert source.token(Deadline(60)) == "tok-1"
    assert len(responses.calls) == 1
    clock.now += 2  # inside the margin: renew before it runs out
    assert source.token(Deadline(60)) == "tok-2"
    assert len(responses.calls) == 2


@responses.activate
@pytest.mark.parametrize("step", [-3600.0, 3600.0], ids=["back", "forward"])
def test_a_step_of_the_wall_clock_does_not_move_the_renewal(step):
    """Stepped back, a wall-clock deadline kept a token an hour past its end (each refresh
    then met a 401 first); stepped forward, it dropped a good one."""
    responses.post(TOKEN_URL, json=token_reply("tok-1", 3600))
    responses.post(TOKEN_URL, json=token_reply("tok-2", 3600))
    wall, monotonic = Clock(), Clock()
    source = make_source(clock=wall, monotonic=monotonic)
    assert source.token(Deadline(60)) == "tok-1"
    wall.now += step  # the wall clock steps alone
    for clock in (wall, monotonic):
        clock.now += 3600 - 301  # still more than the 300 s renewal margin left
    assert source.token(Deadline(60)) == "tok-1"
    for clock in (wall, monotonic):
        clock.now += 2  # inside the margin
    assert source.token(Deadline(60)) == "tok-2"
    assert source.expires_at == wall.now + 3600  # the metric shows the wall-clock time


@responses.activate
def test_short_lived_tokens_are_renewed_at_ten_percent_before_expiry():
    responses.post(TOKEN_URL, json=token_reply("tok-1", 10))
    responses.post(TOKEN_URL, json=token_reply("tok-2", 10))
    clock = Clock()
    source = make_source(clock=clock)
    source.token(Deadline(60))
    clock.now += 8.9
    assert source.token(Deadline(60)) == "tok-1"
    clock.now += 0.2
    assert source.token(Deadline(60)) == "tok-2"


@responses.activate
def test_invalidate_drops_only_the_rejected_token():
    responses.post(TOKEN_URL, json=token_reply("tok-1"))
    responses.post(TOKEN_URL, json=token_reply("tok-2"))
    source = make_source()
    assert source.token(Deadline(60)) == "tok-1"
    source.invalidate("some-older-token")
    assert source.token(Deadline(60)) == "tok-1"
    source.invalidate("tok-1")
    assert source.token(Deadline(60)) == "tok-2"


@responses.activate
def test_invalid_client_says_the_credentials_are_wrong_without_the_secret():
    responses.post(TOKEN_URL, status=400, json={"error": "invalid_client"})
    with pytest.raises(AuthError) as info:
        make_source().token(Deadline(60))
    assert len(responses.calls) == 1  # wrong credentials are not retried
    assert "invalid_client" in str(info.value)
    assert "client secret" in str(info.value)
    assert SECRET not in str(info.value)


@responses.activate
def test_a_token_endpoint_in_trouble_is_an_http_failure_not_an_auth_failure():
    calls: list = []
    responses.post(TOKEN_URL, status=500, body="internal error")
    with pytest.raises(ApiHttpError, match="HTTP 500") as info:
        make_source(calls=calls).token(Deadline(60))
    assert not isinstance(info.value, AuthError)
    assert calls == [("token", "500")]


@responses.activate
def test_other_client_errors_of_the_token_endpoint_are_auth_failures():
    responses.post(TOKEN_URL, status=400, json={"error": "unauthorized_client"})
    with pytest.raises(AuthError, match=r"HTTP 400 \(unauthorized_client\)"):
        make_source().token(Deadline(60))


@responses.activate
def test_connection_error_with_query_method_does_not_leak_the_url():
    calls: list = []
    responses.post(
        TOKEN_URL, body=requests.ConnectionError(f"failed {TOKEN_URL}?client_secret={SECRET}")
    )
    with pytest.raises(ApiConnectionError) as info:
        make_source("query", calls=calls).token(Deadline(60))
    assert SECRET not in str(info.value)
    assert info.value.__cause__ is None and info.value.__context__ is None
    assert calls == [("token", "error")]


@responses.activate
@pytest.mark.parametrize(
    "reply",
    [{"expires_in": 10}, {"access_token": "", "expires_in": 10}, ["not", "an", "object"]],
)
def test_unusable_token_answers_are_parse_errors(reply):
    responses.post(TOKEN_URL, json=reply)
    with pytest.raises(ParseError):
        make_source().token(Deadline(60))


@responses.activate
def test_non_json_token_answer_is_a_parse_error():
    responses.post(TOKEN_URL, body="<html>proxy error</html>", content_type="text/html")
    with pytest.raises(ParseError):
        make_source().token(Deadline(60))


@responses.activate
def test_missing_expires_in_assumes_an_hour():
    responses.post(TOKEN_URL, json={"access_token": "tok", "token_type": "bearer"})
    clock = Clock()
    source = make_source(clock=clock)
    source.token(Deadline(60))
    assert source.expires_at == clock.now + 3600


POISONED = {
    "outside Latin-1": ("zq9\u20acen", "it holds a character outside ASCII"),
    "Latin-1 but not ASCII": ("zq9ö", "it holds a character outside ASCII"),
    "CR LF": ("zq9\r\nX-Injected: 1", "it holds a line break"),
    "LF": ("zq9\nen", "it holds a line break"),
    "a space": ("zq9 en", "it holds a space"),
    "NUL": ("zq9\x00en", "it holds a control character"),
    "a lone surrogate": ("zq9\ud800", "it holds a character outside ASCII"),
    "9,000 characters": ("zq9" * 3000, "9000 characters, more than 8192"),
}


@responses.activate
@pytest.mark.parametrize("value, problem", POISONED.values(), ids=POISONED.keys())
def test_a_token_that_cannot_go_into_a_header_is_refused_and_not_kept(value, problem):
    responses.post(TOKEN_URL, json=token_reply(value))
    responses.post(TOKEN_URL, json=token_reply("tok-2"))
    source = make_source()
    with pytest.raises(AuthError) as info:
        source.token(Deadline(60))
    message = str(info.value)
    assert message == (
        f"token endpoint auth.example.test sent an access token that cannot go into an HTTP "
        f"header ({problem}); refused, not kept: the token endpoint, or a proxy in between, is "
        "broken"
    )
    assert "zq9" not in message  # never quotes the token
    assert not info.value.rejected_credentials  # the secret is not read again for it
    assert source.expires_at is None
    assert source.token(Deadline(60)) == "tok-2"  # the next refresh asks again


def test_a_token_of_visible_ascii_up_to_the_bound_is_taken():
    printable = "".join(chr(c) for c in range(0x21, 0x7F))
    for value in (printable, "t" * 8192, "eyJhbGciOi.J9.x-_~+/=="):
        with responses.RequestsMock() as mock:
            mock.post(TOKEN_URL, json=token_reply(value))
            assert make_source().token(Deadline(60)) == value


@responses.activate
@pytest.mark.parametrize(
    "token_type, shown",
    [("mac", '"mac"'), ("DPoP", '"DPoP"'), (5, "5"), (None, "null"), (["Bearer"], '["Bearer"]')],
)
def test_a_token_type_other_than_bearer_is_refused(token_type, shown):
    responses.post(TOKEN_URL, json={"access_token": "tok", "token_type": token_type})
    with pytest.raises(AuthError) as info:
        make_source().token(Deadline(60))
    assert str(info.value) == (
        f"token endpoint auth.example.test: token_type {shown} is not Bearer, the only kind of "
        "token this exporter can send"
    )


@responses.activate
def test_a_token_answer_nested_too_deeply_is_a_parse_error():
    responses.post(TOKEN_URL, body="[" * 50_000, content_type="application/json")
    with pytest.raises(ParseError, match="answer is not a JSON object"):
        make_source().token(Deadline(60))


@responses.activate
@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (400, {"error": "invalid_client"}, AuthError),
        (401, {}, AuthError),
        (404, {"error": "invalid_request"}, AuthError),
        (500, {}, ApiHttpError),
    ],
)
def test_a_refusal_of_the_token_endpoint_carries_its_http_status(status, body, error):
    responses.post(TOKEN_URL, status=status, json=body)
    with pytest.raises(error) as caught:
        make_source().token(Deadline(60))
    assert type(caught.value) is error
    assert caught.value.status == status
