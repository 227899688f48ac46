"""Decide which jobs of an experiment a launch runs, and write what they need before they start.

The experiments tree is only written here, after validation succeeded: experiment.yaml, each job's
config.json, and one line in launches.jsonl.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from filelock import FileLock

from moelab.config import Experiment, Job
from moelab.results.io import append_jsonl, write_json_if_changed, write_text
from moelab.results.status import FAILURES, JobState, host, job_state, merge_states, now
from moelab.results.tree import ExperimentTree


@dataclass
class LaunchPlan:
    experiment: Experiment
    tree: ExperimentTree
    jobs: list[Job]  # every job of the grid
    states: dict[str, JobState]  # job key -> state before this launch
    to_run: list[Job] = field(default_factory=list)
    fresh: bool = False  # --force: discard earlier outputs of the jobs that run

    def skipped(self) -> Counter:
        running = {j.key for j in self.to_run}
        return Counter(self.states[j.key] for j in self.jobs if j.key not in running)


def make_plan(experiment: Experiment, experiments_dir: Path, force: bool = False, rerun_failed: bool = False,
              queue_states: dict[str, JobState] | None = None) -> LaunchPlan:
    """Select jobs by state: unstarted and interrupted ones always; failed ones (including cancelled,
    timed out, out of memory) with `rerun_failed`; finished ones too with `force`. Jobs that are
    running, or queued on the cluster (`queue_states`), are never started twice."""
    tree = ExperimentTree(Path(experiments_dir) / experiment.name)
    jobs = experiment.jobs()
    queue_states = queue_states or {}
    # a job's own variants: baseline.match adds dense ones to those of the experiment file
    states = {job.key: merge_states(job_state(tree.job(job.key), [v["name"] for v in job.config["variants"]]),
                                    queue_states.get(job.key)) for job in jobs}
    wanted = {JobState.PENDING, JobState.INTERRUPTED}
    if rerun_failed or force:
        wanted |= FAILURES
    if force:
        wanted.add(JobState.DONE)
    to_run = [job for job in jobs if states[job.key] in wanted]
    return LaunchPlan(experiment, tree, jobs, states, to_run, fresh=force)


def write_plan(plan: LaunchPlan, mode: str, argv: list[str]) -> None:
    tree = plan.tree
    write_text(tree.experiment_file, yaml.safe_dump(plan.experiment.doc, sort_keys=False))
    for job in plan.to_run:
        write_json_if_changed(tree.job(job.key).config_file, plan.experiment.job_spec(job))
    skipped = plan.skipped()
    time = now()
    provenance = tree.launch_folder(time)
    git = git_info(plan.experiment.source.parent)
    diff = git.pop("diff")
    if diff:
        write_text(provenance / "git.diff", diff + "\n")
    write_text(provenance / "pip-freeze.txt", pip_freeze())
    record = {
        "time": time, "mode": mode, "experiment_file": str(plan.experiment.source), "argv": argv,
        **git, "provenance": str(provenance), "host": host(), "python": sys.executable,
        "jobs_total": len(plan.jobs), "jobs_run": len(plan.to_run), "jobs_skipped": {str(s): n for s, n in skipped.items()},
        "force": plan.fresh,
    }
    with FileLock(tree.launches_lock):
        append_jsonl(tree.launches_file, record)


def git_info(where: Path) -> dict:
    """The commit and whether the work tree had uncommitted changes (None outside a git checkout)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=where, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    diff = git("diff", "HEAD") if status else None
    return {"git_commit": commit, "git_dirty": bool(status) if status is not None else None, "diff": diff}


def pip_freeze() -> str:
    done = subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True, timeout=120)
    return done.stdout if done.returncode == 0 else f"pip freeze failed: {done.stderr}"
