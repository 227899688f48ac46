"""`launch_experiment.sh export mlflow|wandb experiments/<name> [--to PATH]`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from moelab.export import mlflow_store, wandb_offline
from moelab.export.common import MissingExtra
from moelab.results.tree import ExperimentTree

DEFAULT_TO = {"mlflow": Path("mlflow"), "wandb": Path("wandb-offline")}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="launch_experiment.sh export",
        description="Copy an experiment's finished runs into MLflow (a local SQLite store) or W&B (offline runs). "
                    "Runs already exported are skipped: export again after more jobs finished.")
    parser.add_argument("tracker", choices=sorted(DEFAULT_TO))
    parser.add_argument("experiment", type=Path, help="an experiment folder, experiments/<name>")
    parser.add_argument("--to", type=Path, help="the folder that receives the store or the offline runs "
                                                "(default: mlflow/ or wandb-offline/ here)")
    args = parser.parse_args(argv)
    tree = ExperimentTree(args.experiment)
    if not tree.jobs_dir.is_dir():
        print(f"error: {args.experiment} has no {tree.jobs_dir.name}/ folder: not an experiment folder with jobs "
              f"(export takes experiments/<name>, written by a launch)", file=sys.stderr)
        return 2
    to = args.to or DEFAULT_TO[args.tracker]
    if to.exists() and not to.is_dir():
        print(f"error: --to {to} is a file; name a folder (it is created when missing)", file=sys.stderr)
        return 2
    started, problems = time.perf_counter(), []
    try:
        if args.tracker == "mlflow":
            done = mlflow_store.export(tree, to, problems)
            where = f"{done.store} (look: mlflow ui --backend-store-uri {done.store})"
        else:
            done = wandb_offline.export(tree, to, problems)
            where = f"{done.runs} (upload: wandb sync {done.runs}/offline-run-*)"
    except MissingExtra as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    print(f"exported {done.added} run(s) of {tree.name} to {args.tracker} in {time.perf_counter() - started:.1f}s, "
          f"{done.already} already there: {where}")
    return 0
