"""How long a right, not yet cached basic-auth login waits while wrong passwords flood in.

    .venv/bin/python bench/auth_flood.py                 # cost 12, 16 flooding threads
    .venv/bin/python bench/auth_flood.py --cost 10 --threads 64

Starts the real exporter (``--demo``) with a web config of users whose bcrypt hashes have the
given cost, floods GET /metrics with wrong passwords from 127.0.0.1 in ``--threads`` threads
without pause, and meanwhile logs in once per user with the right password from 127.0.0.2
(another client), one user after the other. Prints the time of each right login.
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
from pathlib import Path

import bcrypt

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "flood-Right-1"


def login(port: int, source: str, user: str, password: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    connection.source_address = (source, 0)
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    try:
        connection.request("GET", "/metrics", headers={"Authorization": f"Basic {token}"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def wait_for_port(exporter: subprocess.Popen, log: Path) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and exporter.poll() is None:
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", log.read_text())
        if match:
            return int(match.group(1))
        time.sleep(0.1)
    raise SystemExit(f"the exporter did not start:\n{log.read_text()}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cost", type=int, default=12)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--logins", type=int, default=5)
    args = parser.parse_args()

    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=args.cost)).decode()
    users = [f"user{i}" for i in range(args.logins)]
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
        statuses: dict[int, int] = {}

        def flood() -> None:
            attempt = 0
            while not stop.is_set():
                attempt += 1
                try:
                    status = login(port, "127.0.0.1", users[0], f"wrong-{attempt}")
                except OSError:
                    status = 0
                statuses[status] = statuses.get(status, 0) + 1

        threads = [threading.Thread(target=flood, daemon=True) for _ in range(args.threads)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)  # let the flood fill whatever queue there is
        times = []
        for user in users:
            started = time.perf_counter()
            status = login(port, "127.0.0.2", user, PASSWORD)
            times.append(time.perf_counter() - started)
            assert status == 200, status
        stop.set()
        for thread in threads:
            thread.join(300)
        print(
            f"cost {args.cost}, {args.threads} flooding threads: right login in "
            f"median {statistics.median(times):.2f} s, max {max(times):.2f} s "
            f"({', '.join(f'{t:.2f}' for t in times)}); "
            f"flood answers by status {dict(sorted(statuses.items()))}"
        )
    finally:
        exporter.terminate()
        exporter.wait(10)


if __name__ == "__main__":
    main()
