"""`beenergised-exporter check` against the real simulator on 127.0.0.1."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from exporter import cli
from exporter.api import CpoClient
from exporter.check import hint
from exporter.model import DATA_ISSUES
from exporter.simulator import Fault, Inventory, Simulator

SCRIPT = str(Path(sys.executable).with_name("beenergised-exporter"))
CLIENT_ID = "check-client"
SECRET = "check-Secret-5b1e"
WRONG_SECRET = "wrong-Secret-9d2c"
STATIONS = 23
MAX_PAGE_LIMIT = 10

# Three stations with known data problems, on top of the generated ones.
PROBLEM_STATIONS = [
    {
        "attributes": {
            "label": "no firmware",
            "chargeBoxIdentity": "dup-1",
            "firmwareVersion": "",
            "iccid": "89490000000000000001",
            "imsi": "262010000000001",
        }
    },
    {
        "attributes": {
            "label": "no iccid, duplicate identity",
            "chargeBoxIdentity": "dup-1",
            "firmwareVersion": "2.4.1",
            "iccid": "",
            "imsi": "262010000000002",
        }
    },
    {
        "attributes": {
            "label": "no imsi",
            "chargeBoxIdentity": "unique-1",
            "firmwareVersion": "2.5.0",
            "iccid": "89490000000000000003",
        }
    },
]
PROBLEMS = {"no_firmware_version": 1, "no_sim_data": 2, "duplicate_charge_box_identity": 2}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("BEENERGISED_"):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _logging_restored(restore_logging: None) -> None:
    """cli.main sets up logging to the captured stderr, which closes after the test."""


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(
        Inventory(size=STATIONS, seed=5),
        client_id=CLIENT_ID,
        client_secret=SECRET,
        max_page_limit=MAX_PAGE_LIMIT,
    ) as simulator:
        yield simulator


def mandant_env(
    sim: Simulator, *, api_url: str | None = None, secret: str = SECRET
) -> dict[str, str]:
    return {
        "BEENERGISED_API_URL": api_url or sim.api_url,
        "BEENERGISED_TOKEN_URL": sim.token_url,
        "BEENERGISED_CLIENT_ID": CLIENT_ID,
        "BEENERGISED_CLIENT_SECRET": secret,
    }


def run_check(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    *argv: str,
) -> tuple[int, str, str]:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = cli.main(["check", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def rows(text: str) -> dict[str, list[str]]:
    """The text report's rows by label; continuation rows (no label) join the label above."""
    table: dict[str, list[str]] = {}
    label = ""
    for line in text.splitlines():
        if not line.startswith("  "):
            continue
        name, value = line[2:15].strip(), line[15:]
        label = name or label
        table.setdefault(label, []).append(value)
    return table


def expected_firmware(sim: Simulator) -> dict[str, int]:
    state = requests.get(sim.api_url + "/_sim/state", timeout=5).json()
    return {version or "unknown": count for version, count in state["firmware"].items()}


def add_problem_stations(sim: Simulator) -> None:
    response = requests.post(
        sim.api_url + "/_sim/inventory", json={"stations": PROBLEM_STATIONS}, timeout=5
    )
    response.raise_for_status()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_text_report_shows_the_simulators_fleet(sim, capsys, monkeypatch):
    add_problem_stations(sim)
    total = STATIONS + len(PROBLEM_STATIONS)
    code, out, err = run_check(
        capsys, monkeypatch, mandant_env(sim), "--api.page-limit=7", "--firmware.target=2.5.0"
    )
    assert code == 0, out + err
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == f"mandant 127.0.0.1  {sim.api_url}  OK"
    assert lines[-1] == "all 1 mandant(s) OK"
    table = rows(out)
    assert table["stations"] == [str(total)]
    assert table["pages"] == [str(math.ceil(total / 7))]
    assert table["time"][0].endswith("s")
    assert table["token"] == ["valid for 3600s"]
    assert table["auth header"] == ["bearer (Authorization: Bearer <token>), found by auto"]

    firmware = {}
    for row in table["firmware"]:
        version, count, *note = row.split()
        firmware[version] = int(count)
        assert note == (["on", "target"] if version == "2.5.0" else [])
    assert firmware == expected_firmware(sim)
    counts = list(firmware.values())
    assert counts == sorted(counts, reverse=True)

    on_target = firmware["2.5.0"]
    percent = math.floor(100 * on_target / total)
    assert table["target"] == [f"2.5.0: {on_target} of {total} stations ({percent}%)"]
    issues = {row.split()[0]: int(row.split()[1]) for row in table["data issues"]}
    assert issues == PROBLEMS


