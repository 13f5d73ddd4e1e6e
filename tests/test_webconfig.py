"""Tests of exporter/webconfig.py: loading the web config file, its error messages, BasicAuth."""

from __future__ import annotations

import base64
import ssl
from collections.abc import Callable
from pathlib import Path

import bcrypt
import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from exporter.errors import ConfigError
from exporter.webauth import BasicAuth, WebConfig
from exporter.webconfig import load_web_config

PASSWORD = b"correct horse"
HASH = bcrypt.hashpw(PASSWORD, bcrypt.gensalt(rounds=4))


def basic(credentials: bytes | str) -> str:
    raw = credentials.encode() if isinstance(credentials, str) else credentials
    return "Basic " + base64.b64encode(raw).decode()


@pytest.fixture
def tls_files(tmp_path: Path) -> Path:
    """A directory with ca.crt, server.crt and server.key under tls/, next to which web.yml goes."""
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    tls = tmp_path / "tls"
    tls.mkdir()
    ca.cert_pem.write_to_path(tls / "ca.crt")
    server.cert_chain_pems[0].write_to_path(tls / "server.crt")
    server.private_key_pem.write_to_path(tls / "server.key")
    return tmp_path


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str], str]:
    def write(text: str) -> str:
        path = tmp_path / "web.yml"
        path.write_text(text)
        return str(path)

    return write


