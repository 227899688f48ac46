"""The study: Optuna's file journal in the experiment folder, asked for trials by any worker.

Optuna's journal has no heartbeat: a trial whose worker died would stay RUNNING forever. So the
worker that asks for a trial also claims it (results/claims.py, the heartbeat jobs use) and holds
the claim until it tells the study how the trial ended. Before every ask, under a file lock beside
the journal, trials that are RUNNING with neither a live trial claim nor a live claim on any of
their jobs are lost: they are told to the study as failed and their point is enqueued again (at most
MAX_RETRIES times in a row), so the next ask retries it and its jobs resume from their checkpoints.
A lost trial does not count towards n_trials; a trial that failed by its own error (a job raised,
the objective is not a number) does, so a study always ends.

Samplers are made afresh for every ask with a seed derived from the search seed and the trial's
number: the same seed gives the same points whichever worker asks, and parallel workers never share
a random stream.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import optuna
from filelock import FileLock
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.trial import FrozenTrial, TrialState

from moelab.config import Experiment
from moelab.results.claims import Claim, is_claimed, try_claim
from moelab.results.errors import DamagedRecord
from moelab.results.io import atomic_write
from moelab.results.tree import ExperimentTree, StudyFiles
from moelab.search.space import Point, distributions, epoch_values, objective, point_jobs

STUDY_NAME = "search"  # one study per experiment folder
MAX_RETRIES = 2  # a point whose trials keep getting lost is then given up (a new point takes its slot)
FAILURE = "failure"  # user attribute: why a trial failed by its own error (lost trials have none)

optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass(frozen=True)
class StudyProgress:
    n_trials: int
    complete: int = 0
    pruned: int = 0
    failed: int = 0  # by their own error: they count towards n_trials
    lost: int = 0  # their worker died or was interrupted: retried, not counted
    running: int = 0  # held by a live worker
    waiting: int = 0  # lost points enqueued for a retry

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.failed

    @property
    def to_start(self) -> int:
        """Trials still to be asked for before the study reaches n_trials."""
        return max(0, self.n_trials - self.finished - self.running)

    def describe(self) -> str:
        return (f"{self.finished} of {self.n_trials} trials finished ({self.complete} complete, {self.pruned} pruned, "
                f"{self.failed} failed)" + (f", {self.running} running" if self.running else "")
                + (f", {self.lost} lost and retried" if self.lost else ""))


class StudySession:
    """One process's handle on an experiment's study."""

    def __init__(self, tree: ExperimentTree, experiment: Experiment):
        self.tree, self.experiment = tree, experiment
        self.search = experiment.doc["search"]
        self.files = tree.study
        self.distributions = distributions(self.search["space"])
        self._storage: JournalStorage | None = None

    @property
    def n_trials(self) -> int:
        """The trials the study runs: n_trials, and for the grid sampler no more than its points."""
        if self.search["sampler"] == "grid":
            points = math.prod(len(entry["choice"]) for entry in self.search["space"].values())
            return min(self.search["n_trials"], points)
        return self.search["n_trials"]

    # -- reading ---------------------------------------------------------------------------------

    def exists(self) -> bool:
        return self.files.journal.exists()

    @property
    def storage(self) -> JournalStorage:
        if self._storage is None:
            self.files.path.mkdir(parents=True, exist_ok=True)
            check_journal(self.files)
            self._storage = JournalStorage(JournalFileBackend(str(self.files.journal)))
        return self._storage

    def load(self, sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
        return optuna.load_study(study_name=STUDY_NAME, storage=self.storage,
                                 sampler=sampler or optuna.samplers.RandomSampler(), pruner=self.pruner())

    def trials(self) -> list[FrozenTrial]:
        if not self.exists():
            return []
        try:
            return self.load().get_trials(deepcopy=False)
        except KeyError:  # a journal without the study: a launch stopped while creating it
            return []

    def progress(self) -> StudyProgress:
        """Where the study stands (reads only: lost trials not yet told count as lost)."""
        return self.progress_of(self.trials())

    def has_live_trials(self) -> bool:
        return any(t.state is TrialState.RUNNING and not self.is_lost(t) for t in self.trials())

    def mismatch(self) -> str | None:
        """Why this experiment cannot continue the study in its folder, or None."""
        if not self.exists():
            return None
        try:
            study = self.load()
        except KeyError:
            return None
        found = study.user_attrs.get("fingerprint")
        if found is not None and found != self.fingerprint():
            return (f"{self.files.path} holds a study of another search (its space, objective, grid or training "
                    "settings differ from this experiment's); give the experiment another name, or move that "
                    "folder away to start over")
        return None

    def fingerprint(self) -> str:
        """What makes trials of two launches comparable: everything but the budget and the resources."""
        doc = self.experiment.doc
        keep = {"space": self.search["space"], "objective": self.search["objective"], "grid": doc["grid"],
                **{key: doc[key] for key in ("seed", "data", "train", "variants")}}
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]

    # -- writing ---------------------------------------------------------------------------------

    def create(self) -> None:
        """Create the study (a relaunch finds it and continues it)."""
        self.files.path.mkdir(parents=True, exist_ok=True)
        with FileLock(self.files.ask_lock):
            study = optuna.create_study(study_name=STUDY_NAME, storage=self.storage, load_if_exists=True,
                                        direction=self.search["objective"]["direction"])
            if "fingerprint" not in study.user_attrs:
                study.set_user_attr("fingerprint", self.fingerprint())
                study.set_user_attr("objective", self.search["objective"])

    def next_trial(self) -> "TrialRun | None":
        """Reconcile lost trials, then ask for the next trial and claim it; None once the study has
        n_trials finished or running."""
        with FileLock(self.files.ask_lock):
            study = self.load()
            self._reconcile(study)
            trials = study.get_trials(deepcopy=False)
            if self.progress_of(trials).to_start == 0:
                return None
            study.sampler = self.sampler(len(trials))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                trial = study.ask(self.distributions)
            # every parameter is sampled at the ask; the grid sampler's after-trial hook would stop
            # the study at the tell, which Optuna allows only inside its own optimize loop
            study.sampler = optuna.samplers.RandomSampler()
            point = point_jobs(self.experiment, trial.params)
            trial.set_user_attr("jobs", [job.key for job in point.jobs])
            claim = try_claim(self.files.trial(trial.number))
            if claim is None:  # a fresh number nobody else can hold; a leftover folder of a removed study
                raise RuntimeError(f"{self.files.trial(trial.number).path} is claimed by a live process")
            return TrialRun(self, study, trial, claim, point)

    def sampler(self, number: int) -> optuna.samplers.BaseSampler:
        seed = int(np.random.SeedSequence([self.search["seed"], number]).generate_state(1)[0])
        kind = self.search["sampler"]
        if kind == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if kind == "grid":  # its seed shuffles the grid, which every ask must see the same
            return optuna.samplers.GridSampler({k: v["choice"] for k, v in self.search["space"].items()},
                                               seed=self.search["seed"])
        startup = self.search["startup_trials"] or min(10, max(2, self.search["n_trials"] // 4))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, multivariate=True,
                                              constant_liar=True)

    def pruner(self) -> optuna.pruners.BasePruner:
        pruner = self.search["pruner"]
        if pruner["name"] == "median":
            return optuna.pruners.MedianPruner(n_startup_trials=pruner["startup_trials"],
                                               n_warmup_steps=pruner["warmup_epochs"])
        if pruner["name"] == "asha":
            return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, pruner["warmup_epochs"]),
                                                          reduction_factor=pruner["reduction_factor"])
        return optuna.pruners.NopPruner()

    # -- lost trials -----------------------------------------------------------------------------

    def is_lost(self, trial: FrozenTrial) -> bool:
        """RUNNING in the journal, with neither a live trial claim nor a live claim on any of its jobs."""
        if is_claimed(self.files.trial(trial.number)):
            return False
        return not any(is_claimed(self.tree.job(key)) for key in trial.user_attrs.get("jobs", []))

    def _reconcile(self, study: optuna.Study) -> None:
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if not self.is_lost(trial):
                continue
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            retries = trial.user_attrs.get("retries", 0)
            if retries < MAX_RETRIES:
                study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number, "retries": retries + 1})

    def progress_of(self, trials: list[FrozenTrial]) -> StudyProgress:
        counts = dict(complete=0, pruned=0, failed=0, lost=0, running=0, waiting=0)
        for trial in trials:
            if trial.state is TrialState.COMPLETE:
                counts["complete"] += 1
            elif trial.state is TrialState.PRUNED:
                counts["pruned"] += 1
            elif trial.state is TrialState.FAIL:
                counts["failed" if FAILURE in trial.user_attrs else "lost"] += 1
            elif trial.state is TrialState.WAITING:
                counts["waiting"] += 1
            elif self.is_lost(trial):
                counts["lost"] += 1
            else:
                counts["running"] += 1
        return StudyProgress(self.n_trials, **counts)


def check_journal(files: StudyFiles) -> None:
    """Read the journal before Optuna does, under the lock its writers take. A last record cut short
    (a worker killed mid-append) is set aside, so the next append starts on a line of its own instead of
    gluing onto it (which Optuna would then refuse to read); any other line that is not a record stops
    the search with DamagedRecord: guessing past it could tell a trial's result to another trial."""
    journal = files.journal
    if not journal.exists():
        return
    if not journal.is_file():
        raise DamagedRecord(journal, "is not a file", "move it aside to start the study afresh (finished jobs are "
                                                      "reused)")
    lock = JournalFileSymlinkLock(str(journal))
    lock.acquire()
    try:
        data = journal.read_bytes()
        complete = data.rfind(b"\n") + 1
        if complete < len(data):
            aside = files.journal_torn_tail(time.strftime("%Y%m%d-%H%M%S"))
            atomic_write(aside, lambda f: f.write(data[complete:]), mode="wb")
            os.truncate(journal, complete)
            print(f"warning: {journal}: its last record was cut short (a worker stopped while writing it); set aside "
                  f"as {aside.name}, the study goes on from the records before it", file=sys.stderr, flush=True)
        for number, line in enumerate(data[:complete].splitlines(), start=1):
            try:
                readable = isinstance(json.loads(line.decode("utf-8")), dict)
            except (UnicodeDecodeError, ValueError):
                readable = False
            if not readable:
                raise DamagedRecord(journal, f"line {number} is not a study record (the file was damaged or "
                                             "written by something else)",
                                    "the search cannot go on from it: restore the file from a backup, or move it "
                                    "aside to start the study afresh (finished jobs are reused, not retrained)")
    finally:
        lock.release()