@pytest.fixture
def raw_sim() -> Iterator[Simulator]:
    """A simulator that takes only the bare token, as the quickstart's curl sends it."""
    with Simulator(
        Inventory(size=STATIONS, seed=5),
        client_id=CLIENT_ID,
        client_secret=SECRET,
        max_page_limit=MAX_PAGE_LIMIT,
        authorization="raw",
    ) as simulator:
        yield simulator


def test_the_form_of_the_header_the_api_takes_is_found_and_shown(raw_sim, capsys, monkeypatch):
    code, out, err = run_check(capsys, monkeypatch, mandant_env(raw_sim))
    assert code == 0, out + err
    assert rows(out)["auth header"] == ["raw (Authorization: <token>), found by auto"]
    code, out, _ = run_check(capsys, monkeypatch, mandant_env(raw_sim), "--output=json")
    [mandant] = json.loads(out)["mandants"]
    assert mandant["authorization"] == {"setting": "auto", "accepted": "raw"}
    assert mandant["stations"] == STATIONS


def test_a_form_set_that_the_api_refuses_fails_with_a_hint_to_try_auto(
    raw_sim, capsys, monkeypatch
):
    env = mandant_env(raw_sim) | {"BEENERGISED_API_AUTHORIZATION": "bearer"}
    code, out, _ = run_check(capsys, monkeypatch, env, "--output=json")
    assert code == 1
    [mandant] = json.loads(out)["mandants"]
    assert mandant["authorization"] == {"setting": "bearer", "accepted": None}
    assert mandant["error"]["reason"] == "auth"
    assert "(--api.authorization=bearer)" in mandant["error"]["message"]
    assert "set it to auto" in mandant["error"]["hint"]
    code, out, _ = run_check(capsys, monkeypatch, env)
    assert code == 1
    assert "auth header" not in rows(out)


def test_json_report_matches_the_simulator(sim, capsys, monkeypatch):
    add_problem_stations(sim)
    total = STATIONS + len(PROBLEM_STATIONS)
    code, out, err = run_check(
        capsys,
        monkeypatch,
        mandant_env(sim),
        "--output",
        "json",
        "--api.page-limit=4",
        "--firmware.target=/2\\.5\\..*|3\\..*/",
    )
    assert code == 0, out + err
    report = json.loads(out)
    assert report["ok"] is True
    [mandant] = report["mandants"]
    firmware = expected_firmware(sim)
    assert mandant == {
        "name": "127.0.0.1",
        "api_url": sim.api_url,
        "ok": True,
        "seconds": mandant["seconds"],
        "pages": math.ceil(total / 4),
        "stations": total,
        "token_expires_in": 3600,
        "authorization": {"setting": "auto", "accepted": "bearer"},
        "firmware": firmware,
        "target": {
            "firmware": "/2\\.5\\..*|3\\..*/",
            "on_target": firmware.get("2.5.0", 0) + firmware.get("3.0.0-rc1", 0),
        },
        "data_issues": dict.fromkeys(DATA_ISSUES, 0) | PROBLEMS,
        "error": None,
    }
    assert 0 < mandant["seconds"] < 10
    assert list(mandant["firmware"].values()) == sorted(firmware.values(), reverse=True)


def test_firmware_beyond_the_bound_is_reported_as_metrics_show_it(sim, capsys, monkeypatch):
    firmware = expected_firmware(sim)
    rarest = min(firmware, key=lambda version: (firmware[version], version))
    code, out, err = run_check(
        capsys,
        monkeypatch,
        mandant_env(sim),
        "--output=json",
        "--firmware.max-versions=1",
        f"--firmware.target={rarest}",
    )
    assert code == 0, out + err
    [mandant] = json.loads(out)["mandants"]
    folded = STATIONS - firmware[rarest]
    assert mandant["firmware"] == {"(other)": folded, rarest: firmware[rarest]}
    assert mandant["data_issues"]["firmware_version_folded"] == folded
    assert mandant["target"]["on_target"] == firmware[rarest]


def test_the_folded_row_is_never_marked_on_target(sim, capsys, monkeypatch):
    env = mandant_env(sim)
    code, out, err = run_check(
        capsys, monkeypatch, env, "--firmware.max-versions=1", "--firmware.target=/.*/"
    )
    assert code == 0, out + err
    table = {row.split()[0]: row.split()[1:] for row in rows(out)["firmware"]}
    most_common = max(expected_firmware(sim).items(), key=lambda item: item[1])
    assert table == {
        most_common[0]: [str(most_common[1]), "on", "target"],
        "(other)": [str(STATIONS - most_common[1])],
    }


