"""Benchmark: refresh and /metrics of beenergised-exporter beside a naive baseline exporter.

    make bench                                  # 1,000 / 10,000 / 100,000 stations
    make bench-large                            # 1,000,000 stations; 100 mandants x 10,000
    .venv/bin/python bench/bench.py --sizes 1000 --scrapes 20 --output -

Runs the standalone simulator with a fixed latency per request. The refresh is measured
in-process (wall time, CPU seconds of this process, pages), after a first refresh that sets
the baseline, so it is the steady-state refresh of an unchanged fleet. /metrics is measured
against the real exporter process and the naive one (200 scrapes each, plain and gzip), and
their peak RSS is read from /proc. Writes a markdown report (default bench/results.md): the
sections it measured replace those of the same heading, the others stay.

``--million`` measures one exporter at 1,000,000 stations (no naive baseline: it would take
minutes per scrape), ``--many-mandants`` one exporter with 100 mandants of 10,000 stations;
both read pages of ``--large-page-limit`` with concurrency ``--large-concurrency``.
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
        return proc_status(self.popen.pid, "VmHWM") / 1024

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
    peak_rss_first_mib: float | None = None  # after the scrapes of the first kind only


def percentile(values: list[float], q: int) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else values[0]
    )


def scrape(
    url: str, count: int, name: str, info: bool, rss: Child, gzip_first: bool = False
) -> Scrapes:
    """``count`` scrapes plain, then ``count`` gzipped (or gzipped first, as Prometheus scrapes
    it, then plain), one after the other; timings, sizes and peak RSS."""
    with requests.Session() as session:
        timings: dict[bool, list[float]] = {False: [], True: []}
        sizes = {}
        peaks = []
        for gzipped in (True, False) if gzip_first else (False, True):
            headers = {"Accept-Encoding": "gzip" if gzipped else "identity"}
            for _ in range(count):
                started = time.perf_counter()
                response = session.get(url, headers=headers, stream=True, timeout=120)
                body = response.raw.read()
                timings[gzipped].append(time.perf_counter() - started)
                assert response.status_code == 200
                sizes[gzipped] = len(body)
            peaks.append(rss.peak_rss_mib())
    return Scrapes(name, info, sizes[False], sizes[True], timings[False], timings[True],
                   peaks[1], peaks[0])  # fmt: skip


def measure_exporter(url: str, info: bool, count: int, concurrency: int, work: Path) -> Scrapes:
    env = {**os.environ, "BEENERGISED_CLIENT_SECRET": SECRET}
    exporter = Child(
        [sys.executable, "-m", "exporter", "--api.url", url,
         "--api.token-url", url + "/oauth2/token", "--api.client-id", "demo-client",
         "--web.listen-address=127.0.0.1:0", "--refresh.interval=1h",
         f"--api.concurrency={concurrency}", *([] if info else ["--no-collector.station-info"])],
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


FLEET_LINE = re.compile(rb"^beenergised_charging_stations\{mandant=\"([^\"]*)\"\} (\S+)$", re.M)


def proc_status(pid: int, field: str) -> int:
    """One number of /proc/<pid>/status (VmHWM in kB, Threads, ...)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+)", status, re.M).group(1))


def start_exporter(
    args: list[str], work: Path, name: str, env: dict[str, str]
) -> tuple[Child, str]:
    """An exporter process with ``args`` and ``env``, and the URL of its /metrics."""
    exporter = Child(
        [sys.executable, "-m", "exporter", "--web.listen-address=127.0.0.1:0",
         "--refresh.interval=1h", *args],
        work / f"{name}.log",
        env,
    )  # fmt: skip
    port = exporter.wait_for(r"listening on 127\.0\.0\.1:(\d+)").group(1)
    return exporter, f"http://127.0.0.1:{port}/metrics"


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_for_fleet(
    url: str, fleet: dict[str, int], started: float, child: Child, timeout: float = 1200
) -> tuple[float, int, int]:
    """Seconds from ``started`` until /metrics shows every mandant of ``fleet`` with its
    station count, and the most threads and open files the exporter had meanwhile."""
    threads = files = 0
    deadline = time.monotonic() + timeout
    with requests.Session() as session:
        while time.monotonic() < deadline:
            threads = max(threads, proc_status(child.popen.pid, "Threads"))
            files = max(files, open_files(child.popen.pid))
            # gzip, as Prometheus asks: polling plain would make the exporter keep a plain body
            body = session.get(url, headers={"Accept-Encoding": "gzip"}, timeout=120).content
            shown = {m.decode(): float(v) for m, v in FLEET_LINE.findall(body)}
            if all(shown.get(name) == count for name, count in fleet.items()):
                return time.monotonic() - started, threads, files
            time.sleep(0.2)
    raise TimeoutError(f"/metrics of {child.log} never showed the whole fleet")


