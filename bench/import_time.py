"""Import time of a module in a fresh interpreter: best and median of repeated runs.

    .venv/bin/python bench/import_time.py [--runs 15] [--module exporter.cli]

Two figures: the cumulative microseconds ``python -X importtime`` reports for the module (the
import alone), and the wall time of ``python -c "import MODULE"`` (interpreter start
included). The load average is printed beside them: the box is shared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time


def importtime_us(module: str) -> int:
    """The cumulative import time of ``module`` in microseconds, as -X importtime reports it."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    for line in result.stderr.splitlines():
        # import time: self [us] | cumulative | imported package
        fields = [field.strip() for field in line.removeprefix("import time:").split("|")]
        if len(fields) == 3 and fields[2] == module:
            return int(fields[1])
    raise RuntimeError(f"-X importtime did not report {module}")


def wall_seconds(module: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True, timeout=60)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--module", default="exporter.cli")
    args = parser.parse_args()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    cumulative = [importtime_us(args.module) for _ in range(args.runs)]
    wall = [wall_seconds(args.module) * 1000 for _ in range(args.runs)]
    print(f"load average after:  {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"-X importtime cumulative of {args.module}, {args.runs} runs: best {min(cumulative)} µs, "
        f"median {statistics.median(cumulative):.0f} µs"
    )
    print(
        f'wall time of python -c "import {args.module}", {args.runs} runs: best {min(wall):.1f} '
        f"ms, median {statistics.median(wall):.1f} ms"
    )


if __name__ == "__main__":
    main()
