"""Wall time and peak memory of the default experiment, run as a user runs it.

    python benchmarks/default_run.py [EXPERIMENT_FILE] [--workers N]

Runs run_here from scratch into a temporary experiments folder (so your results are untouched),
then once more to time the relaunch that skips every finished job. Prints a table.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time


def run(args: list[str]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "moelab.launch", *args], check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    # ru_maxrss of waited-for descendants (the launcher and its workers): the largest one, in KiB
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, max(peak, before) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", nargs="?", default="experiments/configs/default.yaml")
    parser.add_argument("--workers", type=int)
    args = parser.parse_args()
    extra = ["--workers", str(args.workers)] if args.workers else []
    with tempfile.TemporaryDirectory() as root:
        first = run(["run_here", args.experiment, "--experiments-dir", root, *extra])
        again = run(["run_here", args.experiment, "--experiments-dir", root, *extra])
    print(f"{'run':<34} {'wall s':>8} {'peak RSS MiB':>13}")
    print(f"{'from scratch (train + tables)':<34} {first[0]:>8.1f} {first[1]:>13.0f}")
    print(f"{'relaunch (all jobs skipped)':<34} {again[0]:>8.1f} {'':>13}")
    print(f"cores: {len(os.sched_getaffinity(0))}, workers: {args.workers or 'default'}")


if __name__ == "__main__":
    main()
