"""Export to MLflow of 1,000 and 10,000 finished jobs made by copying a real finished job.

    python benchmarks/export_mlflow.py [--jobs 1000 10000] [--epochs 60]

Trains one job of the default experiment (its four variants, --epochs epochs) into a temporary
folder, copies it into a tree of --jobs jobs (each its own seed in config.json; weights, event
files and the expert analysis left out: no export reads them), then runs `launch_experiment.sh
export mlflow` on it in a fresh process, into a new SQLite store, and once more (nothing new: the idempotence check alone). Prints wall time
(imports and the store's creation included) and the export process's peak memory.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


# the command line's own entry point, then the process's peak memory
MEASURE = """
import resource, sys
from moelab.launch.cli import main
code = main(sys.argv[1:])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
sys.exit(code)
"""


def export(tree: Path, store: Path) -> tuple[float, float, str]:
    """Wall seconds, peak MiB, and what the export said."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", MEASURE, "export", "mlflow", str(tree), "--to", str(store)],
                          capture_output=True, text=True, check=True)
    *said, peak = done.stdout.strip().splitlines()
    return time.perf_counter() - started, float(peak), said[-1]


def build(source: Path, tree: Path, jobs: int) -> None:
    spec = json.loads((source / "config.json").read_text())
    for i in range(jobs):
        target = tree / "jobs" / f"{i:012x}"
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("weights", "analysis", "tensorboard", ".claim*"))
        spec["grid_values"] = {**spec["grid_values"], "seed": i}
        (target / "config.json").write_text(json.dumps(spec))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--epochs", type=int, default=60, help="epochs of the copied job (the default experiment's: 60)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        subprocess.run([sys.executable, "-m", "moelab.launch", "run_here", "experiments/configs/default.yaml",
                        "grid.seed=[0]", "grid.variants.*.num_experts=[4]", f"train.epochs={args.epochs}",
                        "report.tensorboard=false", "--experiments-dir", str(root / "source"), "--no-report",
                        "--workers", "1"], check=True, stdout=subprocess.DEVNULL)
        (source,) = (root / "source" / "default" / "jobs").iterdir()
        variants = len(json.loads((source / "config.json").read_text())["config"]["variants"])
        metrics = sum(1 for _ in (source / "mlp" / "metrics.jsonl").open())
        for jobs in args.jobs:
            tree = root / f"tree{jobs}" / "default"
            build(source, tree, jobs)
            store = root / f"store{jobs}"
            seconds, peak, said = export(tree, store)
            again, _, _ = export(tree, store)
            rows.append((jobs, jobs * variants, seconds, peak, again, said))
            shutil.rmtree(tree.parent)
            shutil.rmtree(store)
    print(f"each job: {variants} variants x {metrics} epochs")
    print(f"{'jobs':>6} {'runs':>6} {'export s':>9} {'peak MiB':>9} {'again s':>8}")
    for jobs, runs, seconds, peak, again, said in rows:
        print(f"{jobs:>6} {runs:>6} {seconds:>9.1f} {peak:>9.0f} {again:>8.1f}   ({said})")


if __name__ == "__main__":
    main()
