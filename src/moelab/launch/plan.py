"""Decide which jobs of an experiment a launch runs, and write what they need before they start.

The experiments tree is only written here, after validation succeeded: experiment.yaml, each job's
config.json, and one line in launches.jsonl.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from moelab.config import Experiment, Job
from moelab.config.grid import key_without_epochs
from moelab.results.io import atomic_write, read_json, write_json, write_json_if_changed, write_text
from moelab.results.errors import DamagedRecord
from moelab.results.records import JobSpec, LaunchRecord, append_launch, check_launches_file, read_job_spec
from moelab.results.status import FAILURES, JobState, host, job_state, merge_states, now, read_status
from moelab.results.tree import ExperimentTree, JobTree

if TYPE_CHECKING:
    from moelab.search import StudyProgress


@dataclass
class LaunchPlan:
    experiment: Experiment
    tree: ExperimentTree
    jobs: list[Job]  # every job of the grid
    states: dict[str, JobState]  # job key -> state before this launch
    to_run: list[Job] = field(default_factory=list)
    fresh: bool = False  # --force: discard earlier outputs of the jobs that run
    attempts: dict[str, int] = field(default_factory=dict)  # job key -> attempts before this launch
    launch_id: str = ""  # set when written: names launches/<id>/ and its plan.json
    continued_from: dict[str, dict] = field(default_factory=dict)  # job key -> the shorter job it continues
    search: "SearchPlan | None" = None  # a search: workers ask the study for trials instead of planned jobs
    fuse: int = 1  # jobs differing only in their seed that a worker trains as one model (local.fuse, slurm.fuse)

    def skipped(self) -> Counter:
        running = {j.key for j in self.to_run}
        return Counter(self.states[j.key] for j in self.jobs if j.key not in running)


@dataclass
class SearchPlan:
    """A search launch: how far the study is, and how many trials run at once."""

    progress: StudyProgress
    parallel: int

    @property
    def trials_to_start(self) -> int:
        return self.progress.to_start


def make_plan(experiment: Experiment, experiments_dir: Path, force: bool = False, rerun_failed: bool = False,
              queue_states: dict[str, JobState] | None = None) -> LaunchPlan:
    """Select jobs by state: unstarted ones (whatever the queue says of a task that never took them)
    and interrupted ones always; failed ones (including cancelled,
    timed out, out of memory) with `rerun_failed`; finished ones too with `force`. Jobs that are
    running, or queued on the cluster (`queue_states`), are never started twice. A search plans no
    job: its workers ask the study for trials (launch/search_worker.py)."""
    tree = ExperimentTree(Path(experiments_dir) / experiment.name)
    check_launches_file(tree)
    if "search" in experiment.doc:
        from moelab.search import StudySession  # optuna: only for a search

        progress = StudySession(tree, experiment).progress()
        return LaunchPlan(experiment, tree, [], {}, search=SearchPlan(progress, experiment.doc["search"]["parallel"]))
    jobs = experiment.jobs()
    queue_states = queue_states or {}
    # a job's own variants: baseline.match adds dense ones to those of the experiment file
    on_disk = {job.key: job_state(tree.job(job.key), [v["name"] for v in job.config["variants"]]) for job in jobs}
    states = {job.key: merge_states(on_disk[job.key], queue_states.get(job.key)) for job in jobs}
    wanted = {JobState.PENDING, JobState.INTERRUPTED}
    if rerun_failed or force:
        wanted |= FAILURES
    if force:
        wanted.add(JobState.DONE)
    # a job whose task ended (cancelled while queued, say) before any worker took it never ran: not a failure
    never_ran = {key for key, state in states.items() if state in FAILURES and on_disk[key] is JobState.PENDING}
    to_run = [job for job in jobs if states[job.key] in wanted or job.key in never_ran]
    attempts = {job.key: (status.attempts if (status := read_status(tree.job(job.key))) else 0) for job in to_run}
    continued = {} if force else continuations(tree, to_run, states)
    return LaunchPlan(experiment, tree, jobs, states, to_run, fresh=force, attempts=attempts, continued_from=continued)


def continuations(tree: ExperimentTree, jobs: list[Job], states: dict[str, JobState]) -> dict[str, dict]:
    """For jobs about to run: a finished job of the tree whose configuration differs only in fewer
    train.epochs, to start each variant from its last checkpoint instead of from zero (the most epochs
    when there are several). Only jobs finished before this launch count, so the choice never depends
    on the order jobs run in; a job keeps the choice made when it was first launched."""
    found = {}
    for job in jobs:
        earlier = _read_spec(tree.job(job.key))
        if earlier is not None and earlier.continued_from is not None:
            found[job.key] = earlier.continued_from
    starting = [job for job in jobs if job.key not in found and states[job.key] is JobState.PENDING]
    if not starting:
        return found
    finished: dict[str, list[tuple[int, str]]] = {}
    for other in tree.jobs():
        spec = _read_spec(other)
        if spec is None or job_state(other, spec.variant_names) is not JobState.DONE:
            continue
        finished.setdefault(key_without_epochs(spec.config), []).append((spec.train["epochs"], other.key))
    for job in starting:
        shorter = [c for c in finished.get(key_without_epochs(job.config), []) if c[0] < job.config["train"]["epochs"]]
        if shorter:
            epochs, key = max(shorter)
            found[job.key] = {"job": key, "epochs": epochs}
    return found


def _read_spec(job: JobTree) -> JobSpec | None:
    """None for a job whose config.json is absent or damaged: it neither continues nor is continued from."""
    try:
        return read_job_spec(job)
    except DamagedRecord:
        return None


def write_plan(plan: LaunchPlan, mode: str, argv: list[str]) -> None:
    """experiment.yaml, the jobs' config.json, launches/<id>/ (plan.json, provenance), launches.jsonl."""
    tree = plan.tree
    write_text(tree.experiment_file, yaml.safe_dump(plan.experiment.doc, sort_keys=False))
    for job in plan.to_run:
        continued = {"continued_from": plan.continued_from[job.key]} if job.key in plan.continued_from else {}
        write_json_if_changed(tree.job(job.key).config_file, {**plan.experiment.job_spec(job), **continued})
    skipped = plan.skipped()
    time = now()
    # the time for people, a random suffix for two launches started in the same second
    plan.launch_id = f"{time.replace(':', '')}-{secrets.token_hex(2)}"
    provenance = tree.launch_folder(plan.launch_id)
    git = git_info(plan.experiment.source.parent)
    diff = git.pop("diff")
    runs = bool(plan.to_run or (plan.search and plan.search.trials_to_start))
    if plan.search and runs:
        from moelab.search import StudySession

        StudySession(tree, plan.experiment).create()
    if runs:  # a launch that runs nothing needs no plan and no environment record
        search = {"doc": plan.experiment.doc, "source": str(plan.experiment.source)} if plan.search else None
        write_json(tree.plan_file(plan.launch_id), PlanFile(plan.launch_id, plan.fresh, [
            [job.key, plan.attempts[job.key]] for job in plan.to_run], search, plan.fuse).to_dict())
        if diff:
            write_text(provenance / "git.diff", diff + "\n")
        write_text(provenance / "pip-freeze.txt", pip_freeze())
    append_launch(tree, LaunchRecord(
        time=time, mode=mode, experiment_file=str(plan.experiment.source), argv=argv, **git,
        provenance=str(provenance) if runs else None, host=host(), python=sys.executable, jobs_total=len(plan.jobs),
        jobs_run=len(plan.to_run), jobs_skipped={str(s): n for s, n in skipped.items()}, force=plan.fresh,
        launch_id=plan.launch_id, job_keys=[job.key for job in plan.jobs],
        trials_to_start=plan.search.trials_to_start if plan.search else None))