def test_pages_are_capped_by_the_apis_page_limit(sim, capsys, monkeypatch):
    code, out, _ = run_check(capsys, monkeypatch, mandant_env(sim), "--output=json")
    assert code == 0
    [mandant] = json.loads(out)["mandants"]
    # --api.page-limit defaults to 100; the simulator gives at most 10 rows a page.
    assert mandant["pages"] == math.ceil(STATIONS / MAX_PAGE_LIMIT)
    assert mandant["target"] is None
    assert mandant["data_issues"] == dict.fromkeys(DATA_ISSUES, 0)


@pytest.mark.parametrize("output", ["text", "json"])
def test_a_wrong_secret_fails_naming_the_credentials_and_never_shows_a_secret(
    sim, capsys, monkeypatch, output
):
    code, out, err = run_check(
        capsys,
        monkeypatch,
        mandant_env(sim, secret=WRONG_SECRET),
        f"--output={output}",
        "--log.level=debug",
    )
    assert code == 1
    assert "rejected the client credentials (invalid_client)" in out
    assert "check the client id and client secret" in out
    for secret in (WRONG_SECRET, SECRET):
        assert secret not in out + err
    if output == "json":
        report = json.loads(out)
        assert report["ok"] is False
        [mandant] = report["mandants"]
        assert mandant["ok"] is False
        assert mandant["error"]["reason"] == "auth"
        assert mandant["token_expires_in"] is None
        assert mandant["stations"] is None
    else:
        assert rows(out)["reason"] == ["auth"]
        assert out.splitlines()[-1] == "1 of 1 mandant(s) FAILED"
    assert "Traceback" not in out + err


def test_no_secret_and_no_token_even_at_debug_level(sim, capsys, monkeypatch):
    code, out, err = run_check(
        capsys, monkeypatch, mandant_env(sim), "--log.level=debug", "--api.token-auth-method=query"
    )
    assert code == 0
    tokens = sim.tokens["issued"]
    assert len(tokens) == 1
    for secret in (SECRET, *tokens):
        assert secret not in out + err


def test_an_unreachable_url_fails_with_reason_connection(sim, capsys, monkeypatch):
    url = f"http://127.0.0.1:{closed_port()}"
    code, out, err = run_check(capsys, monkeypatch, mandant_env(sim, api_url=url), "--output=json")
    assert code == 1
    [mandant] = json.loads(out)["mandants"]
    assert mandant["error"] == {
        "reason": "connection",
        "message": f"charging stations of {url.removeprefix('http://')}: cannot connect "
        "(ConnectionError)",
        "hint": "is api_url right, and can this machine reach it (DNS, proxy, firewall)?",
    }
    assert "Traceback" not in err


def test_a_wrong_mandant_url_fails_with_the_404_hint(sim, capsys, monkeypatch):
    code, out, _ = run_check(capsys, monkeypatch, mandant_env(sim, api_url=sim.api_url + "/wrong"))
    assert code == 1
    table = rows(out)
    assert table["reason"] == ["http"]
    assert "HTTP 404" in table["error"][0]
    assert table["hint"] == [
        "is api_url the base URL of your mandant, e.g. https://yourmandant.beenergised.cloud?"
    ]


def test_an_api_that_does_not_answer_in_time_fails_with_reason_timeout(sim, capsys, monkeypatch):
    sim.add_fault(Fault(kind="hang", seconds=5))
    # The check has the request and refresh bounds of a refresh.
    code, out, err = run_check(
        capsys,
        monkeypatch,
        mandant_env(sim),
        "--output=json",
        "--refresh.interval=1s",
        "--api.request-timeout=1s",
    )
    assert code == 1
    [mandant] = json.loads(out)["mandants"]
    assert mandant["error"]["reason"] == "timeout"
    assert "--api.request-timeout" in mandant["error"]["hint"]
    assert "below 30s" in err  # the configuration's warnings are logged


