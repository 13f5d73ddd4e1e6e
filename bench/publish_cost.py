"""CPU of publishing a fleet to /metrics and of the first scrapes after it, in-process.

    .venv/bin/python bench/publish_cost.py                   # 1,000,000 stations
    .venv/bin/python bench/publish_cost.py --stations 100000 --levels

The fleet is the simulator's inventory (seed 1) read from its pages as a refresh reads them
(``decode_json``, ``parse_page``, ``Snapshot.build``), without HTTP. Then, with the info
metric on and off: publish (``Exposition.update``, as the refresh thread does it: the info
lines rendered and compressed), the first gzip scrape, a second one, the first plain scrape, a
second one; then a gzip scrape that comes as a changed fleet (the first page's stations gone)
is published, so that it does the publishing, and a plain scrape. Each step: CPU seconds of
this process, wall seconds, bytes of the body. ``--levels`` also times compressing the plain
body with zlib and ISA-L at each level, and inflating it again.
"""

from __future__ import annotations

import argparse
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from isal import isal_zlib  # noqa: E402
from profile_memory import page_bodies, read  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from exporter.exposition import Exposition  # noqa: E402
from exporter.metrics import FleetCollector  # noqa: E402
from exporter.model import MandantState, Snapshot  # noqa: E402
from exporter.simulator.inventory import Inventory  # noqa: E402


def timed(step: Callable[[], int]) -> tuple[float, float, int]:
    """CPU seconds, wall seconds and the result of ``step``."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = step()
    return time.process_time() - cpu, time.perf_counter() - wall, result


def steps(first: Snapshot, changed: Snapshot, info: bool) -> list[tuple[str, float, float, int]]:
    """The publish and scrape steps of one exposition, timed."""
    states = [MandantState(name="bench", snapshot=first, up=True)]
    exposition = Exposition(FleetCollector(station_info=info), lambda: states, CollectorRegistry())

    def body(**variant: bool) -> Callable[[], int]:
        return lambda: sum(map(len, exposition.body(**variant)))

    def publish() -> int:
        exposition.update()
        return 0

    rows = []
    for name, step in [
        ("publish", publish),
        ("first gzip scrape", body(gzipped=True)),
        ("second gzip scrape", body(gzipped=True)),
        ("first plain scrape", body()),
        ("second plain scrape", body()),
    ]:
        rows.append((name, *timed(step)))
    states = [MandantState(name="bench", snapshot=changed, up=True)]
    for name, step in [
        ("gzip scrape as a changed fleet is published (it publishes)", body(gzipped=True)),
        ("first plain scrape after it", body()),
    ]:
        rows.append((name, *timed(step)))
    return rows


def levels(text: bytes) -> list[tuple[str, float, float, float, float]]:
    """Compress ``text`` (raw deflate) with each library and level: seconds, ratio, and
    seconds to inflate it again with ISA-L and with zlib."""
    rows = []
    for name, library, level in [
        *((f"zlib level {level}", zlib, level) for level in (1, 6)),
        *((f"ISA-L level {level}", isal_zlib, level) for level in range(4)),
    ]:
        started = time.process_time()
        compressor = library.compressobj(level, zlib.DEFLATED, -15)
        packed = compressor.compress(text) + compressor.flush()
        seconds = time.process_time() - started
        inflate = []
        for inflater in (isal_zlib, zlib):
            started = time.process_time()
            assert inflater.decompress(packed, -15) == text
            inflate.append(time.process_time() - started)
        rows.append((name, seconds, len(text) / len(packed), *inflate))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stations", type=int, default=1_000_000)
    parser.add_argument("--page-limit", type=int, default=1000)
    parser.add_argument("--levels", action="store_true", help="compare compression levels")
    args = parser.parse_args()
    bodies = page_bodies(Inventory(size=args.stations, seed=1), args.page_limit)
    first = Snapshot.build(read(bodies, None), 0.0)
    changed = Snapshot.build(read(bodies[1:], first.stations), 1.0)
    del bodies
    print(f"{args.stations:,} stations in one mandant; CPU s of this process, wall s\n")
    print("| station info | step | CPU s | wall s | body MiB |\n|---|---|---:|---:|---:|")
    for info in (True, False):
        for name, cpu, wall, size in steps(first, changed, info):
            print(f"| {'on' if info else 'off'} | {name} | {cpu:.3f} | {wall:.3f} | "
                  f"{size / 2**20:,.1f} |")  # fmt: skip
    if args.levels:
        state = MandantState(name="bench", snapshot=first, up=True)
        exposition = Exposition(FleetCollector(), lambda: [state], CollectorRegistry())
        text = b"".join(exposition.body())
        print(f"\n{len(text) / 2**20:,.1f} MiB of plain text, raw deflate in one call, CPU s\n")
        print("| compressor | compress s | ratio | inflate s: ISA-L | zlib |")
        print("|---|---:|---:|---:|---:|")
        for name, seconds, ratio, isal, zlib_ in levels(text):
            print(f"| {name} | {seconds:.3f} | {ratio:.2f} | {isal:.3f} | {zlib_:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
