"""TPE with a median pruner against the full grid over the same space, on digits.

    python benchmarks/search_vs_grid.py [--trials 24] [--epochs 20] [--workers 2] [--seeds 0 1 2]

Both run through launch_experiment (run_here) on the same base experiment: the grid as grid axes
(today's behaviour), the search as a `search:` section whose space is the same value lists. Reported:
the best validation objective each reached (moe_topk's best val_acc over its epochs) and the epochs
each trained in all (every line of every metrics.jsonl: pruned trials count the epochs they ran).
Goal: the search within 0.5 point of the grid's best with at most 40 % of its epochs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml

from moelab.launch import LaunchOptions, launch_experiment
from moelab.results.io import read_json, read_jsonl
from moelab.results.tree import ExperimentTree

SPACE = {
    "train.lr": [3.0e-4, 1.0e-3, 3.0e-3, 1.0e-2, 3.0e-2],
    "variants.*.hidden": [16, 32, 64],
    "variants.*.num_experts": [2, 4, 8],
}
VARIANT, METRIC = "moe_topk", "val_acc"


def base(name: str, epochs: int) -> dict:
    return {"name": name, "data": {"name": "digits"},
            "train": {"epochs": epochs, "batch_size": 64, "early_stopping": {"patience": epochs}},
            "variants": [{"name": VARIANT, "model": "moe_topk", "k": 2}]}


def run(doc: dict, folder: Path, workers: int) -> float:
    path = folder / "configs" / f"{doc['name']}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    started = time.perf_counter()
    code = launch_experiment(path, mode="run_here", options=LaunchOptions(experiments_dir=folder / "experiments",
                                                                          workers=workers, report=False))
    if code != 0:
        raise SystemExit(f"{doc['name']}: launch exited with {code}")
    return time.perf_counter() - started


def spent(tree: ExperimentTree) -> tuple[int, float, int]:
    """(epochs trained in all, the best validation objective of any job, jobs)."""
    epochs, best, jobs = 0, float("-inf"), 0
    for job in tree.jobs():
        rows = read_jsonl(job.variant(VARIANT).metrics_file)
        epochs += len(rows)
        jobs += 1
        best = max([best, *(row[METRIC] for row in rows)])
    return epochs, best, jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=24, help="trials of each search")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2, help="grid workers, and trials at once")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one search per sampler seed")
    parser.add_argument("--folder", type=Path, help="where the experiments go (default: a temporary folder)")
    args = parser.parse_args()
    folder = args.folder or Path(tempfile.mkdtemp(prefix="search_vs_grid-"))

    grid_doc = {**base("grid", args.epochs), "grid": SPACE}
    grid_seconds = run(grid_doc, folder, args.workers)
    grid_epochs, grid_best, grid_jobs = spent(ExperimentTree(folder / "experiments" / "grid"))
    rows = [("grid", f"{grid_jobs} jobs", grid_epochs, grid_best, grid_seconds, "")]
    for seed in args.seeds:
        name = f"tpe-seed{seed}"
        search = {"sampler": "tpe", "n_trials": args.trials, "parallel": args.workers, "seed": seed,
                  "objective": {"variant": VARIANT, "metric": METRIC},
                  "space": {key: {"choice": values} for key, values in SPACE.items()},
                  "pruner": {"name": "median", "warmup_epochs": 4, "startup_trials": 4}}
        seconds = run({**base(name, args.epochs), "search": search}, folder, args.workers)
        tree = ExperimentTree(folder / "experiments" / name)
        epochs, best, jobs = spent(tree)
        study = read_json(tree.study.summary)
        counts = study["counts"]
        rows.append((f"tpe + median, seed {seed}",
                     f"{args.trials} trials ({counts.get('pruned', 0)} pruned), {jobs} jobs", epochs,
                     study["best"]["value"], seconds, f"best: {study['best']['params']}"))
        assert abs(study["best"]["value"] - best) < 1e-12  # the study's best is its best job's

    print(f"\ndigits, {VARIANT}, {len(SPACE)} keys ({' x '.join(str(len(v)) for v in SPACE.values())} = {grid_jobs} "
          f"points), {args.epochs} epochs, {args.workers} workers; objective: best {METRIC}\n")
    print(f"| method | runs | epochs | % of grid epochs | best {METRIC} | below the grid's best (points) | wall s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for method, runs, epochs, best, seconds, _ in rows:
        print(f"| {method} | {runs} | {epochs} | {100 * epochs / grid_epochs:.0f} % | {best:.4f} | "
              f"{100 * (grid_best - best):+.2f} | {seconds:.0f} |")
    for method, *_, note in rows[1:]:
        print(f"{method}: {note}")
    print(f"\nexperiments in {folder}")


if __name__ == "__main__":
    main()
