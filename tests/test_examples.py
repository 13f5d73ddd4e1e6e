"""examples/: each file an operator may copy loads through the parser that will read it.

The config file and the web config file go through exporter/config.py and exporter/webconfig.py
(a copy of each, beside the secret, certificate and CA files it names, as an operator would
put them); the scrape config goes through ``promtool check config`` with the shipped rules.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import trustme
import yaml

from exporter.config import Settings, load_settings
from exporter.options import FILE_GLOBAL_KEYS, FILE_MANDANT_KEYS
from exporter.values import DEFAULT_PORT
from exporter.webconfig import load_web_config
from tests.helpers import ROOT, require_tool

EXAMPLES = ROOT / "examples"
CONFIG = EXAMPLES / "config.yml"
WEB_CONFIG = EXAMPLES / "web-config.yml"
SCRAPE_CONFIG = EXAMPLES / "prometheus.yml"
ALERTS = ROOT / "prometheus" / "alerts.yml"
COMMENTED_SETTING = re.compile(r"^# (\w+):", re.MULTILINE)
"""A global setting shown commented out with its default, at the start of a line."""


def config_copy(directory: Path, text: str | None = None) -> Path:
    """examples/config.yml (or ``text``) in ``directory``, beside the files it names."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(directory / "private-ca.pem")
    (directory / "north.secret").write_text("north-secret\n")
    (directory / "south.secret").write_text("south-secret\n")
    copy = directory / CONFIG.name
    copy.write_text(CONFIG.read_text() if text is None else text)
    return copy


def test_config_example_loads_with_several_mandants(tmp_path):
    settings = load_settings(["--config.file", str(config_copy(tmp_path))], {})
    north, south = settings.mandants
    assert (north.name, south.name) == ("north", "south")
    assert north.api_url == "https://north.beenergised.cloud"
    assert north.client_secret.reveal() == "north-secret"
    assert south.client_secret.reveal() == "south-secret"
    assert north.target_firmware is not None and south.target_firmware is None
    assert (north.token_auth_method, south.token_auth_method) == ("basic", "post")
    assert (north.firmware_max_versions, south.firmware_max_versions) == (100, 50)
    assert south.ca_file == str(tmp_path / "private-ca.pem"), "relative to the config file"
    assert settings.refresh_interval == 300


def test_config_example_names_every_key_of_the_config_file():
    """An operator finds every setting of the file here, set or commented out."""
    text = CONFIG.read_text()
    missing = [key for key in {*FILE_GLOBAL_KEYS, *FILE_MANDANT_KEYS} if f"{key}:" not in text]
    assert not missing, f"examples/config.yml does not name {sorted(missing)}"


def comparable(settings: Settings) -> dict[str, object]:
    """The fields of ``settings``, a mandant's secret by its value (a Secret equals only itself)."""
    fields = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
    fields["mandants"] = [
        {f.name: getattr(m, f.name) for f in dataclasses.fields(m)}
        | {"client_secret": m.client_secret.reveal()}
        for m in settings.mandants
    ]
    return fields


def test_config_example_settings_commented_out_show_their_defaults(tmp_path):
    """Uncommenting a global setting the example shows commented out changes nothing."""
    text = CONFIG.read_text()
    shown = COMMENTED_SETTING.findall(text)
    assert len(shown) >= 8, "the commented-out defaults were not found"
    uncommented = COMMENTED_SETTING.sub(r"\1:", text)
    assert yaml.safe_load(uncommented).keys() >= set(shown)
    as_is = load_settings(["--config.file", str(config_copy(tmp_path))], {})
    copy = tmp_path / "uncommented.yml"
    copy.write_text(uncommented)
    with_defaults = load_settings(["--config.file", str(copy)], {})
    assert comparable(with_defaults) == comparable(as_is)


def web_config_copy(directory: Path) -> Path:
    """examples/web-config.yml in ``directory`` with a certificate and key where it names them."""
    server = trustme.CA().issue_cert("exporter-host")
    server.cert_chain_pems[0].write_to_path(directory / "server.crt")
    server.private_key_pem.write_to_path(directory / "server.key")
    copy = directory / WEB_CONFIG.name
    shutil.copy(WEB_CONFIG, copy)
    return copy


def test_web_config_example_loads_with_tls_and_basic_auth(tmp_path):
    config = load_web_config(str(web_config_copy(tmp_path)))
    assert config.ssl_context is not None
    assert list(config.users) == ["prometheus"]
    assert config.warnings == ()
    (digest,) = config.users.values()
    assert re.match(rb"\$2y\$10\$", digest), "the format and cost htpasswd -nBC 10 writes"


def scrape_job() -> dict:
    (job,) = yaml.safe_load(SCRAPE_CONFIG.read_text())["scrape_configs"]
    return job


def test_scrape_config_example_matches_the_exporter_and_the_web_config():
    job = scrape_job()
    (alert_job,) = set(re.findall(r'up\{job="([^"]+)"\}', ALERTS.read_text()))
    assert job["job_name"] == alert_job
    (static,) = job["static_configs"]
    (target,) = static["targets"]
    assert target.endswith(f":{DEFAULT_PORT}")
    web = yaml.safe_load(WEB_CONFIG.read_text())
    assert (job["scheme"] == "https") == ("tls_server_config" in web)
    assert job["basic_auth"]["username"] in web["basic_auth_users"]
    rule_files = yaml.safe_load(SCRAPE_CONFIG.read_text())["rule_files"]
    assert rule_files == ["alerts.yml", "rules.yml"]
    assert all((ROOT / "prometheus" / name).exists() for name in rule_files)


@pytest.mark.e2e
def test_scrape_config_example_passes_promtool_check_config(tmp_path):
    promtool = require_tool("promtool")
    shutil.copy(SCRAPE_CONFIG, tmp_path / "prometheus.yml")
    for name in yaml.safe_load(SCRAPE_CONFIG.read_text())["rule_files"]:
        shutil.copy(ROOT / "prometheus" / name, tmp_path / name)
    result = subprocess.run(
        [promtool, "check", "config", "prometheus.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 rule files found" in result.stdout
