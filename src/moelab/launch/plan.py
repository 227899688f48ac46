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
from moelab.results.io import append_jsonl, read_json, write_json, write_text
from moelab.results.status import DONE, FAILED, INTERRUPTED, PENDING, host, job_state, now
from moelab.results.tree import ExperimentTree


@dataclass
class LaunchPlan:
    experiment: Experiment
    tree: ExperimentTree
    jobs: list[Job]  # every job of the grid
    states: dict[str, str]  # job key -> state before this launch
    to_run: list[Job] = field(default_factory=list)
    fresh: bool = False  # --force: discard earlier outputs of the jobs that run

    def skipped(self) -> Counter:
        running = {j.key for j in self.to_run}
        return Counter(self.states[j.key] for j in self.jobs if j.key not in running)


def make_plan(experiment: Experiment, experiments_dir: Path, force: bool = False, rerun_failed: bool = False,
              queue_states: dict[str, str] | None = None) -> LaunchPlan:
    """Select jobs by state: unstarted and interrupted ones always; failed ones (including cancelled,
    timed out, out of memory) with `rerun_failed`; finished ones too with `force`. Jobs that are
    running, or queued on the cluster (`queue_states`), are never started twice."""
    tree = ExperimentTree(Path(experiments_dir) / experiment.name)
    jobs = experiment.jobs()
    names = [v["name"] for v in experiment.doc["variants"]]
    queue_states = queue_states or {}
    states = {job.key: merge_states(job_state(tree.job(job.key), names), queue_states.get(job.key)) for job in jobs}
    wanted = {PENDING, INTERRUPTED}
    if rerun_failed or force:
        wanted |= FAILURES
    if force:
        wanted.add(DONE)
    to_run = [job for job in jobs if states[job.key] in wanted]
    return LaunchPlan(experiment, tree, jobs, states, to_run, fresh=force)


# what --rerun-failed reruns: failures recorded on disk, and the ways SLURM ends a job early
FAILURES = {FAILED, "cancelled", "timeout", "out_of_memory", "node_fail"}


def merge_states(disk: str, queue: str | None) -> str:
    """The disk is trusted for finished work (SLURM's accounting can lag behind results files);
    SLURM for what the disk cannot know: queued, cancelled, timed out, out of memory, node failure."""
    if disk in (DONE, FAILED) or queue is None:
        return disk
    return queue


def write_plan(plan: LaunchPlan, mode: str, argv: list[str]) -> None:
    tree = plan.tree
    write_text(tree.experiment_file, yaml.safe_dump(plan.experiment.doc, sort_keys=False))
    for job in plan.to_run:
        spec = job_spec(plan.experiment, job)
        job_tree = tree.job(job.key)
        if not job_tree.config_file.is_file() or read_json(job_tree.config_file) != spec:
            write_json(job_tree.config_file, spec)
    skipped = plan.skipped()
    time = now()
    provenance = tree.path / "launches" / time.replace(":", "")
    git = git_info(plan.experiment.source.parent)
    diff = git.pop("diff")
    if diff:
        write_text(provenance / "git.diff", diff + "\n")
    write_text(provenance / "pip-freeze.txt", pip_freeze())
    record = {
        "time": time, "mode": mode, "experiment_file": str(plan.experiment.source), "argv": argv,
        **git, "provenance": str(provenance), "host": host(), "python": sys.executable,
        "jobs_total": len(plan.jobs), "jobs_run": len(plan.to_run), "jobs_skipped": dict(skipped),
        "force": plan.fresh,
    }
    with FileLock(tree.path / ".launches.lock"):
        append_jsonl(tree.launches_file, record)


def job_spec(experiment: Experiment, job: Job) -> dict:
    """config.json: what the job computes (`config`, hashed into its key) and how it reports (`report`)."""
    return {"key": job.key, "experiment": experiment.name, "grid_values": job.grid_values, "config": job.config,
            "report": experiment.doc["report"]}


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
