"""`run/launch_experiment.sh MODE [EXPERIMENT_FILE] [key=value ...] [options]`.

    run_here   run the grid on this machine, then write the tables and plots
    submit     send the grid to SLURM as job arrays (returns right after submission)
    status     one line per job: state, variants done, restarts, node, elapsed
    list       the experiments under experiments/ with their state counts
    cancel     experiments/<name>: scancel its SLURM arrays; names the local launches to stop by hand
    clean      experiments/<name> --failed | --all [--yes]: remove failed jobs, or the whole folder
    export     mlflow|wandb experiments/<name> [--to PATH]: copy the finished runs into MLflow or W&B (offline)
    fetch      mnist|fashion_mnist|cifar10 [--root data] [--mirror URL]: download a dataset, checksums verified
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from moelab.config import ConfigError, load_experiment
from moelab.launch import commands
from moelab.launch.backends import BACKENDS
from moelab.launch.base import LaunchOptions
from moelab.launch.launcher import launch_experiment
from moelab.launch.status import print_status
from moelab.results.errors import DamagedRecord

DEFAULT_EXPERIMENT = Path("experiments/configs/default.yaml")
MODES = (*BACKENDS, "status")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="launch_experiment.sh",
        description="Expand an experiment file into jobs and run them. Finished jobs are skipped, "
                    "interrupted ones resume.",
        epilog="example: launch_experiment.sh run_here experiments/configs/default.yaml train.lr=0.01 grid.seed=[0,1]\n"
               "the dashboard and predictions: launch_experiment.sh serve [experiments/<name> ...] [--port N] "
               "[--host H] (serve --help says more)\n"
               "also: launch_experiment.sh list | cancel experiments/<name> | clean experiments/<name> --failed|--all [--yes]\n"
               "      launch_experiment.sh export mlflow|wandb experiments/<name> [--to PATH]\n"
               "      launch_experiment.sh fetch mnist|fashion_mnist|cifar10 [--root data] [--mirror URL]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("mode", choices=MODES, help="run_here: run on this machine; submit: send to SLURM; "
                                                    "status: show job states")
    parser.add_argument("args", nargs="*", metavar="[EXPERIMENT_FILE] [key=value ...]",
                        help=f"experiment file (default {DEFAULT_EXPERIMENT}) and overrides, values parsed as YAML")
    parser.add_argument("--workers", type=int,
                        help="run_here: worker processes (default: the experiment's local.workers, else "
                             "local.jobs_per_gpu per GPU, else one single-thread worker per CPU core; never more "
                             "than jobs)")
    parser.add_argument("--force", action="store_true", help="rerun every job from scratch, finished ones too")
    parser.add_argument("--rerun-failed", action="store_true", help="also rerun the jobs that failed before")
    parser.add_argument("--experiments-dir", type=Path, default=Path("experiments"),
                        help="where experiment folders are written (default: experiments)")
    parser.add_argument("--no-report", action="store_true", help="run_here: skip writing tables and plots at the end")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the jobs that would run (submit: and the packing and sbatch scripts); "
                             "start and write nothing")
    parser.add_argument("--profile", type=Path,
                        help="submit: site resource profile (default: $MOELAB_SLURM_PROFILE, else slurm/profile.yaml)")
    args = parser.parse_intermixed_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be >= 1")
    args.experiment = DEFAULT_EXPERIMENT
    args.overrides = list(args.args)
    if args.overrides and "=" not in args.overrides[0]:
        args.experiment = Path(args.overrides.pop(0))
    try:
        is_dir = args.experiment.is_dir()
    except OSError:  # e.g. a name too long for the file system: reading the file reports it
        is_dir = False
    if is_dir:  # status experiments/<name>: the experiment as last launched
        args.experiments_dir = args.experiment.parent
        args.experiment = args.experiment / "experiment.yaml"
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in commands.COMMANDS:
        return commands.main(argv)
    if argv and argv[0] == "export":  # imported when asked for: it reads results with pandas
        from moelab.export.cli import main as export

        return export(argv[1:])
    if argv and argv[0] == "fetch":
        from moelab.data.fetch import main as fetch

        return fetch(argv[1:])
    args = parse_args(argv)
    options = LaunchOptions(experiments_dir=args.experiments_dir, workers=args.workers, force=args.force,
                            rerun_failed=args.rerun_failed, dry_run=args.dry_run, profile=args.profile,
                            report=not args.no_report, argv=argv)
    try:
        if args.mode == "status":
            try:
                experiment = load_experiment(args.experiment, args.overrides)
            except ConfigError as error:
                print(error, file=sys.stderr)
                return 2
            return print_status(experiment, args.experiments_dir)
        return launch_experiment(args.experiment, args.overrides, args.mode, options)
    except DamagedRecord as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