@dataclass
class TreeBefore:
    """What `write_plan` changes, as it was before: to put back when the backend starts nothing."""

    created: Path | None  # the outermost folder of the experiment's path that did not exist
    files: dict[Path, bytes | None]  # experiment.yaml, launches.jsonl, the jobs' config.json: content, None: absent
    job_folders: set[Path]  # the planned jobs' folders that existed

    @classmethod
    def of(cls, plan: LaunchPlan) -> "TreeBefore":
        tree = plan.tree
        missing = [folder for folder in [tree.path, *tree.path.parents] if not folder.exists()]
        paths = [tree.experiment_file, tree.launches_file, *(tree.job(job.key).config_file for job in plan.to_run)]
        return cls(missing[-1] if missing else None, {path: path.read_bytes() if path.is_file() else None for path in paths},
                   {tree.job(job.key).path for job in plan.to_run if tree.job(job.key).path.is_dir()})

    def restore(self, plan: LaunchPlan) -> None:
        tree = plan.tree
        if self.created is not None:
            shutil.rmtree(self.created, ignore_errors=True)
            return
        for path, content in self.files.items():
            if content is None:
                path.unlink(missing_ok=True)
            else:
                atomic_write(path, lambda f, content=content: f.write(content), mode="wb")
        for job in plan.to_run:
            folder = tree.job(job.key).path
            if folder not in self.job_folders and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        if plan.launch_id:
            shutil.rmtree(tree.launch_folder(plan.launch_id), ignore_errors=True)


@dataclass
class PlanFile:
    """launches/<id>/plan.json: the jobs a launch's workers pull, in grid order, each with the
    attempts it had when planned. A job is this launch's to run while nobody attempted it since
    (its attempts are unchanged) or while it is unfinished; `fresh`: discard earlier outputs first."""

    launch_id: str
    fresh: bool
    jobs: list[list]  # [key, attempts when planned]
    # a search: {"doc": the resolved experiment, "source": its file}; once the planned jobs are done,
    # workers ask the study for trials
    search: dict | None = None
    fuse: int = 1  # up to this many jobs differing only in their seed train as one model (train/fused.py)

    def to_dict(self) -> dict:
        data = {"launch_id": self.launch_id, "fresh": self.fresh, "jobs": self.jobs, "fuse": self.fuse}
        if self.search is not None:
            data["search"] = self.search
        return data

    @classmethod
    def read(cls, path: Path) -> "PlanFile":
        data = read_json(path)
        return cls(data["launch_id"], data["fresh"], [list(entry) for entry in data["jobs"]], data.get("search"),
                   data.get("fuse", 1))


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