@dataclass
class TrialRun:
    """A trial this process asked for and holds: report its jobs' epochs, then tell how it ended."""

    session: StudySession
    study: optuna.Study
    trial: optuna.Trial
    claim: Claim
    point: Point
    told: str | None = None  # how the trial ended: complete, pruned or failed
    reported: set[int] = field(default_factory=set)  # steps reported to the study

    @property
    def number(self) -> int:
        return self.trial.number

    @property
    def objective_section(self) -> dict:
        return self.session.search["objective"]

    def describe(self) -> str:
        values = " ".join(f"{k}={_short(v)}" for k, v in self.point.params.items())
        retry = self.trial.user_attrs.get("retry_of")
        return f"trial {self.number}{f' (retry of {retry})' if retry is not None else ''}: {values}"

    def _step(self, index: int, epoch: int) -> int:
        # the jobs of a trial (e.g. its seeds) run one after another; every trial has the same jobs,
        # so job i's epoch e is the same step in every trial and the pruner compares like with like
        return index * self.point.jobs[index].config["train"]["epochs"] + epoch

    def report(self, index: int, epoch: int, value: float) -> bool:
        """Report one epoch of job `index`'s objective variant; True when the pruner stops the trial."""
        step = self._step(index, epoch)
        if step not in self.reported:  # a resumed job trains again the epochs after its last checkpoint
            self.trial.report(value, step)
            self.reported.add(step)
        return self.trial.should_prune()

    def replay(self, index: int) -> bool:
        """Report the epochs job `index` has already trained (a job reused from an earlier trial, or
        resumed); True when the pruner stops the trial on them."""
        found = epoch_values(self.session.tree, self.point.jobs[index].key, self.objective_section["variant"],
                             self.objective_section["metric"])
        # as if it trained now: the first epoch at which the pruner would have stopped it stops it
        return any(self.report(index, epoch, value) for epoch, value in found)

    def prune_hook(self, index: int) -> Callable[[str, list[dict]], bool]:
        """train.job.run_job's `should_prune` for job `index`: reports the objective variant's epochs."""
        variant, metric = self.objective_section["variant"], self.objective_section["metric"]

        def should_prune(name: str, history: list[dict]) -> bool:
            if name != variant or not isinstance(history[-1].get(metric), (int, float)):
                return False
            return self.report(index, int(history[-1]["epoch"]), float(history[-1][metric]))

        return should_prune

    def complete(self) -> float:
        """Tell the study the objective over the trial's jobs (failed when it is not a number)."""
        value = objective(self.session.tree, [job.key for job in self.point.jobs], self.objective_section)
        if math.isnan(value):
            self.fail(f"{self.objective_section['metric']} of {self.objective_section['variant']} is not a number "
                      "(the training diverged)")
        else:
            self.study.tell(self.trial, value)
            self.told = "complete"
        return value

    def prune(self) -> None:
        self.study.tell(self.trial, state=TrialState.PRUNED)
        self.told = "pruned"

    def fail(self, reason: str) -> None:
        self.trial.set_user_attr(FAILURE, reason)
        self.study.tell(self.trial, state=TrialState.FAIL)
        self.told = "failed"

    def release(self) -> None:
        """Give up the trial's claim: told, or lost (the next ask retries it)."""
        self.claim.release()
        try:
            self.claim.job.path.rmdir()  # the claim's folder: only a running trial has one
        except OSError:
            pass


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
