"""Fuzzing of the config file and the web config file: whatever a file holds, reading it ends in
settings or in one ConfigError naming the file, never in another exception (which would end a
running exporter on SIGHUP, or a start with a traceback instead of one line and exit 2)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.config import load_settings
from exporter.errors import ConfigError
from exporter.webconfig import load_web_config
from exporter.yamlfile import MAX_DEPTH, MAX_SIZE

KEYS = [
    "mandants",
    "name",
    "api_url",
    "token_url",
    "client_id",
    "client_secret_file",
    "page_limit",
    "concurrency",
    "refresh_interval",
    "refresh_timeout",
    "station_info",
    "tls_server_config",
    "basic_auth_users",
    "cert_file",
    "key_file",
    "min_version",
    "client_auth_type",
    "unknown",
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["http://127.0.0.1:1", "30s", "-1", "0", "1e999", "secret.txt", "TLS13"]),
)
DOCUMENTS = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(KEYS), children, max_size=5),
    ),
    max_leaves=30,
)
HOSTILE_TEXTS = [
    "a: " + "[" * 5000 + "]" * 5000,  # nested far deeper than PyYAML's recursion allows
    "".join("  " * depth + "k:\n" for depth in range(2000)),
    "mandants:\n" + "  - " * 3000 + "x\n",
    "a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9]\n"
    + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)
    ),
    "mandants: &m [*m]\n",
    "? [a, b]\n: 1\n",
    "page_limit: !!python/object/apply:os.system ['true']\n",
    "page_limit: !!binary aGVsbG8=\n",
    "page_limit: !!set {a, b}\n",
    "page_limit: 2001-12-14t21:59:43.10-05:00\n",
    "page_limit: 1" + "0" * 5000 + "\n",
    "\x00\x01\x02",
    "\ufeff\ufeffmandants: []\n",
    '"\\ud800": 1\n',
    "%YAML 9.9\n---\na: 1\n",
    "--- 1\n--- 2\n",
    "{" * 100,
]


def read(path: Path, content: str | bytes, reader: str) -> None:
    """Read ``content`` as the config file or the web config file: fine, or one ConfigError."""
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8", errors="surrogatepass")
    else:
        path.write_bytes(content)
    try:
        if reader == "config":
            load_settings(["--config.file", str(path)], {})
        else:
            load_web_config(str(path))
    except ConfigError as e:
        assert "\n" not in str(e)
        assert "Traceback" not in str(e)


@pytest.mark.parametrize("reader", ["config", "web"])
@pytest.mark.parametrize("content", HOSTILE_TEXTS)
def test_hostile_files_end_in_a_config_error(tmp_path: Path, content: str, reader: str) -> None:
    read(tmp_path / "file.yml", content, reader)


@pytest.mark.parametrize("reader", ["config", "web"])
def test_deep_nesting_is_refused_by_name(tmp_path: Path, reader: str) -> None:
    path = tmp_path / "deep.yml"
    path.write_text("a: " + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))
    with pytest.raises(ConfigError, match=f"{path}: not valid YAML: .*nested deeper than"):
        load_settings(["--config.file", str(path)], {}) if reader == "config" else load_web_config(
            str(path)
        )


def test_an_oversized_file_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "huge.yml"
    path.write_text("# " + "x" * MAX_SIZE + "\n")
    with pytest.raises(ConfigError, match=f"{path}: not valid YAML: larger than 4 MiB"):
        load_settings(["--config.file", str(path)], {})


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(document=DOCUMENTS, reader=st.sampled_from(["config", "web"]))
def test_any_yaml_document_ends_in_settings_or_a_config_error(
    tmp_path: Path, document: object, reader: str
) -> None:
    read(tmp_path / "fuzz.yml", yaml.safe_dump(document, allow_unicode=True), reader)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=st.binary(max_size=200),
    cut=st.integers(min_value=0, max_value=400),
    reader=st.sampled_from(["config", "web"]),
)
def test_any_bytes_spliced_into_a_good_file_end_in_settings_or_a_config_error(
    tmp_path: Path, data: bytes, cut: int, reader: str
) -> None:
    good = (
        b"page_limit: 100\nmandants:\n  - name: north\n    api_url: http://127.0.0.1:1\n"
        b"    client_id: id\n    client_secret_file: secret.txt\n"
        if reader == "config"
        else b"basic_auth_users:\n  alice: $2b$04$abcdefghijklmnopqrstuu\ntls_server_config: {}\n"
    )
    read(tmp_path / "fuzz.yml", good[:cut] + data + good[cut:], reader)


def in_a_thread(call: Callable[[], object]) -> BaseException | None:
    """What ``call`` raised, run in a thread that must end within 10 s: a FIFO that blocked
    the read would hang the test, not fail it."""
    raised: list[BaseException | None] = [None]

    def run() -> None:
        try:
            call()
        except BaseException as e:
            raised[0] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "reading the file blocked"
    return raised[0]


@pytest.mark.parametrize("which", ["config", "web config", "secret", "ca_file", "cert_file"])
@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_a_file_that_is_no_regular_file_is_refused_at_once(
    tmp_path: Path, which: str, kind: str
) -> None:
    """A FIFO would block the start or a reload until someone writes to it, /dev/zero would
    never end: every file the exporter reads must be a regular file."""
    special = tmp_path / "special"
    if kind == "fifo":
        os.mkfifo(special)
    elif kind == "directory":
        special.mkdir()
    else:
        special = Path("/dev/zero")
    (tmp_path / "secret.txt").write_text("s3cret-value")
    mandant = "mandants:\n  - name: n\n    api_url: http://127.0.0.1:1\n    client_id: i\n"
    config = tmp_path / "exporter.yml"
    config.write_text(
        mandant
        + f"    client_secret_file: {special if which == 'secret' else 'secret.txt'}\n"
        + (f"    ca_file: {special}\n" if which == "ca_file" else "")
    )
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {special}\n  key_file: {special}\n")
    calls: dict[str, Callable[[], object]] = {
        "config": lambda: load_settings(["--config.file", str(special)], {}),
        "web config": lambda: load_web_config(str(special)),
        "secret": lambda: load_settings(["--config.file", str(config)], {}),
        "ca_file": lambda: load_settings(["--config.file", str(config)], {}),
        "cert_file": lambda: load_web_config(str(web)),
    }
    raised = in_a_thread(calls[which])
    assert isinstance(raised, ConfigError), raised
    if which == "ca_file" and kind == "directory":
        return  # a directory of hashed certificates is a valid ca_file
    assert "not a regular file" in str(raised), raised


def test_a_secret_file_larger_than_64_kib_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("x" * (64 * 1024 + 1))
    config = tmp_path / "exporter.yml"
    config.write_text(
        "mandants:\n  - name: n\n    api_url: http://127.0.0.1:1\n    client_id: i\n"
        "    client_secret_file: secret.txt\n"
    )
    with pytest.raises(ConfigError, match=r"secret.txt' is larger than 64 KiB"):
        load_settings(["--config.file", str(config)], {})
