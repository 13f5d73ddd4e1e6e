"""Hostile token endpoints and secret files (issue 11, findings 5, 7, 8, 10, 13): redaction of
every form of the secret and of tokens, odd expires_in values, redirects to another origin,
secret files with a BOM or CRLF, and a secret file rotated in place."""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, quote, quote_plus, urlsplit

import pytest
import requests
import responses

from exporter.auth import ASSUMED_LIFETIME, MAX_LIFETIME, MIN_LIFETIME, TokenSource
from exporter.check import as_json, check_mandant
from exporter.config import load_settings
from exporter.errors import AuthError, ConfigError, RedirectError
from exporter.http import MAX_REDIRECTS, Deadline, RequestCounter, RetryPolicy, origin
from exporter.model import Secret
from exporter.redact import CUT, MASK, MAX_LENGTH, redact, secret_forms
from exporter.session import BoundedSession
from exporter.simulator import HUGE_ERROR_LENGTH, Fault, Inventory, Simulator

TOKEN_URL = "https://auth.example.test/token"
OTHER = "https://evil.example.test"
CLIENT = "my-client"
SECRET = "Hostile Secret/+&=%~93b1e"
TOKEN = "tok-Zx81LqPvW0aQ7yRr5bN3"


def every_form(secret: str = SECRET, client_id: str = CLIENT) -> list[str]:
    """The forms a server may echo, built here independently of the redaction module."""
    basic = f"{client_id}:{secret}".encode()
    form = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    forms = [secret, quote(secret, safe=""), quote(secret), quote_plus(secret)]
    forms.append(re.sub("%[0-9A-F]{2}", lambda m: m.group().lower(), quote(secret, safe="")))
    forms.append(json.dumps(secret)[1:-1])
    for raw in (basic, form):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(raw).decode()
            forms += [text, text.rstrip("=")]
    return forms


# --- redact -----------------------------------------------------------------------------------


@pytest.mark.parametrize("form", every_form(), ids=range(len(every_form())))
def test_every_form_of_the_secret_is_masked(form: str) -> None:
    text = redact(f"invalid_client {form} (see docs)", [SECRET], client_id=CLIENT)
    assert form not in text
    assert MASK in text
    assert text.startswith("invalid_client ") and text.endswith(" (see docs)")


def test_base64_of_the_secret_at_any_alignment_is_masked() -> None:
    for prefix in (b"", b"x", b"xy", b"xyz", b"Basic realm:"):
        encoded = base64.b64encode(prefix + SECRET.encode()).decode()
        inner = encoded[4:-4]  # what surely depends on the secret alone, whatever the alignment
        assert inner not in redact(f"header {encoded} end", [SECRET])


def test_tokens_are_masked_like_secrets() -> None:
    text = redact(f"token {TOKEN} is revoked", [SECRET, TOKEN])
    assert TOKEN not in text and text == f"token {MASK} is revoked"


def test_a_secret_truncated_or_split_by_the_server_is_masked_by_halves() -> None:
    long = "a8Fk2-Lq0pZ7xW4mN1vB6cR3tY9uE5sD"
    for text in (f"echo {long[:-5]}", f"echo {long[:16]}\n{long[16:]}", f"{long[3:]} end"):
        shown = redact(text, [long])
        assert long[:16] not in shown and long[16:] not in shown, shown
        assert long[5:21] not in shown


def test_control_characters_cannot_forge_log_lines() -> None:
    text = redact("bad\nlevel=error msg=forged\r\x1b[31m\u202ered\u200b", [])
    assert "\n" not in text and "\r" not in text and "\x1b" not in text
    assert "\u202e" not in text and "\u200b" not in text
    assert "level=error msg=forged" in text  # kept, but on the same line


def test_long_text_is_cut_after_redaction() -> None:
    huge = f"{SECRET} " + "A" * 1_000_000 + f" {SECRET}"
    text = redact(huge, [SECRET])
    assert len(text) == MAX_LENGTH
    assert text.endswith(CUT) and text.startswith(MASK)
    assert SECRET[:4] not in text.replace(MASK, "")


def test_a_short_secret_is_masked_only_where_it_stands_alone() -> None:
    # A one-character secret must not turn every text into ***, but it is still masked alone.
    assert redact("invalid_client: check the client secret", ["c"]) == (
        "invalid_client: check the client secret"
    )
    assert redact("secret=c refused", ["c"]) == f"secret={MASK} refused"
    assert redact("bad pw 'x1y'", ["x1y"]) == f"bad pw '{MASK}'"


