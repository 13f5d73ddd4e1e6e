"""``python -m exporter.simulator``: the simulator as a process of its own, for the tests and
the benchmarks."""

from __future__ import annotations

import argparse
import signal
import threading

from exporter.simulator.inventory import Inventory, spread_mix
from exporter.simulator.server import AUTHORIZATION_FORMS, Simulator


def main(argv: list[str] | None = None) -> int:
    """Run the simulator until SIGTERM or SIGINT; print its URL on one stdout line first."""
    parser = argparse.ArgumentParser(
        prog="python -m exporter.simulator", description="A be.ENERGISED CPO API double."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--stations", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--firmware-versions",
        type=int,
        help="draw firmware from this many distinct versions, equally likely (default: a mix "
        "of three)",
    )
    parser.add_argument("--max-page-limit", type=int, default=100)
    parser.add_argument("--default-page-limit", type=int, default=10)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per API request")
    parser.add_argument("--token-ttl", type=float, default=3600.0, help="seconds")
    parser.add_argument("--client-id", default="demo-client")
    parser.add_argument("--client-secret", default="demo-secret", help="a test double's secret")
    parser.add_argument("--quickstart-next-links", action="store_true")
    parser.add_argument("--churn-interval", type=float, default=None, help="seconds")
    parser.add_argument("--tls-cert-file", help="serve HTTPS with this PEM certificate (chain)")
    parser.add_argument("--tls-key-file", help="the PEM private key of --tls-cert-file")
    parser.add_argument(
        "--authorization",
        choices=AUTHORIZATION_FORMS,
        default="any",
        help="the Authorization header the stations endpoint demands: bearer (Bearer <token>), "
        "raw (the bare token) or any (either; default)",
    )
    args = parser.parse_args(argv)

    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    versions = args.firmware_versions
    mix = None if versions is None else spread_mix(versions)
    simulator = Simulator(
        Inventory(size=args.stations, firmware_mix=mix, seed=args.seed),
        host=args.host,
        port=args.port,
        client_id=args.client_id,
        client_secret=args.client_secret,
        token_ttl=args.token_ttl,
        max_page_limit=args.max_page_limit,
        default_page_limit=args.default_page_limit,
        latency=args.latency,
        quickstart_next_links=args.quickstart_next_links,
        churn_interval=args.churn_interval,
        tls_cert_file=args.tls_cert_file,
        tls_key_file=args.tls_key_file,
        authorization=args.authorization,
    )
    with simulator:
        print(f"simulator listening on {simulator.api_url}", flush=True)
        done.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
