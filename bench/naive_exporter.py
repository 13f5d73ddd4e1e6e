"""The naive baseline the benchmark compares against: how such exporters are usually written.

Sequential pages, one module-level labelled Gauge set per station, and the client library's
stock ``start_http_server`` rendering the whole registry on every scrape. Kept only for
``bench/bench.py``; never used by the exporter.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

import requests
from prometheus_client import Gauge, start_http_server

STATIONS = Gauge("naive_charging_stations", "Charging stations.")
BY_FIRMWARE = Gauge("naive_charging_stations_by_firmware", "Per firmware.", ["firmware_version"])
INFO = Gauge(
    "naive_charging_station_info",
    "One series per station.",
    ["station_id", "label", "charge_box_identity", "firmware_version", "serial_number"],
)
READY = Gauge("naive_ready", "1 after the first refresh.")


def refresh_once(api_url: str, token_url: str, client_id: str, secret: str, limit: int) -> int:
    """Read every page one after the other and set the gauges; return the pages read."""
    session = requests.Session()
    token = session.post(
        token_url, data={"grant_type": "client_credentials"}, auth=(client_id, secret), timeout=30
    ).json()["access_token"]
    offset, pages, counts = 0, 0, {}
    while True:
        page = session.get(
            api_url + "/api/cpoapi/v1/charging_stations/",
            params={"page[limit]": limit, "page[offset]": offset},
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        ).json()
        pages += 1
        rows = page["data"]
        if not rows:
            break
        for row in rows:
            attributes = row["attributes"]
            firmware = attributes.get("firmwareVersion") or "unknown"
            counts[firmware] = counts.get(firmware, 0) + 1
            INFO.labels(
                row["id"],
                attributes.get("label") or "",
                attributes.get("chargeBoxIdentity") or "",
                firmware,
                attributes.get("serialnumber") or "",
            ).set(1)
        offset += len(rows)
        if page.get("meta", {}).get("pagination", {}).get("lastPage"):
            break
    STATIONS.set(sum(counts.values()))
    for firmware, count in counts.items():
        BY_FIRMWARE.labels(firmware).set(count)
    return pages


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--api-url", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--page-limit", type=int, default=100)
    args = parser.parse_args()
    start_http_server(args.port, addr="127.0.0.1")
    refresh_once(args.api_url, args.api_url + "/oauth2/token", "demo-client", "demo-secret",
                 args.page_limit)  # fmt: skip
    READY.set(1)
    print("naive exporter ready", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