@pytest.mark.parametrize(
    ("fault", "reason", "in_hint", "argv"),
    [
        (Fault(kind="status", status=403), "auth", "cpoapi scope", ()),
        (Fault(kind="status", status=500), "http", "try again in a few minutes", ()),
        (Fault(kind="status", status=404, endpoint="token"), "auth", "OAuth2 token endpoint", ()),
        (Fault(kind="html", status=200), "parse", "not a web page", ()),
        (Fault(kind="endless", per_page=101), "pagination", "more stations a page than", ()),
        (Fault(kind="endless"), "too_large", "raise --api.max-stations", ("--api.max-stations=9",)),
    ],
)
def test_each_failure_gets_its_reason_and_hint(
    sim, capsys, monkeypatch, fault, reason, in_hint, argv
):
    sim.add_fault(fault)
    code, out, _ = run_check(capsys, monkeypatch, mandant_env(sim), "--output=json", *argv)
    assert code == 1
    [mandant] = json.loads(out)["mandants"]
    assert mandant["error"]["reason"] == reason
    assert in_hint in mandant["error"]["hint"]


@pytest.mark.parametrize(
    "message",
    [
        "token endpoint h sent an access token that cannot go into an HTTP header (it holds a "
        "line break); refused, not kept: the token endpoint, or a proxy in between, is broken",
        'token endpoint h: token_type "mac" is not Bearer, the only kind of token this exporter '
        "can send",
    ],
)
def test_a_token_that_cannot_be_sent_gets_a_hint_about_the_token_endpoint_not_the_secret(
    message,
):
    text = hint("auth", "token", message)
    assert "token endpoint answered with a token this exporter cannot send" in text
    assert "client id and secret" not in text


@pytest.mark.parametrize(
    ("reason", "message", "in_hint"),
    [
        ("too_large", "h: more than 9 stations listed (12 rows received in 4 pages); raise "
         "--api.max-stations if the fleet is that large", "raise --api.max-stations"),
        ("too_large", "h: no last page after 10000 pages (500 rows), and one read fetches at "
         "most 10000 pages; raise --api.page-limit if the fleet is that large",
         "raise --api.page-limit"),
        ("too_large", "h: answer larger than 8 MiB, refused; raise --api.max-response-size if "
         "answers this large are genuine", "--api.max-response-size"),
        ("pagination", "h: 101 rows at page[offset]=0, more than the page[limit]=100 asked for",
         "more stations a page than page[limit] asks for"),
        ("pagination", "h: listing inconsistent twice in a row (total went from 4 to 5)",
         "changed while it was read"),
    ],
)  # fmt: skip
def test_a_listing_too_long_or_off_its_pages_gets_the_hint_of_its_bound(reason, message, in_hint):
    assert in_hint in hint(reason, "stations", message)


def test_an_unexpected_error_is_one_failure_without_traceback_or_secret(sim, capsys, monkeypatch):
    def broken(*args: object) -> None:
        raise RuntimeError(f"boom near {SECRET}")

    monkeypatch.setattr(CpoClient, "stations", broken)
    code, out, err = run_check(capsys, monkeypatch, mandant_env(sim))
    assert code == 1
    table = rows(out)
    assert table["reason"] == ["error"]
    assert table["error"] == ["unexpected RuntimeError while reading the stations: boom near ***"]
    assert "Traceback" not in out + err
    assert SECRET not in out + err


def test_every_mandant_of_a_config_file_is_checked(sim, tmp_path, capsys, monkeypatch):
    (tmp_path / "secret").write_text(SECRET + "\n")
    (tmp_path / "wrong").write_text(WRONG_SECRET + "\n")
    config = tmp_path / "exporter.yml"
    config.write_text(
        "mandants:\n"
        + "".join(
            f"  - name: {name}\n    api_url: {sim.api_url}\n    token_url: {sim.token_url}\n"
            f"    client_id: {CLIENT_ID}\n    client_secret_file: {secret}\n"
            for name, secret in (("good", "secret"), ("bad", "wrong"))
        )
    )
    code, out, err = run_check(capsys, monkeypatch, {}, f"--config.file={config}")
    assert code == 1, out + err
    blocks = out.split("\n\n")
    assert blocks[0].startswith(f"mandant good  {sim.api_url}  OK")
    assert blocks[1].startswith(f"mandant bad  {sim.api_url}  FAILED")
    assert out.splitlines()[-1] == "1 of 2 mandant(s) FAILED"
    assert WRONG_SECRET not in out + err and SECRET not in out + err


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--api.page-limit=0"], {}, "--api.page-limit: must be at least 1"),
        ([], {"BEENERGISED_CLIENT_ID": ""}, "BEENERGISED_CLIENT_ID (or --api.client-id): missing"),
        (["--output=xml"], {}, "--output: invalid choice (the value is not shown) (choose from"),
    ],
)
def test_a_configuration_error_exits_2_naming_the_setting(
    sim, capsys, monkeypatch, args, env, expected
):
    code, out, err = run_check(capsys, monkeypatch, mandant_env(sim) | env, *args)
    assert code == 2
    assert out == ""
    assert err.startswith("beenergised-exporter check: ")
    assert expected in err
    assert len(err.splitlines()) == 1