def test_secret_forms_include_basic_of_the_form_encoded_pair() -> None:
    forms = secret_forms(SECRET, CLIENT)
    assert set(every_form()) <= forms


# --- the token endpoint -----------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def source(
    method: str = "basic",
    secret: Secret | None = None,
    clock: Clock | None = None,
    on_response: RequestCounter | None = None,
) -> TokenSource:
    clock = clock or Clock()  # the wall clock and the monotonic clock, moving together
    return TokenSource(
        token_url=TOKEN_URL,
        client_id=CLIENT,
        client_secret=secret or Secret(SECRET),
        auth_method=method,
        session=BoundedSession(),
        clock=clock,
        monotonic=clock,
        retry=RetryPolicy(attempts=1),
        **({"on_response": on_response} if on_response else {}),
    )


def reply(value: str = TOKEN, expires_in: object = 3600) -> dict:
    return {"access_token": value, "expires_in": expires_in, "token_type": "Bearer"}


@responses.activate
@pytest.mark.parametrize("status", [400, 401])
def test_an_echoed_secret_never_reaches_the_auth_error(status: int) -> None:
    description = "client " + " ".join(every_form()) + " is not allowed: no query parameters"
    responses.post(
        TOKEN_URL,
        status=status,
        json={"error": f"invalid_client {SECRET}", "error_description": description},
    )
    with pytest.raises(AuthError) as caught:
        source().token(Deadline(60))
    message = str(caught.value)
    assert not any(form in message for form in every_form()), message
    assert "rejected the client credentials" in message
    assert "check the client id and client secret" in message
    assert "is not allowed: no query parameters" in message  # the server's reason is kept


@responses.activate
def test_error_description_is_kept_redacted() -> None:
    responses.post(
        TOKEN_URL,
        status=400,
        json={
            "error": "invalid_request",
            "error_description": "query parameters are not allowed",
        },
    )
    with pytest.raises(AuthError) as caught:
        source().token(Deadline(60))
    assert str(caught.value) == (
        "token endpoint auth.example.test: HTTP 400 (invalid_request): "
        "query parameters are not allowed"
    )


@responses.activate
def test_a_long_error_text_gives_a_short_message() -> None:
    description = f"{SECRET} " + "A" * HUGE_ERROR_LENGTH
    responses.post(TOKEN_URL, status=400, json={"error": "x", "error_description": description})
    with pytest.raises(AuthError) as caught:
        source().token(Deadline(60))
    assert len(str(caught.value)) < MAX_LENGTH + 100
    assert SECRET not in str(caught.value)


@responses.activate
def test_redact_masks_current_and_recent_tokens() -> None:
    clock = Clock()
    tokens = source(clock=clock)
    for index in range(3):
        responses.post(TOKEN_URL, json=reply(f"{TOKEN}-{index}", 60))
    seen = []
    for _ in range(3):
        seen.append(tokens.token(Deadline(60)))
        clock.now += 120
    text = tokens.redact(" ".join(seen) + " " + SECRET)
    assert not any(token in text for token in seen) and SECRET not in text


ODD_LIFETIMES = {
    "nan": ("NaN", ASSUMED_LIFETIME),
    "infinity": ("Infinity", ASSUMED_LIFETIME),
    "minus infinity": ("-Infinity", ASSUMED_LIFETIME),
    "1e400": ("1e400", ASSUMED_LIFETIME),
    "negative": ("-3600", ASSUMED_LIFETIME),
    "zero": ("0", ASSUMED_LIFETIME),
    "huge int": ("1" + "0" * 400, ASSUMED_LIFETIME),
    "absurdly large": ("1e300", MAX_LIFETIME),
    "tiny": ("0.001", MIN_LIFETIME),
    "numeric string": ('" 1800"', 1800.0),
    "decimal string": ('"1800.5"', 1800.5),
    "full-width digits": ('"\uff13\uff16\uff10\uff10"', ASSUMED_LIFETIME),  # float() reads them
    "superscript digit": ('"\u00b2"', ASSUMED_LIFETIME),
    "underscores": ('"1_800"', ASSUMED_LIFETIME),
    "exponent string": ('"1e3"', ASSUMED_LIFETIME),
    "string of 5,000 digits": ('"' + "9" * 5000 + '"', ASSUMED_LIFETIME),
    "text": ('"soon"', ASSUMED_LIFETIME),
    "boolean": ("true", ASSUMED_LIFETIME),
}