@dataclass
class Large:
    scenario: str
    station_info: bool
    first_data: float
    peak_rss_mib: float
    threads_start: int  # the most seen until first data
    threads_steady: int
    scrapes: Scrapes | None = None
    peak_rss_refreshed_mib: float | None = None  # after one more refresh of the same fleet
    peak_rss_changed_mib: float | None = None  # after a refresh that found changes, and scrapes
    rss_steady_mib: float | None = None  # VmRSS once every mandant is shown
    files_start: int = 0  # the most open file descriptors seen until first data
    files_steady: int = 0


LAST_SUCCESS = re.compile(
    rb"^beenergised_last_refresh_success_timestamp_seconds\{[^}]*\} (\S+)$", re.M
)


def wait_for_refresh(url: str, child: Child, timeout: float = 1200) -> None:
    """Until /metrics (gzip, the cheap body) shows a later successful refresh than now."""
    deadline = time.monotonic() + timeout
    first = None
    with requests.Session() as session:
        while time.monotonic() < deadline:
            body = session.get(url, headers={"Accept-Encoding": "gzip"}, timeout=120).content
            shown = LAST_SUCCESS.search(body).group(1)
            if first is not None and shown != first:
                return
            first = first or shown
            time.sleep(2)
    raise TimeoutError(f"/metrics of {child.log} never showed another refresh")


FLEET_CHANGE = {"add": 200, "remove": 100, "rollout": {"to": "9.9.9", "count": 1000}}
"""What changes in the million-station fleet before the refresh that finds changes."""


def change_fleet(url: str, change: dict[str, object]) -> None:
    """Change the simulator's fleet through its control API."""
    response = requests.post(url + "/_sim/inventory", json=change, timeout=600)
    response.raise_for_status()


def fleet_size(url: str) -> int:
    """Stations the simulator lists now."""
    response = requests.get(url + "/_sim/state", timeout=600)
    response.raise_for_status()
    return int(response.json()["stations"])


def measure_million(args: argparse.Namespace, work: Path) -> tuple[Refresh, list[Large]]:
    """One mandant of ``args.million_stations``: the steady-state refresh in this process, then
    the exporter process with the info metric on and off."""
    size, limit, concurrency = args.million_stations, args.large_page_limit, args.large_concurrency
    simulator = start_simulator(size, args.latency, limit, work)
    results = []
    try:
        refresh = measure_refresh(simulator.url, size, concurrency, limit)
        for info in (True, False):
            started = time.monotonic()
            exporter, url = start_exporter(
                ["--api.url", simulator.url, "--api.token-url", simulator.url + "/oauth2/token",
                 "--api.client-id", "demo-client", f"--api.page-limit={limit}",
                 f"--api.concurrency={concurrency}", f"--refresh.interval={args.large_interval}s",
                 f"--api.max-stations={2 * size}",  # the changed fleet grows past the size
                 *([] if info else ["--no-collector.station-info"])],
                work, f"exporter-million-{'on' if info else 'off'}",
                {**os.environ, "BEENERGISED_CLIENT_SECRET": SECRET},
            )  # fmt: skip
            try:
                fleet = {"127.0.0.1": fleet_size(simulator.url)}  # changed by the run before
                first, threads, _ = wait_for_fleet(url, fleet, started, exporter)
                start_peak = exporter.peak_rss_mib()
                steady = proc_status(exporter.popen.pid, "Threads")
                scrapes = scrape(url, args.large_scrapes, "beenergised-exporter", info, exporter,
                                 gzip_first=True)  # fmt: skip
                wait_for_refresh(url, exporter)
                refreshed = exporter.peak_rss_mib()
                change_fleet(simulator.url, FLEET_CHANGE)
                wait_for_fleet(url, {"127.0.0.1": fleet_size(simulator.url)}, started, exporter)
                scrape(url, 1, "beenergised-exporter", info, exporter, gzip_first=True)
                results.append(Large("million", info, first, start_peak, threads, steady,
                                     scrapes, refreshed, exporter.peak_rss_mib()))  # fmt: skip
            finally:
                exporter.stop()
            print(f"{size:,} stations, info {info}: done", file=sys.stderr, flush=True)
    finally:
        simulator.stop()
    return refresh, results


