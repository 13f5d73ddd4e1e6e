"""Memory of the real exporter under a listing that never ends, at the default settings.

    .venv/bin/python bench/pagination_bomb.py                        # the issue's attack, 60 s
    .venv/bin/python bench/pagination_bomb.py --attack endless       # page[limit] kept, no end
    .venv/bin/python bench/pagination_bomb.py --attack wide          # ... of the widest text
    .venv/bin/python bench/pagination_bomb.py --attack new_fleet --stations 1000000

Starts two simulator processes, "hostile" (``--stations``) and "calm" (1,000 stations), and
the real exporter reading both with every setting at its default but the refresh interval
(``--interval``, so that the attack repeats within the run). Once both fleets are published,
the hostile simulator's fault is switched on:

- ``bomb``: the issue's attack, 10,000 rows a page (``--per-page``) whatever page[limit]
  asks, no total, never a last page (the simulator's ``endless`` fault);
- ``endless``: every page as full as page[limit] asks, no total, never a last page;
- ``wide``: as ``endless``, every station of the widest text kept (``endless_wide``);
- ``new_fleet``: every read lists as many new stations as the inventory, consistently.

Every second it reads the exporter's VmRSS and VmHWM from /proc and the mandants' state from
its landing page (not /metrics, which at a million stations is 37 MB a scrape); it prints a
line every ``--every`` seconds, then the peak RSS, the failures of the hostile mandant by
reason (from the log) with the first failure's log line, and whether the calm mandant stayed
up and was refreshed.
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import mandants_yaml  # noqa: E402

CALM_STATIONS = 1000
FAULTS = {
    "bomb": "endless",
    "endless": "endless",
    "wide": "endless_wide",
    "new_fleet": "new_fleet",
}


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def start(args: list[str], log: Path, pattern: str, timeout: float = 900) -> tuple:
    """A child process writing to ``log`` and the match of ``pattern`` in its output."""
    child = subprocess.Popen(args, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(pattern, log.read_text())
        if match:
            return child, match
        if child.poll() is not None:
            raise SystemExit(f"{args[:3]} exited:\n{log.read_text()}")
        time.sleep(0.2)
    child.kill()
    raise SystemExit(f"no {pattern!r} in {log} after {timeout}s")


def stop(child: subprocess.Popen) -> None:
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(5)


MANDANT_ROW = re.compile(
    r"<tr><td>(\w+)</td><td><span class=\"(up|down)\">\w+</span></td><td>([\w ]+)</td>"
    r"<td>([^<]*)</td>"
)


def mandants(url: str) -> dict[str, tuple[bool, str, str]]:
    """Each mandant's (up, stations, last success) as the landing page shows them."""
    page = requests.get(url + "/", timeout=30).text
    return {
        name: (up == "up", stations, last) for name, up, stations, last in MANDANT_ROW.findall(page)
    }


def failures(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if "mandant hostile failed" in line]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attack", choices=sorted(FAULTS), default="bomb")
    parser.add_argument("--per-page", type=int, default=10_000, help="rows a page of bomb")
    parser.add_argument("--stations", type=int, default=1000, help="the hostile fleet")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the attack runs")
    parser.add_argument("--interval", default="10s", help="--refresh.interval of the exporter")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between lines")
    parser.add_argument("--workdir", type=Path, help="for the logs; default a new temporary one")
    args = parser.parse_args()

    work = args.workdir or Path(tempfile.mkdtemp(prefix="pagination-bomb-"))
    simulator = [sys.executable, "-m", "exporter.simulator", "--port", "0"]
    listening = r"listening on (http://\S+)"
    hostile, found = start(
        [*simulator, "--stations", str(args.stations), "--seed", "1"],
        work / "hostile.log",
        listening,
    )
    hostile_url = found.group(1)
    calm, found = start(
        [*simulator, "--stations", str(CALM_STATIONS), "--seed", "2"], work / "calm.log", listening
    )
    calm_url = found.group(1)
    config = work / "config.yml"
    config.write_text(
        f"refresh_interval: {args.interval}\n"
        + mandants_yaml({"hostile": hostile_url, "calm": calm_url})
    )
    exporter, found = start(
        [sys.executable, "-m", "exporter", f"--config.file={config}",
         "--web.listen-address=127.0.0.1:0"],
        work / "exporter.log",
        r"listening on 127\.0\.0\.1:(\d+)",
    )  # fmt: skip
    url = f"http://127.0.0.1:{found.group(1)}"
    pid = exporter.pid
    try:
        print(
            f"exporter pid {pid}, settings at their defaults but --refresh.interval={args.interval}"
        )
        print(f"logs in {work}")
        print(f"waiting for both fleets ({args.stations:,} hostile, {CALM_STATIONS:,} calm)")
        started = time.monotonic()
        wanted = {"hostile": str(args.stations), "calm": str(CALM_STATIONS)}
        while {name: state[1] for name, state in mandants(url).items()} != wanted:
            if time.monotonic() - started > 1800:
                raise SystemExit("the fleets were not published within 30 minutes")
            time.sleep(1)
        before = status_kib(pid, "VmHWM")
        took = time.monotonic() - started
        print(f"both published after {took:.0f} s; VmHWM {before / 1024:.0f} MiB")
        fault: dict[str, object] = {"kind": FAULTS[args.attack]}
        if args.attack == "bomb":
            fault["per_page"] = args.per_page
        requests.post(hostile_url + "/_sim/faults", json=fault, timeout=10).raise_for_status()
        print(f"attack {args.attack}: fault {fault} switched on for {args.seconds:g} s\n")
        print(f"{'s':>5} {'VmRSS MiB':>10} {'VmHWM MiB':>10} {'hostile':>8} {'stations':>9} "
              f"{'failures':>30} {'calm':>5} {'calm refreshes':>15}")  # fmt: skip
        log = work / "exporter.log"
        calm_last = mandants(url)["calm"][2]
        calm_refreshes, calm_down, attack_start = 0, 0, time.monotonic()
        next_line = 0.0
        while (elapsed := time.monotonic() - attack_start) < args.seconds:
            now = mandants(url)
            calm_refreshes += now["calm"][2] != calm_last
            calm_last = now["calm"][2]
            calm_down += not now["calm"][0]
            if elapsed >= next_line:
                reasons = Counter(
                    line.partition("failed (")[2].partition(")")[0] for line in failures(log)
                )
                print(f"{elapsed:5.0f} {status_kib(pid, 'VmRSS') / 1024:10.0f} "
                      f"{status_kib(pid, 'VmHWM') / 1024:10.0f} "
                      f"{'up' if now['hostile'][0] else 'down':>8} {now['hostile'][1]:>9} "
                      f"{dict(reasons) or '-'!s:>30} "
                      f"{'up' if now['calm'][0] else 'down':>5} {calm_refreshes:15d}",
                      flush=True)  # fmt: skip
                next_line += args.every
            time.sleep(1)
        peak = status_kib(pid, "VmHWM")
        failed = failures(log)
        print(
            f"\npeak RSS (VmHWM): {peak / 1024:.0f} MiB ({before / 1024:.0f} MiB before the attack)"
        )
        print(f"hostile refreshes failed: {len(failed)}; the first:")
        print(f"  {failed[0] if failed else '(none)'}")
        calm_state = f"down in {calm_down} samples" if calm_down else "up throughout"
        print(f"calm mandant: {calm_refreshes} refreshes during the attack, {calm_state}")
    finally:
        stop(exporter)
        stop(hostile)
        stop(calm)


if __name__ == "__main__":
    main()
