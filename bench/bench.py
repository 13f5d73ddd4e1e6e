"""Benchmark: refresh and /metrics of beenergised-exporter beside a naive baseline exporter.

    make bench                                  # 1,000 / 10,000 / 100,000 stations
    .venv/bin/python bench/bench.py --sizes 1000 --scrapes 20 --output -

Runs the standalone simulator with a fixed latency per request. The refresh is measured
in-process (wall time, CPU seconds of this process, pages), after a first refresh that sets
the baseline, so it is the steady-state refresh of an unchanged fleet. /metrics is measured
against the real exporter process and the naive one (200 scrapes each, plain and gzip), and
their peak RSS is read from /proc. Writes a markdown report (default bench/results.md).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import naive_exporter  # noqa: E402

from exporter.model import Mandant, Secret  # noqa: E402
from exporter.refresh import MandantRefresher  # noqa: E402

SECRET = "demo-secret"


class Child:
    """A child process whose output goes to a file, stopped with SIGTERM."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self.popen = subprocess.Popen(
            args, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT, env=env
        )

    def wait_for(self, pattern: str, timeout: float = 600) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.log.read_text())
            if match:
                return match
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.popen.args[:3]} exited:\n{self.log.read_text()}")
            time.sleep(0.1)
        raise TimeoutError(f"no {pattern!r} in {self.log}")

    def peak_rss_mib(self) -> float:
        status = Path(f"/proc/{self.popen.pid}/status").read_text()
        return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1)) / 1024

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)


def start_simulator(stations: int, latency: float, page_limit: int, work: Path) -> Child:
    simulator = Child(
        [sys.executable, "-m", "exporter.simulator", "--port", "0", "--stations", str(stations),
         "--latency", str(latency), "--max-page-limit", str(page_limit), "--seed", "1"],
        work / f"simulator-{stations}.log",
    )  # fmt: skip
    simulator.url = simulator.wait_for(r"listening on (http://\S+)").group(1)
    return simulator


@dataclass
class Refresh:
    exporter: str
    concurrency: int
    wall: float
    cpu: float
    pages: int


def measure_refresh(url: str, stations: int, concurrency: int, page_limit: int) -> Refresh:
    mandant = Mandant(
        name="bench",
        api_url=url,
        token_url=url + "/oauth2/token",
        client_id="demo-client",
        client_secret=Secret(SECRET),
        token_auth_method="basic",
    )
    refresher = MandantRefresher(
        mandant, page_limit=page_limit, timeout=3600, concurrency=concurrency
    )
    refresher.refresh()  # the baseline (a first fleet is read twice to confirm it)
    pages_before = refresher.state.api_requests.get(("charging_stations", "200"), 0)
    wall, cpu = time.perf_counter(), time.process_time()
    refresher.refresh()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    state = refresher.state
    assert state.up and len(state.snapshot) == stations, state.last_error
    pages = state.api_requests[("charging_stations", "200")] - pages_before
    return Refresh("beenergised-exporter", concurrency, wall, cpu, pages)


def measure_naive_refresh(url: str, page_limit: int) -> Refresh:
    naive_exporter.INFO.clear()
    wall, cpu = time.perf_counter(), time.process_time()
    pages = naive_exporter.refresh_once(
        url, url + "/oauth2/token", "demo-client", SECRET, page_limit
    )
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    naive_exporter.INFO.clear()
    return Refresh("naive baseline", 1, wall, cpu, pages)


@dataclass
class Scrapes:
    exporter: str
    station_info: bool
    size: int
    gzip_size: int
    plain: list[float]
    gzipped: list[float]
    peak_rss_mib: float


def percentile(values: list[float], q: int) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else values[0]
    )


def scrape(url: str, count: int, name: str, info: bool, rss: Child) -> Scrapes:
    with requests.Session() as session:
        timings: dict[bool, list[float]] = {False: [], True: []}
        sizes = {}
        for gzipped in (False, True):
            headers = {"Accept-Encoding": "gzip" if gzipped else "identity"}
            for _ in range(count):
                started = time.perf_counter()
                response = session.get(url, headers=headers, stream=True, timeout=120)
                body = response.raw.read()
                timings[gzipped].append(time.perf_counter() - started)
                assert response.status_code == 200
                sizes[gzipped] = len(body)
    return Scrapes(name, info, sizes[False], sizes[True], timings[False], timings[True],
                   rss.peak_rss_mib())  # fmt: skip