def measure_many_mandants(args: argparse.Namespace, work: Path) -> list[Large]:
    """One exporter with ``args.mandants`` mandants of ``args.mandant_stations`` each, spread
    over ``args.simulators`` simulator processes (mandants of one simulator share its URL);
    once as it is, once with glibc's malloc held to 2 arenas (MALLOC_ARENA_MAX=2), which shows
    how much of the peak is memory freed by many threads but kept by their arenas."""
    limit, concurrency = args.large_page_limit, args.large_concurrency
    simulators = [
        start_simulator(args.mandant_stations, args.latency, limit, work)
        for _ in range(args.simulators)
    ]
    try:
        names = [f"m{index:03d}" for index in range(args.mandants)]
        lines = [f"page_limit: {limit}", f"concurrency: {concurrency}", "mandants:"]
        for index, name in enumerate(names):
            url = simulators[index % len(simulators)].url
            lines += [f"  - name: {name}", f"    api_url: {url}",
                      f"    token_url: {url}/oauth2/token", "    client_id: demo-client",
                      f"    client_secret: {SECRET}"]  # fmt: skip
        config = work / "many-mandants.yml"
        config.write_text("\n".join(lines) + "\n")
        results = []
        for arenas in (None, "2"):
            env = {**os.environ, **({"MALLOC_ARENA_MAX": arenas} if arenas else {})}
            started = time.monotonic()
            exporter, url = start_exporter(
                [f"--config.file={config}"], work, f"exporter-mandants-{arenas}", env
            )
            try:
                fleet = dict.fromkeys(names, args.mandant_stations)
                first, threads, files = wait_for_fleet(url, fleet, started, exporter)
                time.sleep(2)  # let the pools of the first refreshes wind down
                steady = proc_status(exporter.popen.pid, "Threads")
                rss = proc_status(exporter.popen.pid, "VmRSS") / 1024
                results.append(Large(f"MALLOC_ARENA_MAX={arenas}" if arenas else "default",
                                     True, first, exporter.peak_rss_mib(), threads, steady,
                                     rss_steady_mib=rss, files_start=files,
                                     files_steady=open_files(exporter.popen.pid)))  # fmt: skip
            finally:
                exporter.stop()
        return results
    finally:
        for simulator in simulators:
            simulator.stop()