def error(path: str) -> str:
    """The message of the ConfigError, checked to be one line that starts with the file."""
    with pytest.raises(ConfigError) as caught:
        load_web_config(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert HASH.decode() not in message and PASSWORD.decode() not in message
    return message


TLS = """\
tls_server_config:
  cert_file: tls/server.crt
  key_file: tls/server.key
"""


def test_every_key_with_paths_relative_to_the_file(tls_files, write, tmp_path, monkeypatch):
    path = write(
        TLS
        + """\
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: tls/ca.crt
  min_version: TLS13
basic_auth_users:
  alice: {hash}
  "bob smith": '{hash}'
""".format(hash=HASH.decode())
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_web_config(path)
    assert config.ssl_context is not None
    assert config.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert config.ssl_context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert len(config.ssl_context.get_ca_certs()) == 1
    assert dict(config.users) == {"alice": HASH, "bob smith": HASH}


def test_defaults_tls12_and_no_client_certificates(tls_files, write):
    config = load_web_config(write(TLS))
    assert config.ssl_context is not None
    assert config.ssl_context.verify_mode == ssl.CERT_NONE
    assert config.ssl_context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert config.users == {}


def test_optional_client_certificates(tls_files, write):
    text = TLS + "  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: tls/ca.crt\n"
    context = load_web_config(write(text)).ssl_context
    assert context is not None and context.verify_mode == ssl.CERT_OPTIONAL


def test_absolute_paths(tls_files, write):
    tls = tls_files / "tls"
    config = load_web_config(
        write(
            f"tls_server_config:\n  cert_file: {tls / 'server.crt'}\n  key_file: {tls}/server.key\n"
        )
    )
    assert config.ssl_context is not None


@pytest.mark.parametrize("text", ["", "# nothing yet\n", "basic_auth_users:\n"])
def test_empty_file_means_plain_http_without_auth(write, text):
    config = load_web_config(write(text))
    assert config.ssl_context is None and config.users == {}


def test_basic_auth_without_tls(write):
    config = load_web_config(write(f"basic_auth_users:\n  alice: {HASH.decode()}\n"))
    assert config.ssl_context is None
    assert dict(config.users) == {"alice": HASH}
    with pytest.raises(TypeError):
        config.users["mallory"] = HASH  # type: ignore[index]


def test_repr_hides_hashes(tls_files, write):
    config = load_web_config(write(TLS + f"basic_auth_users:\n  alice: {HASH.decode()}\n"))
    text = repr(config)
    assert HASH.decode() not in text and "alice" not in text
    assert text == "WebConfig(tls='TLS12+ client certificates no', basic_auth_users=1)"
    assert str(config) == text
    assert repr(WebConfig(None, {})) == "WebConfig(tls='off', basic_auth_users=0)"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "- alice\n",
            "expected a mapping with tls_server_config and/or basic_auth_users, got list",
        ),
        ("tls_config:\n", "tls_config: unknown key; known keys: tls_server_config, basic_auth"),
        ("rate_limit:\n", "rate_limit: not supported by this exporter; remove it (supported:"),
        ("tls_server_config: [a]\n", "tls_server_config: expected a mapping with cert_file and"),
        (
            TLS + "  cipher_suites: [x]\n",
            "tls_server_config.cipher_suites: not supported by this exporter; remove it",
        ),
        (TLS + "  certfile: x\n", "tls_server_config.certfile: unknown key; known keys: cert_"),
        (
            "tls_server_config:\n  key_file: tls/server.key\n",
            "tls_server_config.cert_file: missing: the path of the server certificate (PEM)",
        ),
        (
            "tls_server_config:\n  cert_file: tls/server.crt\n",
            "tls_server_config.key_file: missing: the path of the server's private key (PEM)",
        ),
        (
            "tls_server_config:\n  cert_file: 42\n  key_file: tls/server.key\n",
            "tls_server_config.cert_file: expected the path of the server certificate (PEM), "
            "got 42",
        ),
        (
            "tls_server_config:\n  cert_file: tls/nope.crt\n  key_file: tls/server.key\n",
            "tls_server_config.cert_file: cannot read '{dir}/tls/nope.crt': No such file or "
            "directory; give the path of the server certificate (relative paths start at the "
            "web config file's directory)",
        ),
        (
            "tls_server_config:\n  cert_file: tls/server.crt\n  key_file: tls\n",
            "tls_server_config.key_file: cannot read '{dir}/tls': not a regular file",
        ),
        (
            "tls_server_config:\n  cert_file: tls/server.key\n  key_file: tls/server.key\n",
            "tls_server_config.cert_file: '{dir}/tls/server.key' holds no PEM certificate; give "
            "the path of the server certificate",
        ),
        (
            "tls_server_config:\n  cert_file: tls/server.crt\n  key_file: tls/server.crt\n",
            "tls_server_config.key_file: '{dir}/tls/server.crt' holds no PEM private key",
        ),
        (
            TLS + "  client_auth_type: RequireAnyClientCert\n  client_ca_file: tls/ca.crt\n",
            "tls_server_config.client_auth_type: RequireAnyClientCert (a certificate without "
            "verification) is not supported; use RequireAndVerifyClientCert with client_ca_file",
        ),
        (
            TLS + "  client_auth_type: requireandverifyclientcert\n",
            "tls_server_config.client_auth_type: must be one of NoClientCert, "
            "VerifyClientCertIfGiven, RequireAndVerifyClientCert, got "
            "'requireandverifyclientcert'",
        ),
        (
            TLS + "  client_auth_type: RequireAndVerifyClientCert\n",
            "tls_server_config.client_ca_file: missing: the CA certificate that signs client "
            "certificates, needed for client_auth_type RequireAndVerifyClientCert",
        ),
        (
            TLS + "  client_ca_file: tls/ca.crt\n",
            "tls_server_config.client_ca_file: set, but client_auth_type is NoClientCert; set "
            "client_auth_type: RequireAndVerifyClientCert",
        ),
        (
            TLS + "  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca.crt\n",
            "tls_server_config.client_ca_file: cannot read '{dir}/ca.crt': No such file",
        ),
        (
            TLS + "  min_version: TLS11\n",
            "tls_server_config.min_version: must be TLS12 (the default) or TLS13, got 'TLS11'",
        ),
        (
            "basic_auth_users: alice:{hash}\n",
            "basic_auth_users: expected a mapping of user names to bcrypt hashes, got str",
        ),
        (
            "basic_auth_users:\n  alice: {password}\n",
            "basic_auth_users.alice: not a bcrypt hash (the value is not shown); store the hash, "
            "not the password, e.g. from htpasswd -nBC 10 \"\" | tr -d ':\\n'",
        ),
        (
            "basic_auth_users:\n  alice: $1$salt$md5cryptisnotbcrypt\n",
            "basic_auth_users.alice: not a bcrypt hash (the value is not shown)",
        ),
        (
            "basic_auth_users:\n  alice: '{short}'\n",
            "basic_auth_users.alice: not a bcrypt hash (the value is not shown)",
        ),
        ("basic_auth_users:\n  alice:\n", "basic_auth_users.alice: missing: the bcrypt hash"),
        (
            "basic_auth_users:\n  ' ali ce': {password}\n",
            "basic_auth_users[' ali ce']: not a bcrypt hash",
        ),
        (
            "basic_auth_users:\n  123: {hash}\n",
            "basic_auth_users: user name 123 is not a non-empty string; put it in quotes",
        ),
        (
            "basic_auth_users:\n  'alice:{password}': {hash}\n",
            "basic_auth_users: a user name contains ':' (not shown: it may hold a password)",
        ),
        ("a: [\n", "not valid YAML: line 2, column 1: "),
    ],
)
def test_error_messages_name_the_file_and_key(tls_files, write, text, expected):
    values = {"hash": HASH.decode(), "password": PASSWORD.decode(), "short": HASH.decode()[:-1]}
    path = write(text.format(**values))
    message = error(path)
    assert message.startswith(f"{path}: " + expected.format(dir=tls_files)), message


