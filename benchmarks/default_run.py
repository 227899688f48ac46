"""Wall time of the default experiment as a user runs it: alone, next to a busy core, and relaunched.

    python benchmarks/default_run.py [EXPERIMENT_FILE] [--workers N]

Each run_here starts from scratch in a temporary experiments folder (your results are untouched).
"next to a busy core": another process spins on one core for the whole run, as a second user's job
would; the ratio to the run alone says how fairly a shared machine slows the run (goal: <= 2.5x).
The relaunch finds every job finished. Prints a table.
"""

from __future__ import annotations

import argparse
import multiprocessing
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


def spin() -> None:
    while True:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", nargs="?", default="experiments/configs/default.yaml")
    parser.add_argument("--workers", type=int)
    args = parser.parse_args()
    extra = ["--workers", str(args.workers)] if args.workers else []
    rows = []
    with tempfile.TemporaryDirectory() as root:
        alone = run(["run_here", args.experiment, "--experiments-dir", f"{root}/alone", *extra])
        rows.append(("from scratch, alone", *alone))
        rows.append(("relaunch (all jobs finished)", run(["run_here", args.experiment, "--experiments-dir",
                                                           f"{root}/alone", *extra])[0], None))
        busy = multiprocessing.get_context("spawn").Process(target=spin, daemon=True)
        busy.start()
        try:
            shared = run(["run_here", args.experiment, "--experiments-dir", f"{root}/shared", *extra])
        finally:
            busy.kill()
        rows.append(("from scratch, one other core busy", *shared))
    print(f"{'run':<36} {'wall s':>8} {'peak RSS MiB':>13}")
    for name, wall, peak in rows:
        print(f"{name:<36} {wall:>8.2f} {'' if peak is None else f'{peak:.0f}':>13}")
    print(f"busy / alone: {shared[0] / alone[0]:.2f}x; cores: {len(os.sched_getaffinity(0))}, "
          f"workers: {args.workers or 'default'}")


if __name__ == "__main__":
    main()
