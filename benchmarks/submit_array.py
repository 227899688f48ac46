"""Submitting a 1,000-job grid to SLURM: one job array through `submit` vs one sbatch per job.

    python benchmarks/submit_array.py [--jobs 1000]

Needs a cluster (e.g. sudo bash slurm/dev-cluster/start.sh). Jobs are submitted held (--hold) and
cancelled at the end, so nothing runs. Prints a table: phases of `submit` measured in-process
(expansion + validation, writing job configs, pickling + sbatch), the whole `submit` command as a
user runs it, and the same jobs sent with one sbatch call each.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def experiment_file(folder: Path, jobs: int) -> Path:
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump({
        "name": "bench", "data": {"name": "digits"}, "train": {"epochs": 1},
        "variants": [{"name": "mlp", "model": "mlp"}, {"name": "moe", "model": "moe"}],
        "grid": {"seed": list(range(jobs))},
        "slurm": {"mem_gb": 1, "cpus_per_task": 1, "additional_parameters": {"hold": True}},
    }))
    return path


def in_process(path: Path, root: Path) -> dict[str, float]:
    from moelab.config import load_experiment
    from moelab.launch.plan import make_plan, write_plan
    from moelab.launch.slurm.executor import SlurmExecutor
    from moelab.launch.slurm.resources import load_resources

    times = {}
    started = time.perf_counter()
    experiment = load_experiment(path)
    resources = load_resources(experiment.doc["slurm"])
    plan = make_plan(experiment, root)
    times["load + validate + expand + plan"] = time.perf_counter() - started
    started = time.perf_counter()
    write_plan(plan, "submit", ["bench"])
    times["write job configs + provenance"] = time.perf_counter() - started
    started = time.perf_counter()
    SlurmExecutor(resources).launch(plan)
    times["pickle + sbatch (arrays)"] = time.perf_counter() - started
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    args = parser.parse_args()
    before = set(subprocess.run(["squeue", "-h", "-o", "%F"], capture_output=True, text=True).stdout.split())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = experiment_file(folder, args.jobs)
        rows += list(in_process(path, folder / "inproc").items())

        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "moelab.launch", "submit", str(path), "--experiments-dir",
                        str(folder / "cli")], check=True, stdout=subprocess.DEVNULL)
        rows.append(("`submit` command, end to end", time.perf_counter() - started))

        script = folder / "one.sh"
        script.write_text("#!/bin/bash\ntrue\n")
        started = time.perf_counter()
        for index in range(args.jobs):
            subprocess.run(["sbatch", "--hold", "--parsable", "--mem=1G", f"--output={folder}/%j.out", str(script)],
                           check=True, capture_output=True)
        rows.append((f"{args.jobs} x sbatch, one per job", time.perf_counter() - started))
    after = set(subprocess.run(["squeue", "-h", "-o", "%F"], capture_output=True, text=True).stdout.split())
    if after - before:
        subprocess.run(["scancel", *sorted(after - before)], check=False)
    print(f"{'submitting ' + str(args.jobs) + ' jobs':<42} {'seconds':>8}")
    for name, seconds in rows:
        print(f"{name:<42} {seconds:>8.2f}")


if __name__ == "__main__":
    main()