@responses.activate
@pytest.mark.parametrize("case", ODD_LIFETIMES, ids=str)
def test_odd_expires_in_gives_a_finite_bounded_lifetime(
    case: str, caplog: pytest.LogCaptureFixture
) -> None:
    raw, lifetime = ODD_LIFETIMES[case]
    body = json.dumps(reply(expires_in="RAW")).replace('"RAW"', raw)
    responses.post(TOKEN_URL, body=body, content_type="application/json")
    clock = Clock()
    tokens = source(clock=clock)
    with caplog.at_level(logging.WARNING, "exporter.auth"):
        assert tokens.token(Deadline(60)) == TOKEN
        for _ in range(50):  # one token for many pages
            assert tokens.token(Deadline(60)) == TOKEN
    assert len(responses.calls) == 1
    assert tokens.expires_at == clock.now + lifetime
    warnings = [r for r in caplog.records if "expires_in" in r.getMessage()]
    assert len(warnings) == (1 if lifetime == ASSUMED_LIFETIME else 0)


def test_check_json_is_valid_with_an_infinite_expires_in() -> None:
    with Simulator(Inventory(size=3, seed=4)) as sim:
        sim.add_fault(Fault("expires_in_infinity", endpoint="token"))
        settings = load_settings(
            [],
            {
                "BEENERGISED_API_URL": sim.api_url,
                "BEENERGISED_TOKEN_URL": sim.token_url,
                "BEENERGISED_CLIENT_ID": "demo-client",
                "BEENERGISED_CLIENT_SECRET": "demo-secret",
            },
        )
        result = check_mandant(settings.mandants[0], settings)
    assert result.ok, result.failure
    document = json.loads(json.dumps(as_json(result), allow_nan=False))
    assert document["token_expires_in"] == pytest.approx(ASSUMED_LIFETIME, abs=5)


# --- redirects --------------------------------------------------------------------------------


def test_origin_names_scheme_host_and_port_only() -> None:
    assert origin("https://Auth.Example.test/token?client_secret=x") == (
        "https://auth.example.test:443"
    )
    assert origin("http://127.0.0.1:8080/a") == "http://127.0.0.1:8080"
    assert origin("http://[::1]:81/") == "http://[::1]:81"


@responses.activate
@pytest.mark.parametrize("method", ["basic", "post", "query"])
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_the_token_request_never_follows_a_redirect_to_another_origin(
    method: str, status: int
) -> None:
    responses.post(
        TOKEN_URL, status=status, headers={"Location": OTHER + "/token?client_secret=" + SECRET}
    )
    other = responses.post(OTHER + "/token", json=reply())
    other_get = responses.get(OTHER + "/token", json=reply())
    counter = RequestCounter()
    with pytest.raises(RedirectError) as caught:
        source(method, on_response=counter).token(Deadline(60))
    assert other.call_count == 0 and other_get.call_count == 0
    assert counter.counts() == {("token", str(status)): 1}  # the refused answer is counted
    message = str(caught.value)
    assert caught.value.reason == "http"
    assert "https://evil.example.test:443" in message and "another origin" in message
    assert "/token" not in message.split("another origin")[1]  # the target's path is not shown
    assert SECRET not in message and quote_plus(SECRET) not in message


@responses.activate
def test_a_redirect_within_the_origin_is_followed_a_few_times() -> None:
    responses.post(TOKEN_URL, status=307, headers={"Location": "/token2"})
    responses.post("https://auth.example.test/token2", json=reply())
    assert source("post").token(Deadline(60)) == TOKEN
    responses.reset()
    responses.post(TOKEN_URL, status=307, headers={"Location": TOKEN_URL})
    with pytest.raises(RedirectError, match=f"more than {MAX_REDIRECTS} redirects"):
        source("post").token(Deadline(60))
    assert len(responses.calls) == MAX_REDIRECTS + 1


# --- secret files -----------------------------------------------------------------------------

ENV = {"BEENERGISED_API_URL": "https://m.beenergised.cloud", "BEENERGISED_CLIENT_ID": CLIENT}


def load_secret(tmp_path: Path, content: bytes) -> Secret:
    path = tmp_path / "secret"
    path.write_bytes(content)
    settings = load_settings(["--api.client-secret-file", str(path)], ENV)
    return settings.mandants[0].client_secret


@pytest.mark.parametrize(
    "content",
    [
        b"\xef\xbb\xbf" + SECRET.encode() + b"\r\n",
        b"\xef\xbb\xbf" + SECRET.encode(),
        SECRET.encode() + b"\r\n\r\n",
    ],
)
def test_a_secret_file_with_bom_and_crlf_is_read(tmp_path: Path, content: bytes) -> None:
    secret = load_secret(tmp_path, content)
    assert secret.reveal() == SECRET
    assert secret.path == tmp_path / "secret"


