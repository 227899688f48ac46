"""Submitting a large grid to SLURM with packing: array tasks created and seconds end to end.

    python benchmarks/submit_array.py [--jobs 10000]

Needs a cluster (e.g. sudo bash slurm/dev-cluster/start.sh). Tasks are submitted held (--hold) and
cancelled at the end, so nothing runs. Prints a table: the `submit` command as a user runs it
(validation, expansion, plan, pip freeze, sbatch), the array tasks it created (from squeue), and
the same through `launch_experiment` in this process (no Python start-up).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from moelab.launch import LaunchOptions, launch_experiment


def experiment_file(folder: Path, jobs: int) -> Path:
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump({
        "name": "bench", "data": {"name": "digits"}, "train": {"epochs": 1},
        "variants": [{"name": "mlp", "model": "mlp"}, {"name": "moe", "model": "moe"}],
        "grid": {"seed": list(range(jobs))},
        "slurm": {"mem_gb": 1, "cpus_per_task": 1, "additional_parameters": {"hold": True}},
    }))
    return path


def queued() -> set[str]:
    return set(subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True).stdout.split())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=10000)
    args = parser.parse_args()
    before = queued()
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            path = experiment_file(folder, args.jobs)
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "moelab.launch", "submit", str(path), "--experiments-dir",
                                   str(folder / "cli")], check=True, capture_output=True, text=True)
            rows.append(("`submit` command, end to end", f"{time.perf_counter() - started:.2f}"))
            tasks = queued() - before
            rows.append(("array tasks queued", str(len(tasks))))
            rows.append(("packing", next(line for line in done.stdout.splitlines() if line.startswith("packing"))))

            started = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                code = launch_experiment(path, mode="submit", options=LaunchOptions(experiments_dir=folder / "api"))
            assert code == 0
            rows.append(("launch_experiment in-process", f"{time.perf_counter() - started:.2f}"))
    finally:
        new = queued() - before
        if new:
            subprocess.run(["scancel", *sorted({t.split("_")[0] for t in new})], check=False)
    print(f"{'submitting ' + str(args.jobs) + ' jobs':<36} value")
    for name, value in rows:
        print(f"{name:<36} {value}")


if __name__ == "__main__":
    main()
