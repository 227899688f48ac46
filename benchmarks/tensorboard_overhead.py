"""Training overhead of writing TensorBoard event files, on one job of the default experiment.

    python benchmarks/tensorboard_overhead.py

Trains the same job (default.yaml at seed 0 with 4 experts: its four variants, 60 epochs) twice in
fresh processes, `report.tensorboard: false` then true, one run each, and prints the training's
wall time (run_job, after imports) and the ratio. On a shared machine the ratio of two runs is
mostly the noise of the other load, so the run with event files also times the writing itself
(every call of the events callback, and its close): that share is the overhead.
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
from moelab.results import events
from moelab.train.job import run_job
spent = [0.0]
def timed(method):
    def call(*args):
        started = time.perf_counter()
        try:
            return method(*args)
        finally:
            spent[0] += time.perf_counter() - started
    return call
events.VariantEvents.__call__ = timed(events.VariantEvents.__call__)
events.VariantEvents.close = timed(events.VariantEvents.close)
experiment = load_experiment("experiments/configs/default.yaml",
                             ["grid.seed=[0]", "grid.variants.*.num_experts=[4]", f"report.tensorboard={sys.argv[2]}"])
(job,) = experiment.jobs()
folder = ExperimentTree(Path(sys.argv[1])).job(job.key)
write_json(folder.config_file, experiment.job_spec(job))
started = time.perf_counter()
assert run_job(folder.path).state == "done"
print(time.perf_counter() - started, spent[0])
"""


def train(root: Path, tensorboard: bool) -> tuple[float, float]:
    """Seconds of training, and of them writing events."""
    done = subprocess.run([sys.executable, "-c", MEASURE, str(root / str(tensorboard)), str(tensorboard).lower()],
                          capture_output=True, text=True, check=True)
    seconds, writing = done.stdout.strip().splitlines()[-1].split()
    return float(seconds), float(writing)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        off, _ = train(Path(tmp), False)
        on, writing = train(Path(tmp), True)
        events = sum(f.stat().st_size for f in Path(tmp, "True").rglob("events.out.tfevents.*"))
    print(f"{'default job (4 variants x 60 epochs)':<40} {'train s':>8}")
    print(f"{'report.tensorboard: false':<40} {off:>8.2f}")
    print(f"{'report.tensorboard: true':<40} {on:>8.2f}")
    print(f"ratio on / off: {on / off:.3f}; writing the events: {writing:.2f} s, {100 * writing / on:.1f}% of the "
          f"training with them; event files: {events / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
