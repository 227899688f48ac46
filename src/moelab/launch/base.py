"""The seam every backend implements, and the options a launch is given.

A backend is one folder under launch/ and one row in `backends.BACKENDS`. It owns everything that
differs between ways of executing: what must hold before a launch (sbatch on PATH), what its queue
says about jobs the disk cannot know about yet, where a failed job's details are, how the plan's jobs
are run or sent, and what happens at the end (the report after run_here).
"""

from __future__ import annotations

import shlex
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from moelab.config import Experiment
from moelab.launch.plan import LaunchPlan
from moelab.results.status import JobState
from moelab.results.tree import ExperimentTree


@dataclass
class LaunchOptions:
    experiments_dir: Path = Path("experiments")
    workers: int | None = None  # run_here: worker processes (None: from the experiment's local section)
    force: bool = False  # rerun every job from scratch, finished ones too
    rerun_failed: bool = False
    dry_run: bool = False  # print what would run (submit: and be sent); run, send and write nothing
    profile: Path | None = None  # submit: site resource profile
    report: bool = True  # run_here: write tables and plots at the end
    argv: list[str] = field(default_factory=list)  # the command line, for provenance


@dataclass
class QueueView:
    """What a backend's queue knows about an experiment's jobs."""

    states: dict[str, JobState] = field(default_factory=dict)  # job key -> state in the queue
    notes: dict[str, str] = field(default_factory=dict)  # job key -> the queue's words on a failure
    nodes: dict[str, str] = field(default_factory=dict)  # job key -> where it runs or ran
    elapsed_s: dict[str, int] = field(default_factory=dict)
    problem: str | None = None  # why the queue could not be asked


class LaunchFailed(RuntimeError):
    """The backend could not start the plan (e.g. sbatch refused it) and started nothing: the launch
    is rolled back and the message shown alone (exit 2)."""


class Backend(ABC):
    mode: str  # the command-line mode, recorded in launches.jsonl
    verb: str  # what it does to jobs, for messages: "run", "submit"
    section: str  # the experiment's section of its resources: "local", "slurm"

    def __init__(self, experiment: Experiment, options: LaunchOptions):
        """Raises ConfigError for bad backend settings (e.g. a site profile): exit 2, nothing written."""
        self.experiment, self.options = experiment, options

    @property
    def fuse(self) -> int:
        """Jobs differing only in their seed that a worker trains as one model (the backend's `fuse`)."""
        return self.experiment.doc[self.section]["fuse"]

    def preflight(self, tree: ExperimentTree) -> str | None:
        """Why this launch cannot start (checked before anything is written), or None."""
        return None

    @classmethod
    def queue_view(cls, tree: ExperimentTree) -> QueueView:
        """The queue's view of the experiment's jobs (empty for backends without a queue)."""
        return QueueView()

    @classmethod
    def failure_details(cls, tree: ExperimentTree, key: str) -> list[str]:
        """Where to read more about a failed job (log paths), beyond its status.json."""
        return []

    @abstractmethod
    def launch(self, plan: LaunchPlan) -> int:
        """Run or send `plan.to_run`, say what happened, and return the process exit code; raises
        LaunchFailed when nothing could be started."""

    def dry_run(self, plan: LaunchPlan) -> int:
        """--dry-run: the jobs this launch would run, without running or writing anything (backends
        add what they would send)."""
        trials = plan.search.trials_to_start if plan.search else 0
        print("dry run: nothing is started or written\n")
        if plan.search:
            print(f"{trials} trial(s) to {self.verb}, asked of the study as workers are free")
            return 0
        print(f"{'job':<14} grid values")
        for job in plan.to_run:
            print(f"{job.key:<14} " + " ".join(f"{k}={v}" for k, v in job.grid_values.items()))
        return 0

    def finish(self, plan: LaunchPlan, code: int) -> int:
        """After `launch`: e.g. write the report. Returns the final exit code."""
        return code


def rerun_failed_command(argv: list[str], mode: str, experiment_file: Path | str) -> str:
    """The command that reruns a launch's failed jobs: the launch's own command line (mode, experiment
    file, overrides, options; else the mode and the file) with --rerun-failed."""
    words = [word for word in argv if word not in ("--dry-run", "--force", "--rerun-failed")]
    return shlex.join(["bash", "run/launch_experiment.sh", *(words or [mode, str(experiment_file)]), "--rerun-failed"])
