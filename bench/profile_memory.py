"""Memory per station at 1,000,000 stations, by component, through the real code path.

    .venv/bin/python bench/profile_memory.py                    # 1,000,000 stations
    .venv/bin/python bench/profile_memory.py --stations 100000

Pages come from the simulator's inventory in the shape its API sends them (JSON bytes), without
HTTP; they go through ``decode_json``, ``parse_page``, ``Snapshot.build`` and the /metrics
rendering (``Exposition``), as a refresh and a scrape do. tracemalloc measures what each step
leaves allocated (bytes Python asked for, not RSS: allocator slack comes on top), and
``sys.getsizeof`` splits the fleet into Station objects, strings and containers.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from prometheus_client import CollectorRegistry  # noqa: E402

from exporter.exposition import Exposition  # noqa: E402
from exporter.metrics import FleetCollector  # noqa: E402
from exporter.model import MandantState, Snapshot, Station  # noqa: E402
from exporter.simulator.inventory import Inventory  # noqa: E402
from exporter.stations import decode_json, parse_page  # noqa: E402


def page_bodies(inventory: Inventory, limit: int) -> list[bytes]:
    """Every page of the listing as the simulator's API sends it."""
    bodies = []
    for offset in range(0, len(inventory), limit):
        rows, total = inventory.page(offset, limit)
        pagination = {"total": total, "offset": offset, "limit": limit,
                      "lastPage": offset + limit >= total}  # fmt: skip
        bodies.append(json.dumps({"data": rows, "meta": {"pagination": pagination}}).encode())
    return bodies


def allocated() -> int:
    """Bytes that Python has allocated now, after a garbage collection."""
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def read(bodies: list[bytes], known: Any) -> list[Station]:
    """One read of the listing as ``CpoClient`` does it: each page parsed, then dropped."""
    pages = [parse_page(decode_json(body), known)[0] for body in bodies]
    return [station for page in pages for station in page]


def fleet_sizes(rows: list[Station]) -> dict[str, int]:
    """Bytes of the Station objects and of their distinct strings (getsizeof)."""
    strings: dict[int, int] = {}
    for station in rows:
        for text in (station.id, station.texts, station.firmware_version):
            strings[id(text)] = sys.getsizeof(text)
    firmware = {id(station.firmware_version) for station in rows}
    return {
        "Station objects (slots, GC header)": sum(map(sys.getsizeof, rows)),
        "strings: id; label, identity and serial joined": sum(strings.values())
        - sum(strings[key] for key in firmware),
        "strings: firmware versions (interned)": sum(strings[key] for key in firmware),
    }


def render(snapshot: Snapshot, info: bool) -> tuple[int, int]:
    """Bytes that the cached rendering keeps after a gzip scrape (as Prometheus scrapes), and
    after a plain scrape too."""
    state = MandantState(name="bench", snapshot=snapshot, up=True)
    collector = FleetCollector(station_info=info)
    exposition = Exposition(collector, lambda: [state], CollectorRegistry())
    before = allocated()
    sum(map(len, exposition.body(gzipped=True)))
    gzipped = allocated() - before
    sum(map(len, exposition.body()))
    both = allocated() - before
    del exposition, collector
    return gzipped, both


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stations", type=int, default=1_000_000)
    parser.add_argument("--page-limit", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    n = args.stations
    bodies = page_bodies(Inventory(size=n, seed=1), args.page_limit)
    body_bytes = sum(map(len, bodies)) / len(bodies)

    tracemalloc.start()
    base = allocated()
    document = decode_json(bodies[0])
    page_document = allocated() - base
    del document

    base = allocated()
    rows = read(bodies, None)
    listing = allocated() - base
    split = fleet_sizes(rows)
    list_bytes = sys.getsizeof(rows) + sum(
        sys.getsizeof([None] * args.page_limit) for _ in bodies
    )  # the rows list, and the page lists that read() built (freed)

    base = allocated()
    snapshot = Snapshot.build(rows, 0.0)
    snapshot_dict = allocated() - base
    del rows

    tracemalloc.reset_peak()
    base = allocated()
    again = read(bodies, snapshot.stations)  # a confirming read, as the refresh does it
    assert snapshot.listed_by(again)
    second = allocated() - base
    second_peak = tracemalloc.get_traced_memory()[1] - base
    del again

    tracemalloc.reset_peak()
    base = allocated()
    changed = read(bodies[1:], snapshot.stations)  # the first page's stations removed
    rebuilt = Snapshot.build(changed, 2.0)
    del changed
    changed_kept = allocated() - base
    changed_peak = tracemalloc.get_traced_memory()[1] - base
    del rebuilt

    renderings = {info: render(snapshot, info) for info in (True, False)}
    held = allocated()
    tracemalloc.stop()

    in_flight = args.concurrency * (page_document + body_bytes)
    rows_out = [
        ("parsed JSON page (one, as decoded)", page_document, page_document / args.page_limit),
        (f"pages in flight ({args.concurrency} bodies + documents)", in_flight,
         in_flight / n),
        ("first listing (Stations + strings + lists)", listing, listing / n),
        *((f"  of which {name}", size, size / n) for name, size in split.items()),
        ("  of which lists of rows (page lists, freed after)", list_bytes, list_bytes / n),
        ("snapshot: id dict, counters", snapshot_dict, snapshot_dict / n),
        ("confirming read of the unchanged fleet (list of the same objects)", second,
         second / n),
        ("  its transient peak (pages decoded, lists)", second_peak, second_peak / n),
        ("read of a changed fleet: new snapshot (dict, counters)", changed_kept,
         changed_kept / n),
        ("  its transient peak (lists, data issues)", changed_peak, changed_peak / n),
        ("rendering, info on: gzip", renderings[True][0], renderings[True][0] / n),
        ("rendering, info on: after a plain scrape too", renderings[True][1],
         renderings[True][1] / n),
        ("rendering, info off: after a plain scrape too", renderings[False][1],
         renderings[False][1] / n),
        ("held after all (snapshot, its stations)", held, held / n),
    ]  # fmt: skip
    print(f"{n:,} stations, pages of {args.page_limit} ({body_bytes / 1024:,.0f} KiB of JSON "
          "each), tracemalloc (bytes allocated by Python)\n")  # fmt: skip
    print("| component | MiB | bytes per station |\n|---|---:|---:|")
    for name, size, per_station in rows_out:
        print(f"| {name} | {size / 2**20:,.1f} | {per_station:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
