"""How a right, not yet cached basic-auth login fares while wrong passwords flood in.

    .venv/bin/python bench/auth_flood.py                        # cost 12, 40 addresses
    .venv/bin/python bench/auth_flood.py --cost 10 --addresses 1 --threads 64

Starts the real exporter (``--demo``) with a web config of users whose bcrypt hashes have the
given cost, and floods GET /metrics with wrong passwords (for those users' names and for
unknown ones) from ``--addresses`` loopback addresses (127.0.0.2 on) in ``--threads`` threads
without pause. Once every flooding address has been answered 401, so each has had a wrong
password checked (or at once, with ``--at-once``), a right user scrapes ``--logins`` times
from 127.0.0.1, each time as another user, so no login is cached. Prints how many got through
within the scrape timeout, the time of each, and the exporter's count of refused requests.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import bcrypt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import wait_for_port  # noqa: E402

PASSWORD = "flood-Right-1"
REFUSED = re.compile(rb'^beenergised_web_requests_refused_total\{reason="(\w+)"\} (\S+)', re.M)


def login(port: int, source: str, user: str, password: str, timeout: float) -> tuple[int, bytes]:
    """Status and body of GET /metrics as ``user`` from ``source``; status 0 for no answer."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    connection.source_address = (source, 0)
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    try:
        connection.request("GET", "/metrics", headers={"Authorization": f"Basic {token}"})
        response = connection.getresponse()
        return response.status, response.read()
    except OSError:
        return 0, b""
    finally:
        connection.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cost", type=int, default=12)
    parser.add_argument("--addresses", type=int, default=40, help="flooding addresses")
    parser.add_argument("--threads", type=int, help="flooding threads (default: one an address)")
    parser.add_argument("--logins", type=int, default=20, help="right logins, each uncached")
    parser.add_argument("--timeout", type=float, default=10.0, help="the scrape timeout")
    parser.add_argument(
        "--at-once", action="store_true", help="log in at once, not after every address got 401"
    )
    args = parser.parse_args()
    sources = [f"127.0.0.{2 + n}" for n in range(args.addresses)]
    threads_count = args.threads or args.addresses

    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=args.cost)).decode()
    users = [f"user{i}" for i in range(args.logins + 1)]  # the last reads the counters
    work = Path(tempfile.mkdtemp(prefix="auth-flood-"))
    (work / "web.yml").write_text(
        "basic_auth_users:\n" + "".join(f"  {user}: {hashed}\n" for user in users)
    )
    log = work / "exporter.log"
    exporter = subprocess.Popen(
        [sys.executable, "-m", "exporter", "--demo", "--web.listen-address=127.0.0.1:0",
         f"--web.config.file={work / 'web.yml'}"],
        cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        port = wait_for_port(exporter, log)
        stop = threading.Event()
        statuses = Counter[int]()
        checked: set[str] = set()  # flooding addresses answered 401 at least once
        lock = threading.Lock()

        def flood(source: str) -> None:
            attempt = 0
            while not stop.is_set():
                attempt += 1
                user = users[attempt % args.logins] if attempt % 2 else f"nobody{attempt}"
                status, _ = login(port, source, user, f"wrong-{attempt}", 300)
                with lock:
                    statuses[status] += 1
                    if status == 401:
                        checked.add(source)

        threads = [
            threading.Thread(target=flood, args=(sources[n % len(sources)],), daemon=True)
            for n in range(threads_count)
        ]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        while (
            not args.at_once and len(checked) < len(sources) and time.perf_counter() - started < 300
        ):
            time.sleep(0.1)
        warm = time.perf_counter() - started
        times, answers = [], Counter[int]()
        for user in users[:-1]:
            sent = time.perf_counter()
            status, _ = login(port, "127.0.0.1", user, PASSWORD, args.timeout)
            times.append(time.perf_counter() - sent)
            answers[status] += 1
        stop.set()
        for thread in threads:
            thread.join(300)
        status, body = login(port, "127.0.0.1", users[-1], PASSWORD, 300)
        refused = REFUSED.findall(body)
        print(
            f"cost {args.cost}, {args.addresses} flooding addresses, {threads_count} threads; "
            f"right logins from {warm:.1f} s of flood on\n"
            f"right user, {args.logins} logins never cached: {answers[200]} of {args.logins} "
            f"got through ({dict(sorted(answers.items()))}), in median "
            f"{statistics.median(times):.2f} s, max {max(times):.2f} s\n"
            f"flood answers by status {dict(sorted(statuses.items()))}\n"
            f"refused by reason (status {status}): "
            + ", ".join(f"{r.decode()} {float(v):.0f}" for r, v in refused)
        )
    finally:
        exporter.terminate()
        exporter.wait(10)


if __name__ == "__main__":
    main()