def test_bom_and_crlf_in_the_secret_variable_are_stripped() -> None:
    env = {**ENV, "BEENERGISED_CLIENT_SECRET": "\ufeff" + SECRET + "\r\n"}
    assert load_settings([], env).mandants[0].client_secret.reveal() == SECRET


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"abc\x00def", "control or invisible character"),
        (b"abc\ndef\n", "control or invisible character"),
        (b"abc\xe2\x80\x8bdef", "control or invisible character"),
        ("abc\u20acdef".encode(), "beyond Latin-1"),
    ],
)
def test_a_secret_that_cannot_be_sent_is_a_config_error(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_secret(tmp_path, content)
    message = str(caught.value)
    assert message.startswith("--api.client-secret-file: ") and problem in message
    assert "abc" not in message and "def" not in message


def test_an_inline_secret_with_a_control_character_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"^BEENERGISED_CLIENT_SECRET: .*control"):
        load_settings([], {**ENV, "BEENERGISED_CLIENT_SECRET": "ab\x01cd"})


def test_secret_reread_follows_the_file(tmp_path: Path) -> None:
    secret = load_secret(tmp_path, b"first\n")
    assert secret.reread() == Secret("first")
    (tmp_path / "secret").write_bytes(b"\xef\xbb\xbfsecond\r\n")
    assert secret.reread() == Secret("second")
    (tmp_path / "secret").unlink()
    assert secret.reread() is None
    assert Secret("inline").reread() is None
    assert repr(secret) == str(secret) == f"{secret}" == "***"


@pytest.fixture
def secret_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "secret"
    path.write_text("old-secret\n")
    yield path


def basic_secret(call: responses.Call) -> str:
    decoded = base64.b64decode(call.request.headers["Authorization"].split()[1]).decode()
    return decoded.partition(":")[2]


