"""The ``--web.config.file``: TLS and basic auth in the format of Prometheus' exporter-toolkit.

A subset of that format, so a file written for node_exporter works here when it uses only
these keys (anything else is refused, never ignored)::

    tls_server_config:
      cert_file: server.crt          # relative paths start at the web config file's directory
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # or NoClientCert, VerifyClientCertIfGiven
      client_ca_file: ca.crt
      min_version: TLS13             # or TLS12, the default
    basic_auth_users:
      alice: $2y$10$...              # bcrypt hashes, e.g. from htpasswd -nBC 10 ""

The file is read at start-up and on SIGHUP; every problem raises
:class:`~exporter.errors.ConfigError` with one line naming the file and the key. Hashes never
appear in messages or reprs.

bcrypt costs are bounded: each step doubles the time of a check, so a cost of 31 would take
2**21 times as long as the cost of 10 that htpasswd -B uses.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from types import MappingProxyType

import yaml

from exporter.errors import ConfigError
from exporter.model import PEM_FILE_MAX_SIZE, read_regular_file
from exporter.webauth import BCRYPT_RE, WebConfig
from exporter.yamlfile import load_yaml_file, yaml_problem

_TOP_KEYS = ("tls_server_config", "basic_auth_users")
_TLS_KEYS = ("cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version")
# exporter-toolkit keys we do not implement: named as such, so the message is not "unknown".
_TOOLKIT_ONLY_KEYS = {
    "": ("http_server_config", "rate_limit"),
    "tls_server_config": (
        "cert",
        "key",
        "client_ca",
        "client_allowed_sans",
        "max_version",
        "cipher_suites",
        "prefer_server_cipher_suites",
        "curve_preferences",
    ),
}
_CLIENT_AUTH_TYPES = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
# Python's ssl module cannot ask for a client certificate without verifying it.
_UNVERIFIED_CLIENT_AUTH_TYPES = ("RequestClientCert", "RequireAnyClientCert")
_TLS_VERSIONS = {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
_HTPASSWD_HINT = "htpasswd -nBC 10 \"\" | tr -d ':\\n'"
MAX_BCRYPT_COST = 14
"""The highest bcrypt cost accepted (16 times the work of cost 10); a higher one is refused."""
WARN_BCRYPT_COST = 12
"""bcrypt costs above this are accepted with a warning (8 times the work of cost 10 and more)."""


def load_web_config(path: str) -> WebConfig:
    """Read and check the web config file at ``path``; raises ConfigError for every problem."""
    try:
        document = load_yaml_file(path)
    except OSError as e:
        raise ConfigError(
            f"{path}: cannot read the web config file: {e.strerror or type(e).__name__}"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the web config file is not UTF-8 text") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {yaml_problem(e)}") from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError(
            f"{path}: expected a mapping with tls_server_config and/or basic_auth_users, "
            f"got {type(document).__name__}"
        )
    _reject_unknown_keys(document, "", _TOP_KEYS, path)
    base = Path(path).parent
    tls = document.get("tls_server_config")
    section = document.get("basic_auth_users")
    warnings: list[str] = []
    users = {} if section is None else _users(section, path, warnings)
    if tls is None and not users:
        warnings.append(
            f"{path}: the web config file sets neither tls_server_config nor basic_auth_users, "
            "so the endpoints are served without TLS and without basic auth"
        )
    return WebConfig(
        ssl_context=None if tls is None else _ssl_context(tls, path, base),
        users=MappingProxyType(users),
        warnings=tuple(warnings),
    )


def _reject_unknown_keys(
    mapping: dict[object, object], section: str, known: tuple[str, ...], path: str
) -> None:
    prefix = f"{section}." if section else ""
    for key in mapping:
        if key in known:
            continue
        if key in _TOOLKIT_ONLY_KEYS.get(section, ()):
            raise ConfigError(
                f"{path}: {prefix}{key}: not supported by this exporter; remove it "
                f"(supported: {', '.join(known)})"
            )
        raise ConfigError(f"{path}: {prefix}{key}: unknown key; known keys: {', '.join(known)}")


def _ssl_context(section: object, path: str, base: Path) -> ssl.SSLContext:
    where = f"{path}: tls_server_config"
    if not isinstance(section, dict):
        raise ConfigError(
            f"{where}: expected a mapping with cert_file and key_file, got {type(section).__name__}"
        )
    _reject_unknown_keys(section, "tls_server_config", _TLS_KEYS, path)
    cert = _pem_file(section, "cert_file", "the server certificate", where, base)
    key = _pem_file(section, "key_file", "the server's private key", where, base)
    client_auth = _client_auth_type(section.get("client_auth_type", "NoClientCert"), where)
    min_version = _min_version(section.get("min_version", "TLS12"), where)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = min_version
    _load_cert_chain(context, cert, key, where)
    if client_auth == "NoClientCert":
        if "client_ca_file" in section:
            raise ConfigError(
                f"{where}.client_ca_file: set, but client_auth_type is NoClientCert; set "
                "client_auth_type: RequireAndVerifyClientCert to check client certificates, "
                "or remove client_ca_file"
            )
    else:
        if "client_ca_file" not in section:
            raise ConfigError(
                f"{where}.client_ca_file: missing: the CA certificate that signs client "
                f"certificates, needed for client_auth_type {client_auth}"
            )
        ca = _pem_file(section, "client_ca_file", "the client CA certificate", where, base)
        _load_client_ca(context, ca, where)
        context.verify_mode = _CLIENT_AUTH_TYPES[client_auth]
    return context


def _pem_file(section: dict[str, object], key: str, what: str, where: str, base: Path) -> Path:
    """The resolved path of a PEM file the section names, checked to be readable."""
    value = section.get(key)
    if value is None:
        raise ConfigError(f"{where}.{key}: missing: the path of {what} (PEM)")
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}.{key}: expected the path of {what} (PEM), got {value!r}")
    resolved = base / value.strip()
    try:
        text = read_regular_file(resolved, PEM_FILE_MAX_SIZE)
    except OSError as e:
        raise ConfigError(
            f"{where}.{key}: cannot read {str(resolved)!r}: {e.strerror or type(e).__name__}; "
            f"give the path of {what} (relative paths start at the web config file's directory)"
        ) from None
    except ValueError as e:
        raise ConfigError(f"{where}.{key}: {e}; give the path of {what}") from None
    marker = b"PRIVATE KEY-----" if key == "key_file" else b"-----BEGIN CERTIFICATE-----"
    if marker not in text:
        raise ConfigError(
            f"{where}.{key}: {str(resolved)!r} holds no PEM "
            f"{'private key' if key == 'key_file' else 'certificate'}; give the path of {what}"
        )
    if key == "key_file" and (
        b"ENCRYPTED PRIVATE KEY" in text or b"Proc-Type: 4,ENCRYPTED" in text
    ):
        raise ConfigError(
            f"{where}.{key}: {str(resolved)!r} is encrypted and the exporter cannot ask for its "
            f"passphrase; decrypt it, e.g. openssl pkey -in {resolved} -out server.key"
        )
    return resolved


def _client_auth_type(value: object, where: str) -> str:
    choices = ", ".join(_CLIENT_AUTH_TYPES)
    if value in _UNVERIFIED_CLIENT_AUTH_TYPES:
        raise ConfigError(
            f"{where}.client_auth_type: {value} (a certificate without verification) is not "
            "supported; use RequireAndVerifyClientCert with client_ca_file"
        )
    if not isinstance(value, str) or value not in _CLIENT_AUTH_TYPES:
        raise ConfigError(f"{where}.client_auth_type: must be one of {choices}, got {value!r}")
    return value


def _min_version(value: object, where: str) -> ssl.TLSVersion:
    if not isinstance(value, str) or value not in _TLS_VERSIONS:
        raise ConfigError(
            f"{where}.min_version: must be TLS12 (the default) or TLS13, got {value!r}"
        )
    return _TLS_VERSIONS[value]


def _refuse_passphrase() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key.
    raise ssl.SSLError("the key is encrypted")


def _load_cert_chain(context: ssl.SSLContext, cert: Path, key: Path, where: str) -> None:
    try:
        context.load_cert_chain(cert, key, password=_refuse_passphrase)
    except ssl.SSLError as e:
        if e.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(
                f"{where}.key_file: the key in {str(key)!r} does not belong to the certificate "
                f"in {str(cert)!r}; give the key that was made with that certificate"
            ) from None
        raise ConfigError(
            f"{where}.cert_file: cannot use {str(cert)!r} with the key {str(key)!r}: "
            f"{_ssl_problem(e)}; give a PEM certificate and its unencrypted PEM key"
        ) from None


def _ssl_problem(error: ssl.SSLError) -> str:
    """OpenSSL's reason in words ("ee key too small"), without its source file and line."""
    if error.reason:
        return error.reason.lower().replace("_", " ")
    return "OpenSSL cannot read it"


