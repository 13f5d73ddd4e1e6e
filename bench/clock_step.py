"""The refresh gap after a step of the exporter's wall clock, and the CPU the exporter spends.

    .venv/bin/python bench/clock_step.py                       # 1 h back, corrected after 5 s
    .venv/bin/python bench/clock_step.py --step 3600 --correct-after -1 --interval 30
    .venv/bin/python bench/clock_step.py --step 0 --interval 3600 --watch 120 --mandants 10

Starts the standalone simulator and the real exporter (``--mandants`` copies of the same
mandant) under libfaketime, whose wall clock alone steps (CLOCK_MONOTONIC stays real, as in an
NTP step), right after a completed refresh. Prints when each refresh completed after the step
(seconds on the real monotonic clock), the longest gap between two refreshes in the window and
the CPU seconds the exporter used in it. ``--step 0`` measures an exporter left alone.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.helpers import (  # noqa: E402
    E2E_CLIENT,
    ExporterProcess,
    SimulatorProcess,
    SteppedClock,
    wait_until,
)

REFRESHED = re.compile(r"mandant \S+ refreshed in")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def config_file(directory: Path, simulator: SimulatorProcess, mandants: int) -> Path:
    """A config file with ``mandants`` mandants, all reading the simulator."""
    lines = ["mandants:"]
    for number in range(mandants):
        lines += [
            f"  - name: m{number}",
            f"    api_url: {simulator.url}",
            f"    token_url: {simulator.url}/oauth2/token",
            f"    client_id: {E2E_CLIENT[0]}",
            f"    client_secret: {E2E_CLIENT[1]}",
        ]
    path = directory / "config.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--step", type=float, default=-3600.0, help="seconds, <0 is back")
    parser.add_argument("--correct-after", type=float, default=5.0, help="seconds; <0: never")
    parser.add_argument("--interval", type=float, default=2.0, help="--refresh.interval, s")
    parser.add_argument("--watch", type=float, default=60.0, help="seconds after the step")
    parser.add_argument("--mandants", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        clock = SteppedClock(Path(directory))
        simulator = SimulatorProcess(
            "--stations", "10", "--client-id", E2E_CLIENT[0], "--client-secret", E2E_CLIENT[1]
        )
        exporter = ExporterProcess(
            [
                f"--refresh.interval={args.interval:g}s",
                f"--config.file={config_file(Path(directory), simulator, args.mandants)}",
            ],
            clock.environment(),
        )
        try:
            measure(args, clock, exporter)
        finally:
            exporter.stop()
            simulator.stop()


def measure(args: argparse.Namespace, clock: SteppedClock, exporter: ExporterProcess) -> None:
    def refreshes() -> int:
        return sum(1 for line in list(exporter.lines) if REFRESHED.search(line))

    wait_until(lambda: refreshes() >= args.mandants, 30.0, "the first refreshes")
    if args.step:  # step right after a refresh, the worst moment
        seen = refreshes()
        wait_until(lambda: refreshes() > seen, args.interval * 2 + 10, "a refresh")
    clock.set(args.step)
    stepped_at, cpu_before = time.monotonic(), cpu_seconds(exporter.popen.pid)
    last, corrected, times, gap = stepped_at, args.correct_after < 0, [], 0.0
    count = refreshes()
    while (now := time.monotonic()) - stepped_at < args.watch:
        if not corrected and now - stepped_at >= args.correct_after:
            clock.set(0)
            corrected = True
        if (current := refreshes()) > count:
            count = current
            times.append(now - stepped_at)
            gap, last = max(gap, now - last), now
        time.sleep(0.02)
    gap = max(gap, time.monotonic() - last)
    cpu = cpu_seconds(exporter.popen.pid) - cpu_before
    print(
        f"step {args.step:+g}s, corrected after {args.correct_after:g}s, interval "
        f"{args.interval:g}s, {args.mandants} mandant(s), watched {args.watch:g}s"
    )
    print(f"refreshes completed at (s after the step): {[round(t, 2) for t in times][:20]}")
    first = f"{times[0]:.2f}s" if times else f"none within {args.watch:g}s"
    print(f"first refresh after the step: {first}; longest gap in the window: {gap:.2f}s")
    print(f"exporter CPU in the window: {cpu:.2f}s ({100 * cpu / args.watch:.2f}% of one core)")
    print("\n".join(line for line in exporter.lines if "wall clock" in line))


if __name__ == "__main__":
    main()
