"""Training overhead of writing TensorBoard event files, on one job of the default experiment.

    python benchmarks/tensorboard_overhead.py

Trains the same job (default.yaml at seed 0 with 4 experts: its four variants, 60 epochs) twice in
fresh processes, `report.tensorboard: false` then true, one run each, and prints the training's
wall time (run_job, after imports) and the ratio.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

MEASURE = """
import sys, time
from pathlib import Path
from moelab.config import load_experiment
from moelab.results.io import write_json
from moelab.results.tree import ExperimentTree
from moelab.train.job import run_job
experiment = load_experiment("experiments/configs/default.yaml",
                             ["grid.seed=[0]", "grid.variants.*.num_experts=[4]", f"report.tensorboard={sys.argv[2]}"])
(job,) = experiment.jobs()
folder = ExperimentTree(Path(sys.argv[1])).job(job.key)
write_json(folder.config_file, experiment.job_spec(job))
started = time.perf_counter()
assert run_job(folder.path).state == "done"
print(time.perf_counter() - started)
"""


def train(root: Path, tensorboard: bool) -> float:
    done = subprocess.run([sys.executable, "-c", MEASURE, str(root / str(tensorboard)), str(tensorboard).lower()],
                          capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        off = train(Path(tmp), False)
        on = train(Path(tmp), True)
        events = sum(f.stat().st_size for f in Path(tmp, "True").rglob("events.out.tfevents.*"))
    print(f"{'default job (4 variants x 60 epochs)':<40} {'train s':>8}")
    print(f"{'report.tensorboard: false':<40} {off:>8.2f}")
    print(f"{'report.tensorboard: true':<40} {on:>8.2f}")
    print(f"ratio on / off: {on / off:.3f}; event files: {events / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
