"""A tiny run of the benchmark, only to keep the script working (no timing is asserted)."""

import re
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.e2e


def test_the_benchmark_runs_and_writes_its_tables(tmp_path):
    output = tmp_path / "results.md"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench.py"), "--sizes", "150,300",
         "--concurrency", "1,4", "--latency", "0.001", "--scrapes", "3",
         "--output", str(output), "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report = output.read_text()
    for size in ("150", "300"):
        for exporter in ("beenergised-exporter", "naive baseline"):
            assert f"| {size} | {exporter} |" in report
    assert "| 300 | beenergised-exporter | 4 | 3 |" in report  # 300 stations, pages of 100
    assert "## Ratios" in report


def test_the_large_scenarios_run_and_write_their_tables(tmp_path):
    output = tmp_path / "results.md"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench.py"), "--sizes=", "--million",
         "--million-stations", "300", "--many-mandants", "--mandants", "3",
         "--mandant-stations", "40", "--simulators", "2", "--large-page-limit", "50",
         "--large-scrapes", "2", "--large-interval", "2", "--latency", "0.001",
         "--output", str(output), "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report = output.read_text()
    assert "## 1,000,000 stations" not in report  # headed by the size measured
    assert "## 300 stations" in report
    rows = [line for line in report.splitlines() if line.startswith(("| on |", "| off |"))]
    assert len(rows) == 2
    assert "| 3 | 40 | default |" in report


def test_the_pagination_bomb_runs_and_reports_the_failure(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "pagination_bomb.py"), "--seconds", "4",
         "--interval", "1s", "--stations", "20", "--every", "2", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "peak RSS (VmHWM): " in result.stdout
    assert "more than the page[limit]=100 asked for" in result.stdout
    assert "calm mandant: " in result.stdout


def test_the_firmware_cardinality_measurement_runs_and_prints_its_table(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "firmware_cardinality.py"), "--stations", "300",
         "--versions", "200", "--max-versions", "20", "--seconds", "1",
         "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| 300 |")]
    assert rows[0].startswith("| 300 | usual mix | 3 | 3 |")
    assert rows[1].startswith("| 300 | 200 | 21 | 3 |")  # 20 versions and (other)


def test_the_publish_cost_runs_and_prints_its_tables():
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "publish_cost.py"), "--stations", "300",
         "--page-limit", "50", "--levels"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| on | publish |" in result.stdout
    assert "| off | first plain scrape after it |" in result.stdout
    assert "| ISA-L level 1 |" in result.stdout


def test_the_import_time_measurement_runs_and_prints_both_figures():
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "import_time.py"), "--runs", "2",
         "--module", "exporter.cli"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(
        r"importtime cumulative of exporter\.cli, 2 runs: best [1-9]\d* µs", result.stdout
    )
    assert re.search(r'"import exporter\.cli", 2 runs: best [0-9.]+ ms', result.stdout)