def test_error_for_a_key_of_another_certificate(tls_files, write):
    other = trustme.CA().issue_cert("localhost")
    other.private_key_pem.write_to_path(tls_files / "tls" / "other.key")
    path = write("tls_server_config:\n  cert_file: tls/server.crt\n  key_file: tls/other.key\n")
    assert error(path) == (
        f"{path}: tls_server_config.key_file: the key in '{tls_files}/tls/other.key' does not "
        f"belong to the certificate in '{tls_files}/tls/server.crt'; give the key that was made "
        "with that certificate"
    )


def test_error_for_an_encrypted_key(tls_files, write):
    key = ssl_key_encrypted(tls_files / "tls" / "server.key")
    path = write(f"tls_server_config:\n  cert_file: tls/server.crt\n  key_file: {key}\n")
    assert error(path).startswith(
        f"{path}: tls_server_config.key_file: '{key}' is encrypted and the exporter cannot ask "
        "for its passphrase; decrypt it, e.g. openssl pkey -in"
    )


def ssl_key_encrypted(plain: Path) -> Path:
    key = serialization.load_pem_private_key(plain.read_bytes(), password=None)
    encrypted = plain.with_name("encrypted.key")
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    return encrypted


def test_error_for_an_unreadable_file(tmp_path):
    path = str(tmp_path / "missing.yml")
    assert error(path) == f"{path}: cannot read the web config file: No such file or directory"


def test_error_for_yaml_does_not_quote_the_line(write):
    path = write(f"basic_auth_users:\n  alice: {HASH.decode()}\n bob: [\n")
    assert "not valid YAML: line" in error(path)


# BasicAuth


@pytest.fixture
def checkpw_calls(monkeypatch) -> list[bytes]:
    """The hashes bcrypt.checkpw was called with, in order."""
    calls: list[bytes] = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    return calls


def test_right_and_wrong_passwords():
    auth = BasicAuth({"alice": HASH, "bob": bcrypt.hashpw(b"other", bcrypt.gensalt(rounds=4))})
    assert auth.check(basic(b"alice:" + PASSWORD))
    assert auth.check(basic("bob:other"))
    assert not auth.check(basic("alice:other"))
    assert not auth.check(basic("bob:" + PASSWORD.decode()))
    assert not auth.check(basic("alice:"))
    assert not auth.check(basic(b"Alice:" + PASSWORD))


def test_password_with_colons_and_unicode():
    password = "pä:ss:wörd"
    auth = BasicAuth({"jürgen": bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4))})
    assert auth.check(basic(f"jürgen:{password}"))
    assert auth.check("basic  " + base64.b64encode(f"jürgen:{password}".encode()).decode() + " ")


def test_long_passwords_count_up_to_72_bytes_as_with_htpasswd():
    password = b"x" * 72
    auth = BasicAuth({"alice": bcrypt.hashpw(password, bcrypt.gensalt(rounds=4))})
    assert auth.check(basic(b"alice:" + password + b"ignored"))
    assert not auth.check(basic(b"alice:" + password[:-1]))