def _load_client_ca(context: ssl.SSLContext, ca: Path, where: str) -> None:
    try:
        context.load_verify_locations(cafile=ca)
    except ssl.SSLError as e:
        raise ConfigError(
            f"{where}.client_ca_file: cannot load {str(ca)!r}: {_ssl_problem(e)}; give the PEM "
            "certificate of the CA that signs client certificates"
        ) from None


def _user_key(name: str) -> str:
    """``basic_auth_users.alice``, or with the name quoted when it has odd characters."""
    if name.isprintable() and not any(c.isspace() or c in ".[]'\"" for c in name):
        return f"basic_auth_users.{name}"
    return f"basic_auth_users[{name!r}]"


def _users(section: object, path: str, warnings: list[str]) -> dict[str, bytes]:
    # Never format a value here: it should be a hash, but may be a password put there by mistake.
    if not isinstance(section, dict):
        raise ConfigError(
            f"{path}: basic_auth_users: expected a mapping of user names to bcrypt hashes, "
            f"got {type(section).__name__}"
        )
    users = {}
    for name, hashed in section.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(
                f"{path}: basic_auth_users: user name {name!r} is not a non-empty string; "
                "put it in quotes"
            )
        if ":" in name:
            raise ConfigError(
                f"{path}: basic_auth_users: a user name contains ':' (not shown: it may hold a "
                "password), which basic auth cannot send; write each user as name: hash"
            )
        key = _user_key(name)
        if hashed is None:
            raise ConfigError(f"{path}: {key}: missing: the bcrypt hash of the password")
        encoded = hashed.strip().encode() if isinstance(hashed, str) and hashed.isascii() else b""
        match = BCRYPT_RE.fullmatch(encoded)
        if match is None:
            raise ConfigError(
                f"{path}: {key}: not a bcrypt hash (the value is not shown); store the hash, "
                f"not the password, e.g. from {_HTPASSWD_HINT}"
            )
        cost = int(match[1])
        if cost > MAX_BCRYPT_COST:
            raise ConfigError(
                f"{path}: {key}: bcrypt cost {cost} is above the maximum of {MAX_BCRYPT_COST} "
                f"(each step doubles the time of a check); hash again, e.g. with {_HTPASSWD_HINT}"
            )
        if cost > WARN_BCRYPT_COST:
            warnings.append(
                f"{path}: {key}: bcrypt cost {cost} makes every login that is not cached take "
                f"0.5 s or more of CPU; cost 10 is enough for a random password"
            )
        users[name] = encoded
    return users
