"""`run/train_models.py`: run one job by hand or from a plain sbatch script, given its folder or an
experiment file and a grid index."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from moelab.config import ConfigError, load_experiment
from moelab.launch.slurm.job import slurm_info
from moelab.results.io import write_json_if_changed
from moelab.results.status import JobState
from moelab.results.tree import ExperimentTree, JobTree
from moelab.train.process import prepare_process
from moelab.train.stop import INTERRUPTED_EXIT_CODE, stop_on_signals, stop_requested


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="train_models.py", description=__doc__)
    parser.add_argument("target", type=Path, help="a job folder (holds config.json), or an experiment file with --index")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, with an experiment file")
    parser.add_argument("--index", type=int, help="which job of the experiment's grid (0-based, in grid order)")
    parser.add_argument("--experiments-dir", type=Path, default=Path("experiments"))
    parser.add_argument("--force", action="store_true", help="discard the job's earlier outputs first")
    args = parser.parse_intermixed_args(argv)

    if args.index is None:
        if args.overrides or not JobTree(args.target).config_file.is_file():
            parser.error(f"{args.target} is not a job folder (no config.json); for an experiment file add --index N")
        job_dir = args.target
    else:
        try:
            job_dir = _prepare_job(args.target, args.overrides, args.index, args.experiments_dir)
        except ConfigError as error:
            print(error, file=sys.stderr)
            return 2
        except IndexError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2

    stop_on_signals()  # Ctrl-C, SIGTERM (scancel, a time limit), SIGHUP: stop at the next safe point
    prepare_process()
    from moelab.train.job import run_job  # imports torch: after prepare_process
    from moelab.train.trainer import StopRequested

    runtime = {"slurm": slurm_info()} if os.environ.get("SLURM_JOB_ID") else {}
    try:
        outcome = run_job(job_dir, fresh=args.force, stop_requested=stop_requested, runtime_info=runtime)
    except StopRequested:
        print(f"{JobTree(job_dir).key}: interrupted; run the same command again to resume from the checkpoints")
        return INTERRUPTED_EXIT_CODE
    print(f"{outcome.key}: {outcome.state} in {outcome.seconds:.1f}s")
    for name, error in outcome.errors.items():
        print(f"  {name}: {error}")
    return 0 if outcome.state == JobState.DONE else 1


def _prepare_job(experiment_file: Path, overrides: list[str], index: int, experiments_dir: Path) -> Path:
    """Write the job's config.json (as a launch would) and return its folder."""
    experiment = load_experiment(experiment_file, overrides)
    jobs = experiment.jobs()
    if not 0 <= index < len(jobs):
        raise IndexError(f"--index {index} is outside the grid of {experiment_file}: it has {len(jobs)} jobs (0-{len(jobs) - 1})")
    job = jobs[index]
    tree = ExperimentTree(experiments_dir / experiment.name).job(job.key)
    write_json_if_changed(tree.config_file, experiment.job_spec(job))
    return tree.path