def test_unknown_user_still_costs_one_bcrypt_run(checkpw_calls):
    auth = BasicAuth({"alice": HASH})
    assert not auth.check(basic(b"mallory:" + PASSWORD))
    assert not auth.check(basic(b"mallory:" + PASSWORD))
    assert len(checkpw_calls) == 2
    assert HASH not in checkpw_calls
    dummy = checkpw_calls[0]
    assert dummy.startswith(b"$2b$04$")  # as slow as the real hashes


def test_dummy_hash_is_as_slow_as_the_slowest_user(checkpw_calls):
    auth = BasicAuth({"alice": HASH, "bob": bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=5))})
    assert not auth.check(basic("mallory:pw"))
    assert checkpw_calls[0].startswith(b"$2b$05$")


def test_success_is_cached_failure_is_not(checkpw_calls):
    auth = BasicAuth({"alice": HASH})
    header = basic(b"alice:" + PASSWORD)
    assert auth.check(header)
    assert auth.check(header)
    assert auth.check(header)
    assert checkpw_calls == [HASH]
    assert not auth.check(basic("alice:wrong"))
    assert not auth.check(basic("alice:wrong"))
    assert len(checkpw_calls) == 3


def test_cache_is_bounded_and_keeps_recent_credentials(checkpw_calls):
    users = {f"user{i}": HASH for i in range(BasicAuth.CACHE_SIZE + 1)}
    auth = BasicAuth(users)
    headers = [basic(f"{user}:".encode() + PASSWORD) for user in users]
    assert all(auth.check(header) for header in headers)
    assert len(checkpw_calls) == len(users)
    # The first was evicted by the last: checking it again costs a bcrypt run; the last is cached.
    assert auth.check(headers[0])
    assert len(checkpw_calls) == len(users) + 1
    assert auth.check(headers[-1])
    assert len(checkpw_calls) == len(users) + 1


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Basic",
        "Basic ",
        "Bearer " + base64.b64encode(b"alice:" + PASSWORD).decode(),
        "Digest username=alice",
        "Basic !!!not-base64",
        "Basic " + base64.b64encode(b"alice:" + PASSWORD).decode().rstrip("=") + "x",
        basic(b"alice" + PASSWORD),  # no colon
        basic(b"alice:" + PASSWORD + b"\xff\xfe"),  # not UTF-8
        "Basic YWxpY2U6cGFzc3dvcmQ=é",  # not ASCII (WSGI headers are latin-1 strings)
        "Basic " + base64.b64encode(b"alice:" + PASSWORD).decode() + " extra",
    ],
)
def test_malformed_headers_are_refused_without_exceptions(header, checkpw_calls):
    assert BasicAuth({"alice": HASH}).check(header) is False
    assert checkpw_calls == []


def test_basic_auth_refuses_no_users_and_non_bcrypt_hashes():
    with pytest.raises(ValueError, match="at least one user"):
        BasicAuth({})
    with pytest.raises(ValueError, match="'alice' is not a bcrypt hash") as caught:
        BasicAuth({"alice": b"plain password"})
    assert "plain password" not in str(caught.value)


def test_error_for_files_that_only_look_like_pem(tls_files, write):
    fake = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
    (tls_files / "tls" / "fake.crt").write_text(fake)
    path = write("tls_server_config:\n  cert_file: tls/fake.crt\n  key_file: tls/server.key\n")
    assert error(path).startswith(
        f"{path}: tls_server_config.cert_file: cannot use '{tls_files}/tls/fake.crt' with the key "
        f"'{tls_files}/tls/server.key': "
    )
    path = write(
        TLS + "  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: tls/fake.crt\n"
    )
    assert error(path).startswith(
        f"{path}: tls_server_config.client_ca_file: cannot load '{tls_files}/tls/fake.crt': "
    )


def test_a_user_given_twice_is_an_error_naming_the_user_not_the_hash(write):
    path = write(f"basic_auth_users:\n  alice: {HASH.decode()}\n  alice: {HASH.decode()}\n")
    assert error(path) == (
        f"{path}: not valid YAML: line 3, column 3: duplicate key 'alice' (first on line 2); "
        "give each key once"
    )