def measure_exporter(url: str, info: bool, count: int, concurrency: int, work: Path) -> Scrapes:
    env = {**os.environ, "BEENERGISED_CLIENT_SECRET": SECRET}
    exporter = Child(
        [sys.executable, "-m", "exporter", "--api-url", url, "--token-url", url + "/oauth2/token",
         "--client-id", "demo-client", "--web.listen-address=127.0.0.1:0", "--refresh-interval=1h",
         f"--concurrency={concurrency}", *([] if info else ["--no-station-info"])],
        work / "exporter.log",
        env,
    )  # fmt: skip
    try:
        port = exporter.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1)
        exporter.wait_for(r"first refresh")
        return scrape(f"http://127.0.0.1:{port}/metrics", count, "beenergised-exporter", info,
                      exporter)  # fmt: skip
    finally:
        exporter.stop()


def measure_naive(url: str, count: int, page_limit: int, work: Path) -> Scrapes:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    naive = Child(
        [sys.executable, str(ROOT / "bench" / "naive_exporter.py"), "--api-url", url,
         "--port", str(port), "--page-limit", str(page_limit)],
        work / "naive.log",
    )  # fmt: skip
    try:
        naive.wait_for("naive exporter ready")
        return scrape(f"http://127.0.0.1:{port}/metrics", count, "naive baseline", True, naive)
    finally:
        naive.stop()


def report(args: argparse.Namespace, refreshes: dict, scrapes: dict) -> str:
    lines = [
        "## Refresh (steady state, unchanged fleet)",
        "",
        f"Simulated latency {args.latency * 1000:.0f} ms per request, page limit "
        f"{args.page_limit}. Latency limit = ceil(pages / concurrency) x latency.",
        "",
        "| stations | exporter | concurrency | pages | wall s | latency limit s | wall / limit"
        " | CPU s | stations per CPU s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size, results in refreshes.items():
        for r in results:
            limit = math.ceil(r.pages / r.concurrency) * args.latency
            lines.append(
                f"| {size:,} | {r.exporter} | {r.concurrency} | {r.pages:,} | {r.wall:.2f} | "
                f"{limit:.2f} | {r.wall / limit:.2f} | {r.cpu:.2f} | {size / r.cpu:,.0f} |"
            )
    lines += [
        "",
        f"## /metrics ({args.scrapes} scrapes each, one client after the other)",
        "",
        "| stations | exporter | station info | body KiB | gzip KiB | p50 ms | p99 ms | gzip p50 ms"
        " | gzip p99 ms | peak RSS MiB |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size, results in scrapes.items():
        for s in results:
            lines.append(
                f"| {size:,} | {s.exporter} | {'on' if s.station_info else 'off'} | "
                f"{s.size / 1024:,.0f} | {s.gzip_size / 1024:,.0f} | "
                f"{percentile(s.plain, 50) * 1000:.1f} | {percentile(s.plain, 99) * 1000:.1f} | "
                f"{percentile(s.gzipped, 50) * 1000:.1f} | "
                f"{percentile(s.gzipped, 99) * 1000:.1f} | {s.peak_rss_mib:.0f} |"
            )
    lines += ["", "## Ratios (naive baseline / beenergised-exporter, station info on)", ""]
    for size, results in scrapes.items():
        ours = next(s for s in results if s.exporter != "naive baseline" and s.station_info)
        naive = next(s for s in results if s.exporter == "naive baseline")
        speedup = percentile(naive.plain, 50) / percentile(ours.plain, 50)
        lines.append(
            f"- {size:,} stations: /metrics p50 {speedup:.0f}x faster, peak RSS "
            f"{ours.peak_rss_mib / naive.peak_rss_mib:.2f} of the baseline's"
        )
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--concurrency", default="1,4,8")
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--page-limit", type=int, default=100)
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--output", default=str(ROOT / "bench" / "results.md"))
    parser.add_argument("--workdir", default="/tmp/beenergised-bench")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    sizes = [int(size) for size in args.sizes.split(",")]
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    refreshes: dict[int, list[Refresh]] = {}
    scrapes: dict[int, list[Scrapes]] = {}
    for size in sizes:
        simulator = start_simulator(size, args.latency, args.page_limit, work)
        try:
            refreshes[size] = [
                measure_refresh(simulator.url, size, c, args.page_limit) for c in concurrencies
            ]
            refreshes[size].append(measure_naive_refresh(simulator.url, args.page_limit))
            scrapes[size] = [
                measure_exporter(simulator.url, info, args.scrapes, max(concurrencies), work)
                for info in (True, False)
            ]
            scrapes[size].append(measure_naive(simulator.url, args.scrapes, args.page_limit, work))
        finally:
            simulator.stop()
        print(f"{size:,} stations done", file=sys.stderr, flush=True)
    text = report(args, refreshes, scrapes)
    if args.output == "-":
        print(text)
    else:
        Path(args.output).write_text("# Benchmark results\n\n" + text)
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