def report_large(
    args: argparse.Namespace,
    million: tuple[Refresh, list[Large]] | None,
    many: list[Large] | None,
) -> dict[str, str]:
    """The sections of the large scenarios, by heading."""
    sections = {}
    setup = (
        f"page limit {args.large_page_limit}, concurrency {args.large_concurrency}, simulated "
        f"latency {args.latency * 1000:.0f} ms per request, local simulator; {os.cpu_count()} "
        "cores shared with whatever else runs on the machine. First data: from the start of "
        "the exporter process until /metrics shows every station (the first refresh reads the "
        "fleet twice to confirm it)."
    )
    if million is not None:
        refresh, rows = million
        size = args.million_stations
        lines = [
            f"{size:,} stations in one mandant; {setup} No naive baseline at this size. "
            f"/metrics: {args.large_scrapes} scrapes each, gzip (as Prometheus asks) then plain. "
            "Peak RSS (VmHWM, so each column includes the ones before it): at first data (the "
            "waits poll /metrics gzipped), after the gzip scrapes, after the plain scrapes, "
            f"after one more refresh (interval {args.large_interval} s) of the unchanged fleet, "
            f"and after a refresh that found changes ({FLEET_CHANGE['add']} added, "
            f"{FLEET_CHANGE['remove']} removed, {FLEET_CHANGE['rollout']['count']} on new "
            "firmware) and one scrape of each kind.",
            "",
            f"Refresh (steady state, unchanged fleet, in-process): {refresh.pages:,} pages, wall "
            f"{refresh.wall:.2f} s, CPU {refresh.cpu:.2f} s, "
            f"{size / refresh.cpu:,.0f} stations per CPU s.",
            "",
            "| station info | peak RSS MiB: first data | gzip scrapes | plain scrapes | refresh |"
            " changed refresh | first data s | threads | body KiB | gzip KiB | p50 ms | p99 ms |"
            " gzip p50 ms | gzip p99 ms |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            s = r.scrapes
            lines.append(
                f"| {'on' if r.station_info else 'off'} | {r.peak_rss_mib:.0f} | "
                f"{s.peak_rss_first_mib:.0f} | {s.peak_rss_mib:.0f} | "
                f"{r.peak_rss_refreshed_mib:.0f} | {r.peak_rss_changed_mib:.0f} | "
                f"{r.first_data:.1f} | {r.threads_steady} | {s.size / 1024:,.0f} | "
                f"{s.gzip_size / 1024:,.0f} | {percentile(s.plain, 50) * 1000:.1f} | "
                f"{percentile(s.plain, 99) * 1000:.1f} | "
                f"{percentile(s.gzipped, 50) * 1000:.1f} | "
                f"{percentile(s.gzipped, 99) * 1000:.1f} |"
            )
        sections[f"## {size:,} stations"] = "\n".join(lines)
    if many is not None:
        total = args.mandants * args.mandant_stations
        sections["## Many mandants"] = "\n".join([
            f"{args.mandants} mandants x {args.mandant_stations:,} stations ({total:,}) in one "
            f"exporter (station info on), against {args.simulators} simulator processes: "
            f"mandant i reads simulator i mod {args.simulators}, so mandants of one simulator "
            f"share its URL under distinct names. {setup}",
            "",
            "| mandants | stations each | malloc | peak RSS MiB | RSS at steady state MiB"
            " | first data s (all mandants) | threads until first data (max)"
            " | threads at steady state | open files until first data (max)"
            " | open files at steady state |",
            "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
            *(f"| {args.mandants} | {args.mandant_stations:,} | {m.scenario} | "
              f"{m.peak_rss_mib:.0f} | {m.rss_steady_mib:.0f} | {m.first_data:.1f} | "
              f"{m.threads_start} | {m.threads_steady} | {m.files_start} | "
              f"{m.files_steady} |" for m in many),
        ])  # fmt: skip
    return {heading: f"{heading}\n\n{text}\n" for heading, text in sections.items()}


def merge(old: str, sections: dict[str, str]) -> str:
    """``old`` (a report) with ``sections`` (by heading) replacing those of the same heading;
    new ones are appended."""
    parts = re.split(r"^(?=## )", old, flags=re.M)
    head, blocks = parts[0], {part.split("\n", 1)[0]: part for part in parts[1:]}
    blocks.update(sections)
    return head + "\n".join(block.rstrip("\n") + "\n" for block in blocks.values())


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
    parser.add_argument("--sizes", default="1000,10000,100000", help="'' for none")
    parser.add_argument("--concurrency", default="1,4,8")
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--page-limit", type=int, default=100)
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--million", action="store_true", help="measure 1,000,000 stations")
    parser.add_argument("--million-stations", type=int, default=1_000_000)
    parser.add_argument("--many-mandants", action="store_true", help="measure 100 x 10,000")
    parser.add_argument("--mandants", type=int, default=100)
    parser.add_argument("--mandant-stations", type=int, default=10_000)
    parser.add_argument("--simulators", type=int, default=4)
    parser.add_argument("--large-page-limit", type=int, default=1000)
    parser.add_argument("--large-concurrency", type=int, default=8)
    parser.add_argument("--large-scrapes", type=int, default=10)
    parser.add_argument("--large-interval", type=int, default=60, help="refresh interval, s")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results.md"))
    parser.add_argument("--workdir", default="/tmp/beenergised-bench")
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    sizes = [int(size) for size in args.sizes.split(",") if size]
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
    sections = {}
    if sizes:
        text = report(args, refreshes, scrapes)
        sections = {part.split("\n", 1)[0]: part.rstrip("\n") + "\n"
                    for part in re.split(r"^(?=## )", text, flags=re.M) if part}  # fmt: skip
    million = measure_million(args, work) if args.million else None
    many = measure_many_mandants(args, work) if args.many_mandants else None
    sections.update(report_large(args, million, many))
    text = "".join(section + "\n" for section in sections.values())
    if args.output == "-":
        print(text)
    else:
        output = Path(args.output)
        old = output.read_text() if output.exists() else "# Benchmark results\n\n"
        output.write_text(merge(old, sections))
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