def test_a_configuration_error_in_json_mode_is_json_too(sim, capsys, monkeypatch):
    env = mandant_env(sim) | {"BEENERGISED_CLIENT_SECRET": ""}
    code, out, err = run_check(capsys, monkeypatch, env, "--output", "json")
    assert code == 2
    report = json.loads(out)
    message = err.removeprefix("beenergised-exporter check: ").strip()
    assert report == {"ok": False, "error": message}
    assert "client secret" in report["error"]


def test_a_bad_web_config_file_exits_2_naming_it(sim, tmp_path, capsys, monkeypatch):
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users:\n  prometheus: not-a-bcrypt-hash\n")
    code, _, err = run_check(capsys, monkeypatch, mandant_env(sim), f"--web.config.file={web}")
    assert code == 2
    assert str(web) in err and "basic_auth_users" in err
    assert "not-a-bcrypt-hash" not in err


def test_a_valid_web_config_file_is_reported(sim, tmp_path, capsys, monkeypatch):
    bcrypt = pytest.importorskip("bcrypt")
    hashed = bcrypt.hashpw(b"scrape-Pass-1", bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    code, out, _ = run_check(capsys, monkeypatch, mandant_env(sim), f"--web.config.file={web}")
    assert code == 0
    assert out.splitlines()[0] == f"web config file {web}: valid"


def test_an_empty_web_config_file_is_valid_with_a_warning(sim, tmp_path, capsys, monkeypatch):
    web = tmp_path / "web.yml"
    web.write_text("# nothing yet\n")
    code, out, err = run_check(capsys, monkeypatch, mandant_env(sim), f"--web.config.file={web}")
    assert code == 0
    assert out.splitlines()[0] == f"web config file {web}: valid"
    assert "without TLS and without basic auth" in err


def test_demo_checks_the_built_in_simulator_and_stops_it(capsys, monkeypatch):
    code, out, err = run_check(capsys, monkeypatch, {}, "--demo")
    assert code == 0, out + err
    assert out.startswith("mandant demo  http://127.0.0.1:")
    assert out.splitlines()[-1] == "all 1 mandant(s) OK"
    table = rows(out)
    assert table["stations"] == ["40"]
    assert table["target"][0].startswith("/2\\.5\\..*|3\\..*/: ")
    assert not [t for t in threading.enumerate() if t.name.startswith("simulator-")]


@pytest.mark.e2e
def test_the_console_script_runs_check(sim):
    env = {"PATH": os.environ.get("PATH", "")} | mandant_env(sim)
    result = subprocess.run(
        [SCRIPT, "check", "--output=json", "--api.page-limit=5"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    [mandant] = report["mandants"]
    assert report["ok"] is True
    assert mandant["stations"] == STATIONS
    assert mandant["pages"] == math.ceil(STATIONS / 5)
    assert mandant["firmware"] == expected_firmware(sim)
    assert result.stderr == ""

    wrong = subprocess.run(
        [SCRIPT, "check"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env | {"BEENERGISED_CLIENT_SECRET": WRONG_SECRET},
    )
    assert wrong.returncode == 1
    assert "reason       auth" in wrong.stdout
    assert WRONG_SECRET not in wrong.stdout + wrong.stderr


@pytest.mark.e2e
def test_check_help_shows_the_check_usage_with_every_flag():
    result = subprocess.run([SCRIPT, "check", "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert result.stdout.startswith("usage: beenergised-exporter check ")
    for flag in ("--api.url", "--config.file", "--demo", "--web.config.file", "--output"):
        assert flag in result.stdout
    assert "default warn" in result.stdout


@pytest.mark.parametrize(
    ("reason", "step", "message", "status", "in_hint"),
    [
        ("http", "stations", "h: server error", 503, "try again in a few minutes"),
        ("http", "stations", "h: not there", 404, "is api_url the base URL of your mandant"),
        ("auth", "token", "token endpoint h rejected the client credentials (invalid_client)",
         404, "is token_url the OAuth2 token endpoint"),
        # The status comes from the error, never from its text.
        ("http", "stations", "h: HTTP 503 at page[offset]=0", None, "the server refused"),
    ],
)  # fmt: skip
def test_the_hint_reads_the_status_the_error_carries(reason, step, message, status, in_hint):
    assert in_hint in hint(reason, step, message, status)
