"""The cost of many firmware versions: scrapes of one exporter while its mandants refresh.

    .venv/bin/python bench/firmware_cardinality.py       # 200,000 stations, 20,000 versions
    .venv/bin/python bench/firmware_cardinality.py --stations 20000 --versions 2000 --seconds 10

Two runs, each one exporter process reading two simulator processes as two mandants: "big"
(``--stations`` stations) and "small" (100 stations). In the first run the big fleet has the
simulator's usual three firmware versions, in the second ``--versions`` distinct ones (drawn
at random, so a few fewer). Both mandants refresh every ``--refresh-interval`` seconds, so
renderings are replaced while one client scrapes /metrics as Prometheus does (OpenMetrics,
gzip), one scrape every ``--scrape-interval`` for ``--seconds``. ``--max-versions`` sets the
exporter's --firmware.max-versions. Prints a markdown table: the firmware series of each
mandant, the gzip body size and the scrape times.
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench")]

from bench import SECRET, Child, percentile, start_exporter, wait_for_fleet  # noqa: E402

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
"""What Prometheus asks for when it scrapes: OpenMetrics first."""
HEADERS = {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"}
BY_FIRMWARE = re.compile(rb'^beenergised_charging_stations_by_firmware\{[^}]*mandant="(\w+)"', re.M)


def start_simulator(stations: int, versions: int | None, name: str, work: Path) -> Child:
    simulator = Child(
        [sys.executable, "-m", "exporter.simulator", "--port", "0", "--stations", str(stations),
         "--max-page-limit", "1000", "--seed", "1",
         *([] if versions is None else ["--firmware-versions", str(versions)])],
        work / f"simulator-{name}.log",
    )  # fmt: skip
    simulator.url = simulator.wait_for(r"listening on (http://\S+)").group(1)
    return simulator


def run(args: argparse.Namespace, versions: int | None, work: Path) -> str:
    """One table row: an exporter over a big fleet with ``versions`` (None: the usual mix)."""
    sizes = {"big": args.stations, "small": 100}
    simulators = {
        name: start_simulator(size, versions if name == "big" else None, name, work)
        for name, size in sizes.items()
    }
    try:
        lines = ["page_limit: 1000"]
        if args.max_versions is not None:
            lines.append(f"firmware_max_versions: {args.max_versions}")
        lines.append("mandants:")
        for name, simulator in simulators.items():
            lines += [f"  - name: {name}", f"    api_url: {simulator.url}",
                      f"    token_url: {simulator.url}/oauth2/token",
                      "    client_id: demo-client", f"    client_secret: {SECRET}"]  # fmt: skip
        config = work / "firmware-cardinality.yml"
        config.write_text("\n".join(lines) + "\n")
        exporter, url = start_exporter(
            # after start_exporter's own --refresh.interval, so this one counts
            [f"--config.file={config}", f"--refresh.interval={args.refresh_interval}s"],
            work,
            f"exporter-{versions}",
            dict(os.environ),
        )
        try:
            wait_for_fleet(url, sizes, time.monotonic(), exporter)
            timings, body = scrape_for(url, args.seconds, args.scrape_interval)
        finally:
            exporter.stop()
    finally:
        for simulator in simulators.values():
            simulator.stop()
    series = {name: 0 for name in sizes}
    for mandant in BY_FIRMWARE.findall(gzip.decompress(body)):
        series[mandant.decode()] += 1
    return (
        f"| {args.stations:,} | {'usual mix' if versions is None else f'{versions:,}'} | "
        f"{series['big']:,} | {series['small']} | {len(body) / 1024:,.0f} | {len(timings)} | "
        f"{percentile(timings, 50) * 1000:.0f} | {percentile(timings, 95) * 1000:.0f} | "
        f"{max(timings) * 1000:.0f} |"
    )


def scrape_for(url: str, seconds: float, interval: float) -> tuple[list[float], bytes]:
    """Scrapes as Prometheus makes them, one every ``interval`` for ``seconds`` (a slow one
    delays the next): their times and the last body."""
    timings, body = [], b""
    with requests.Session() as session:
        start = time.monotonic()
        while time.monotonic() < start + seconds:
            started = time.perf_counter()
            response = session.get(url, headers=HEADERS, stream=True, timeout=120)
            body = response.raw.read()
            timings.append(time.perf_counter() - started)
            assert response.status_code == 200
            time.sleep(max(0.0, start + len(timings) * interval - time.monotonic()))
    return timings, body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stations", type=int, default=200_000)
    parser.add_argument("--versions", type=int, default=20_000)
    parser.add_argument("--refresh-interval", type=int, default=1, help="seconds")
    parser.add_argument("--seconds", type=float, default=60, help="of scraping, per run")
    parser.add_argument("--scrape-interval", type=float, default=1.0, help="seconds")
    parser.add_argument(
        "--max-versions", type=int, help="--firmware.max-versions (default: the exporter's)"
    )
    parser.add_argument("--workdir", default="/tmp/beenergised-bench")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    print(
        "| stations (big) | firmware versions | by_firmware series: big | small | gzip KiB |"
        " scrapes | gzip p50 ms | gzip p95 ms | gzip max ms |\n"
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        flush=True,
    )
    for versions in (None, args.versions):
        print(run(args, versions, work), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
