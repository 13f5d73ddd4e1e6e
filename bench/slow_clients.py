"""Slow clients against the real exporter: do scrapes still get through?

    .venv/bin/python bench/slow_clients.py                  # the attack of issue 19, 1 minute
    .venv/bin/python bench/slow_clients.py --root /work/main --seconds 30

Starts the exporter (``--demo``, every other setting at its default) from ``--root`` with an
open-file limit of ``--open-files`` (ulimit -n), then opens ``--clients`` connections that each
send one more byte of a request head that never ends every ``--interval`` seconds; a connection
the exporter closes is opened again at its next turn. Meanwhile it scrapes /metrics
``--scrapes`` times, evenly over ``--seconds``, each with a 10 s timeout (Prometheus' default
scrape_timeout), and prints the scrapes answered, the most threads and file descriptors the
exporter had, the CPU seconds it used and the refusals it counted.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import SlowHeads, proc_cpu_seconds, proc_threads, wait_for_port  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout to run the exporter from")
    parser.add_argument("--clients", type=int, default=400)
    parser.add_argument("--interval", type=float, default=4.0)
    parser.add_argument("--open-files", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--scrapes", type=int, default=10)
    args = parser.parse_args()

    def limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (args.open_files, args.open_files))

    log = Path(tempfile.mkdtemp(prefix="slow-clients-")) / "exporter.log"
    exporter = subprocess.Popen(
        [sys.executable, "-m", "exporter", "--demo", "--web.listen-address=127.0.0.1:0"],
        cwd=args.root, stdout=log.open("w"), stderr=subprocess.STDOUT, preexec_fn=limit,
    )  # fmt: skip
    try:
        port = wait_for_port(exporter, log)
        url = f"http://127.0.0.1:{port}/metrics"
        pid = exporter.pid
        requests.get(url, timeout=10).raise_for_status()
        threads_before = proc_threads(pid)
        with SlowHeads(port, args.clients, args.interval) as crowd:
            while crowd.opened < args.clients:
                time.sleep(0.1)
            cpu_before, start = proc_cpu_seconds(pid), time.monotonic()
            answered, threads, fds, times = 0, [threads_before], [], []
            every = args.seconds / args.scrapes
            for n in range(args.scrapes):
                time.sleep(max(0.0, start + n * every - time.monotonic()))
                began = time.monotonic()
                try:
                    answered += requests.get(url, timeout=10).status_code == 200
                    times.append(time.monotonic() - began)
                except requests.RequestException as e:
                    print(f"  scrape {n + 1}: {type(e).__name__}")
                threads.append(proc_threads(pid))
                fds.append(len(os.listdir(f"/proc/{pid}/fd")))
            time.sleep(max(0.0, start + args.seconds - time.monotonic()))
            cpu = proc_cpu_seconds(pid) - cpu_before
            window = time.monotonic() - start
            print(f"{args.clients} slow clients, a byte every {args.interval:g} s, ulimit -n "
                  f"{args.open_files}, {window:.0f} s, exporter from {args.root}")  # fmt: skip
            print(f"scrapes answered: {answered} of {args.scrapes}", end="")
            print(f" (slowest {max(times):.3f} s)" if times else "")
            print(f"threads: {threads_before} before, at most {max(threads)} during the attack")
            print(f"file descriptors: at most {max(fds)} of {args.open_files}")
            print(f"CPU: {cpu:.2f} s in {window:.0f} s ({100 * cpu / window:.0f}% of one core)")
            print(f"slow clients: {crowd.opened} connections opened, {crowd.sent} bytes sent")
        threading.Event().wait(0.5)  # let the exporter notice the crowd is gone
        try:
            text = requests.get(url, timeout=10).text
            refused = re.findall(r'^beenergised_web_requests_refused_total\{reason="(\w+)"\} (\S+)',
                                 text, re.MULTILINE)  # fmt: skip
            print("refused: " + ", ".join(f"{r}={float(v):.0f}" for r, v in refused if float(v)))
        except requests.RequestException as e:
            print(f"refused: no scrape after the attack ({type(e).__name__})")
        warnings = [line for line in log.read_text().splitlines() if "level=warn" in line]
        print(f"log: {len(log.read_text().splitlines())} lines, {len(warnings)} warnings")
    finally:
        exporter.terminate()
        exporter.wait(10)


if __name__ == "__main__":
    main()
