"""`run/launch_experiment.sh MODE [EXPERIMENT_FILE] [key=value ...] [options]`.

    run_here   run the grid on this machine, then write the tables and plots
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from moelab.config import ConfigError, load_experiment

DEFAULT_EXPERIMENT = Path("experiments/configs/default.yaml")
MODES = ("run_here",)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="launch_experiment.sh",
        description="Expand an experiment file into jobs and run them. Finished jobs are skipped, "
                    "interrupted ones resume.",
        epilog="example: launch_experiment.sh run_here experiments/configs/default.yaml train.lr=0.01 grid.seed=[0,1]",
    )
    parser.add_argument("mode", choices=MODES, help="run_here: run on this machine")
    parser.add_argument("args", nargs="*", metavar="[EXPERIMENT_FILE] [key=value ...]",
                        help=f"experiment file (default {DEFAULT_EXPERIMENT}) and overrides, values parsed as YAML")
    parser.add_argument("--workers", type=int, help="worker processes (default: one per GPU, else one)")
    parser.add_argument("--force", action="store_true", help="rerun every job from scratch, finished ones too")
    parser.add_argument("--rerun-failed", action="store_true", help="also rerun the jobs that failed before")
    parser.add_argument("--experiments-dir", type=Path, default=Path("experiments"),
                        help="where experiment folders are written (default: experiments)")
    parser.add_argument("--no-report", action="store_true", help="skip writing tables and plots at the end")
    args = parser.parse_intermixed_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be >= 1")
    args.experiment = DEFAULT_EXPERIMENT
    args.overrides = list(args.args)
    if args.overrides and "=" not in args.overrides[0]:
        args.experiment = Path(args.overrides.pop(0))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        experiment = load_experiment(args.experiment, args.overrides)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    from moelab.launch import LocalExecutor, make_plan, write_plan

    workers = args.workers or experiment.doc["local"]["workers"]
    plan = make_plan(experiment, args.experiments_dir, force=args.force, rerun_failed=args.rerun_failed)
    print(f"experiment {experiment.name}: {len(plan.jobs)} job(s) x {len(experiment.doc['variants'])} variant(s), "
          f"{len(plan.to_run)} to run -> {plan.tree.path}")
    write_plan(plan, args.mode, [args.mode, *(sys.argv[2:] if argv is None else argv[1:])])
    code = LocalExecutor(workers).launch(plan)
    if code != 130 and not args.no_report:
        from moelab.report import write_report

        write_report([plan.tree.path])
    return code


if __name__ == "__main__":
    sys.exit(main())
