"""`list`, `cancel` and `clean`: the experiments under experiments/ with their state counts, ending
an experiment's SLURM arrays, and removing failed jobs or a whole experiment folder (never
experiments/configs/).

    launch_experiment.sh list [--experiments-dir DIR]
    launch_experiment.sh cancel experiments/<name>
    launch_experiment.sh clean experiments/<name> --failed | --all [--yes]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from moelab.config import ConfigError, load_experiment
from moelab.launch.backends import BACKENDS, backend_class
from moelab.launch.slurm import queue
from moelab.launch.slurm.backend import SlurmFiles
from moelab.launch.status import job_views, queue_views, state_counts
from moelab.results.errors import DamagedRecord
from moelab.results.status import FAILURES, JobState, read_status
from moelab.results.tree import ExperimentTree

COMMANDS = ("list", "cancel", "clean")
CONFIGS = "configs"  # experiments/configs/ holds the experiment files people write: no command deletes in it


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"launch_experiment.sh {argv[0]}")
    if argv[0] == "list":
        parser.add_argument("--experiments-dir", type=Path, default=Path("experiments"),
                            help="where experiment folders are (default: experiments)")
        args = parser.parse_args(argv[1:])
        return list_experiments(args.experiments_dir)
    parser.add_argument("experiment", type=Path, help="an experiment folder, experiments/<name>")
    if argv[0] == "cancel":
        return cancel(parser.parse_args(argv[1:]).experiment)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--failed", action="store_true", help="remove the failed jobs' folders (they run afresh next time)")
    which.add_argument("--all", action="store_true", help="remove the whole experiment folder")
    parser.add_argument("--yes", action="store_true", help="do not ask before deleting (for scripts)")
    args = parser.parse_args(argv[1:])
    return clean(args.experiment, failed_only=args.failed, assume_yes=args.yes)


def list_experiments(experiments_dir: Path) -> int:
    """One line per experiment folder: its state counts as `status` shows them."""
    if not experiments_dir.is_dir():
        print(f"error: {experiments_dir} is not a folder (--experiments-dir names where experiments are)", file=sys.stderr)
        return 2
    folders = sorted(p for p in experiments_dir.iterdir() if p.name != CONFIGS and ExperimentTree(p).experiment_file.is_file())
    if not folders:
        print(f"no experiments in {experiments_dir}")
        return 0
    width = max(len(p.name) for p in folders)
    for folder in folders:
        try:
            experiment = load_experiment(ExperimentTree(folder).experiment_file, [])
            if "search" in experiment.doc:
                print(f"{folder.name:<{width}}  search (status {folder} lists its trials)")
                continue
            counts = state_counts(experiment, ExperimentTree(folder))
        except (ConfigError, DamagedRecord) as error:
            print(f"{folder.name:<{width}}  unreadable: {str(error).splitlines()[0]}")
            continue
        print(f"{folder.name:<{width}}  " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
              + f" ({sum(counts.values())} jobs)")
    return 0


def cancel(folder: Path) -> int:
    """scancel the experiment's SLURM arrays still queued or running (as submit recorded them), and
    name the local launches this cannot stop."""
    tree = ExperimentTree(folder)
    if not folder.is_dir() or not tree.experiment_file.is_file():
        print(f"error: {folder} is not an experiment folder (cancel takes experiments/<name>, written by a launch)",
              file=sys.stderr)
        return 2
    arrays = sorted({i for ids in SlurmFiles(tree).submitted_ids().values() for i in ids})
    code = 0
    if arrays:
        try:
            records = queue.query(arrays, whole_arrays=True)
            active = sorted({i for i in arrays for task, record in records.items()
                             if (task == i or task.split("_")[0] == i)
                             and record.moelab_state in (JobState.QUEUED, JobState.RUNNING)})
            if active:
                queue.ask_slurm(["scancel", *active])  # an argument list: ids never pass through a shell
                print(f"cancelled SLURM array(s) {', '.join(active)} of {folder}")
            else:
                print(f"no SLURM array of {folder} is queued or running (submitted: {', '.join(arrays)})")
        except queue.QueueUnavailable as error:
            print(f"error: cannot cancel the SLURM arrays {', '.join(arrays)} of {folder}: {error}", file=sys.stderr)
            code = 1
    local = _local_running(tree)
    for key, where in local:
        print(f"cannot cancel job {key}: it runs in a local launch ({where}); stop that launch with Ctrl-C in its "
              f"terminal or kill -TERM its launcher process (every worker stops at a safe point)")
    if not arrays and not local:
        print(f"nothing to cancel: {folder} has no SLURM submission and no job running")
    return code


def _local_running(tree: ExperimentTree) -> list[tuple[str, str]]:
    """(job key, host and worker pid) of each job a local worker is running."""
    found = []
    for job in tree.jobs():
        try:
            status = read_status(job)
        except DamagedRecord:
            continue
        if status is not None and status.state == JobState.RUNNING and not status.slurm:
            found.append((job.key, f"host {status.host}, worker pid {status.pid}"))
    return found


def clean(folder: Path, failed_only: bool, assume_yes: bool) -> int:
    tree = ExperimentTree(folder)
    problem = _not_cleanable(folder)
    if problem:
        print(f"error: {folder} {problem}; nothing was deleted", file=sys.stderr)
        return 2
    try:
        experiment = load_experiment(tree.experiment_file, [])
    except (ConfigError, DamagedRecord) as error:
        print(f"error: {error}; nothing was deleted", file=sys.stderr)
        return 2
    _, view = queue_views(tree, [backend_class(mode) for mode in BACKENDS])
    jobs = list(job_views(experiment, tree, view))
    running = [job.key for job, current in jobs if current.state in (JobState.RUNNING, JobState.QUEUED)]
    if failed_only:
        targets = [tree.job(job.key).path for job, current in jobs
                   if current.state in FAILURES and tree.job(job.key).path.exists()]
        what = f"{len(targets)} failed job folder(s) of {folder}"
    else:
        if running:
            print(f"error: {folder} has {len(running)} queued or running job(s) ({', '.join(running[:5])}); cancel "
                  f"them first (launch_experiment.sh cancel {folder}); nothing was deleted", file=sys.stderr)
            return 2
        targets = [folder]
        what = f"the whole experiment folder {folder} ({len(jobs)} job(s), its report and records)"
    if not targets:
        print(f"nothing to delete: {folder} has no failed job")
        return 0
    if not assume_yes:
        if not sys.stdin.isatty():
            print(f"error: would delete {what}, but cannot ask (no terminal); pass --yes to delete without asking",
                  file=sys.stderr)
            return 2
        if input(f"delete {what}? [y/N] ").strip().lower() not in ("y", "yes"):
            print("nothing was deleted")
            return 1
    for target in targets:
        shutil.rmtree(target)
    print(f"deleted {what}")
    return 0


def _not_cleanable(folder: Path) -> str | None:
    """Why `folder` is not an experiment folder clean may delete in, or None."""
    if not folder.is_dir():
        return "is not a folder (clean takes experiments/<name>)"
    resolved = folder.resolve()
    if resolved.name == CONFIGS or (resolved / CONFIGS).is_dir() or any(p.name == CONFIGS for p in resolved.parents):
        return f"is or holds a {CONFIGS}/ folder of experiment files, which clean never touches"
    if not ExperimentTree(folder).experiment_file.is_file():
        return f"has no {ExperimentTree(folder).experiment_file.name} (not an experiment folder written by a launch)"
    return None