@responses.activate
def test_a_rotated_secret_file_is_read_again_when_the_credentials_are_rejected(
    secret_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    responses.post(TOKEN_URL, status=401, json={"error": "invalid_client"})
    responses.post(TOKEN_URL, json=reply())
    tokens = source(secret=Secret("old-secret", secret_file))
    secret_file.write_text("new-secret\n")
    with caplog.at_level(logging.INFO, "exporter.auth"):
        assert tokens.token(Deadline(60)) == TOKEN
    assert [basic_secret(call) for call in responses.calls] == ["old-secret", "new-secret"]
    assert "changed" in caplog.text and "new-secret" not in caplog.text
    assert MASK in tokens.redact("old-secret and new-secret")
    assert "secret" not in tokens.redact("old-secret new-secret").replace(MASK, "")


@responses.activate
def test_an_unchanged_secret_file_fails_auth_without_a_second_request(secret_file: Path) -> None:
    responses.post(TOKEN_URL, status=401, json={"error": "invalid_client"})
    tokens = source(secret=Secret("old-secret", secret_file))
    with pytest.raises(AuthError, match="rejected the client credentials"):
        tokens.token(Deadline(60))
    assert len(responses.calls) == 1


@responses.activate
def test_a_rotated_secret_that_is_rejected_too_fails_auth_after_one_retry(
    secret_file: Path,
) -> None:
    responses.post(TOKEN_URL, status=401, json={"error": "invalid_client"})
    tokens = source("post", secret=Secret("old-secret", secret_file))
    secret_file.write_text("newer-secret\n")
    with pytest.raises(AuthError):
        tokens.token(Deadline(60))
    sent = [parse_qs(call.request.body)["client_secret"][0] for call in responses.calls]
    assert sent == ["old-secret", "newer-secret"]


@responses.activate
def test_a_server_error_does_not_reread_the_secret(secret_file: Path) -> None:
    responses.post(TOKEN_URL, status=400, json={"error": "invalid_scope"})
    tokens = source(secret=Secret("old-secret", secret_file))
    secret_file.write_text("new-secret\n")
    with pytest.raises(AuthError):
        tokens.token(Deadline(60))
    assert len(responses.calls) == 1


# --- the simulator's faults -------------------------------------------------------------------


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(Inventory(size=5, seed=2), client_secret=SECRET) as simulator:
        yield simulator


def post_token(url: str, method: str = "post") -> requests.Response:
    data = {"grant_type": "client_credentials"}
    if method == "post":
        data |= {"client_id": "demo-client", "client_secret": SECRET}
    return requests.post(
        url, data=data, auth=("demo-client", SECRET) if method == "basic" else None, timeout=5
    )


def test_echo_secret_fault_echoes_every_form(sim: Simulator) -> None:
    sim.add_fault(Fault("echo_secret", endpoint="token", times=1))
    response = post_token(sim.token_url)
    assert response.status_code == 401
    body = response.json()
    assert body["error"] == f"invalid_client {SECRET}"
    basic = base64.b64encode(f"demo-client:{SECRET}".encode()).decode()
    for form in [quote(SECRET, safe=""), quote_plus(SECRET), json.dumps(SECRET), basic]:
        assert form in body["error_description"]
    assert post_token(sim.token_url).status_code == 200  # the fault answered once


def test_huge_error_fault_sends_60_kb(sim: Simulator) -> None:
    sim.add_fault(Fault("huge_error", endpoint="token"))
    response = post_token(sim.token_url)
    assert response.status_code == 400
    assert len(response.json()["error_description"]) > HUGE_ERROR_LENGTH
    assert SECRET in response.json()["error_description"]


@pytest.mark.parametrize(
    ("kind", "raw"),
    [
        ("expires_in_nan", "NaN"),
        ("expires_in_infinity", "Infinity"),
        ("expires_in_1e400", "1e400"),
        ("expires_in_negative", "-3600"),
        ("expires_in_string", '"3600"'),
    ],
)
def test_expires_in_faults_send_raw_json_and_a_valid_token(
    sim: Simulator, kind: str, raw: str
) -> None:
    sim.add_fault(Fault(kind, endpoint="token", times=1))
    response = post_token(sim.token_url)
    assert response.status_code == 200
    assert f'"expires_in": {raw}' in response.text
    body = json.loads(response.text)
    token = body["access_token"]
    assert token in sim.tokens["valid"]
    if kind != "expires_in_string":
        assert not isinstance(body["expires_in"], str)


@pytest.mark.parametrize("method", ["basic", "post"])
def test_redirect_fault_sends_the_token_request_to_another_origin(
    sim: Simulator, method: str
) -> None:
    sim.add_fault(Fault("redirect", endpoint="token", status=308))
    raw = post_token(sim.token_url + "?a=1", method)  # requests follows: the naive client
    other = requests.get(sim.api_url + "/_sim/credentials", timeout=5).json()["other_origin"]
    assert other and urlsplit(other).port != urlsplit(sim.api_url).port
    assert raw.history[0].status_code == 308
    assert raw.history[0].headers["Location"] == other + "/oauth2/token?a=1"
    received = requests.get(other + "/_sim/credentials", timeout=5).json()["secret_received"]
    # requests drops the Authorization header on a new host, but re-sends a form body
    assert received == (1 if method == "post" else 0)


def test_redirect_fault_on_stations_leads_to_another_fleet(sim: Simulator) -> None:
    sim.add_fault(Fault("redirect", endpoint="stations"))
    response = requests.get(sim.api_url + "/api/cpoapi/v1/charging_stations/", timeout=5)
    assert response.history[0].status_code == 307
    assert response.status_code == 200  # served without a token
    assert len(response.json()["data"]) == 3
    ids = {row["id"] for row in response.json()["data"]}
    assert not ids & {station["id"] for station in sim.inventory.stations()}


def test_client_secret_can_be_rotated(sim: Simulator) -> None:
    assert post_token(sim.token_url).status_code == 200
    rotated = requests.post(
        sim.api_url + "/_sim/client_secret", json={"client_secret": "rotated"}, timeout=5
    )
    assert rotated.status_code == 200
    assert post_token(sim.token_url).status_code == 401
    bad = requests.post(sim.api_url + "/_sim/client_secret", json={"client_secret": 3}, timeout=5)
    assert bad.status_code == 400


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ({"kind": "echo_secret"}, "token endpoint only"),
        ({"kind": "expires_in_nan"}, "token endpoint only"),
        ({"kind": "redirect", "status": 302.5}, "must be one of"),
        ({"kind": "redirect", "status": 301.0}, "must be one of"),
        ({"kind": "redirect", "status": 200}, "must be one of"),
    ],
)
def test_invalid_new_faults_are_refused(sim: Simulator, fault: dict, message: str) -> None:
    response = requests.post(sim.api_url + "/_sim/faults", json=fault, timeout=5)
    assert response.status_code == 400 and message in response.json()["error"]


def test_the_other_origin_stops_with_the_simulator() -> None:
    simulator = Simulator(Inventory(size=1)).start()
    other = simulator.other_origin()
    simulator.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(other + "/_sim/state", timeout=2)
