"""Where everything lives in the experiments tree: the one owner of every file name.

    <root>/<name>/experiment.yaml            resolved experiment as last launched
    <root>/<name>/launches.jsonl             one line per launch
    <root>/<name>/launches/<time>/           plan.json (the jobs workers pull), pip-freeze.txt, git.diff
    <root>/<name>/jobs/<key>/config.json     the job's resolved configuration
    <root>/<name>/jobs/<key>/status.json     job and variant states, attempts, tracebacks
    <root>/<name>/jobs/<key>/.claim          which process runs the job now, with its heartbeat
    <root>/<name>/jobs/<key>/<variant>/      metrics.jsonl, results.json (written last), weights/, analysis/,
                                             tensorboard/<run>/ (event files)
    <root>/<name>/<backend>/                 what a backend keeps (slurm/: submitit's files and logs)
    <root>/<name>/study/                     a search: the Optuna journal, trial claims, trials.csv, best.yaml
    <root>/<name>/summary/                   tables and plots written by create-plots
    <root>/<name>/report/index.html          the HTML report
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from moelab.results.io import file_signature

# names a variant cannot take: they are files or folders of the job folder
JOB_FILE_NAMES = frozenset({"config.json", "status.json", ".claim", ".claim.takeover"})


@dataclass(frozen=True)
class ExperimentTree:
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def experiment_file(self) -> Path:
        return self.path / "experiment.yaml"

    @property
    def launches_file(self) -> Path:
        return self.path / "launches.jsonl"

    @property
    def launches_lock(self) -> Path:
        return self.path / ".launches.lock"

    def launch_folder(self, launch_id: str) -> Path:
        """Provenance of one launch, and the plan its workers pull jobs from."""
        return self.path / "launches" / launch_id

    def plan_file(self, launch_id: str) -> Path:
        return self.launch_folder(launch_id) / "plan.json"

    @property
    def jobs_dir(self) -> Path:
        return self.path / "jobs"

    def backend_dir(self, backend: str) -> Path:
        return self.path / backend

    @property
    def study(self) -> "StudyFiles":
        """A search's study (experiments with a `search:` section)."""
        return StudyFiles(self.path / "study")

    @property
    def summary_dir(self) -> Path:
        return self.path / "summary"

    @property
    def summary(self) -> "SummaryFiles":
        return SummaryFiles(self.summary_dir)

    @property
    def report_file(self) -> Path:
        return self.path / "report" / "index.html"

    def job(self, key: str) -> "JobTree":
        return JobTree(self.jobs_dir / key)

    def jobs(self) -> list["JobTree"]:
        return [JobTree(self.jobs_dir / key) for key in self.job_keys()]

    def job_keys(self) -> list[str]:
        """The keys of the jobs' folders, sorted, without making a path of each (a dashboard lists
        ten thousand every few seconds)."""
        try:
            with os.scandir(self.jobs_dir) as entries:  # scandir: no stat per entry, fast on large trees
                return sorted(e.name for e in entries if e.is_dir())
        except (FileNotFoundError, NotADirectoryError):
            return []


@dataclass(frozen=True)
class StudyFiles:
    """A search's study: Optuna's file journal (the trials, shared between nodes without a database),
    the lock askers take, a claim folder per running trial, and what search writes for the report."""

    path: Path

    @property
    def journal(self) -> Path:
        return self.path / "journal.log"

    def journal_torn_tail(self, stamp: str) -> Path:
        """The unfinished last record of the journal (its writer was killed mid-append), set aside."""
        return self.path / f"journal.torn-{stamp}.log"

    @property
    def ask_lock(self) -> Path:
        """Held while a worker reconciles lost trials and asks for the next one."""
        return self.path / ".ask.lock"

    @property
    def export_lock(self) -> Path:
        return self.path / ".export.lock"

    def trial(self, number: int) -> "TrialTree":
        return TrialTree(self.path / "trials" / str(number))

    @property
    def trials_csv(self) -> Path:
        """One row per trial: number, state, objective, parameters, epochs, jobs."""
        return self.path / "trials.csv"

    @property
    def summary(self) -> Path:
        """study.json: objective, counts by state, best trial, parameter importances, the space."""
        return self.path / "study.json"

    @property
    def best_experiment(self) -> Path:
        """The experiment with the best trial's point applied and `search:` removed, ready to run."""
        return self.path / "best.yaml"


@dataclass(frozen=True)
class TrialTree:
    """A running trial's claim: the worker that asked for the trial holds it until it tells the
    study how the trial ended (the same claims as jobs: results/claims.py)."""

    path: Path

    @property
    def key(self) -> str:
        return f"trial-{self.path.name}"

    @property
    def claim_file(self) -> Path:
        return self.path / ".claim"

    @property
    def claim_takeover_lock(self) -> Path:
        return self.path / ".claim.takeover"


@dataclass(frozen=True)
class SummaryFiles:
    path: Path

    @property
    def runs_csv(self) -> Path:
        return self.path / "runs.csv"

    @property
    def summary_csv(self) -> Path:
        return self.path / "summary.csv"

    @property
    def markdown(self) -> Path:
        return self.path / "summary.md"

    @property
    def latex(self) -> Path:
        return self.path / "summary.tex"

    @property
    def cache(self) -> Path:
        return self.path / ".cache.pkl"

    def plot(self, name: str, extension: str = "png") -> Path:
        return self.path / f"{name}.{extension}"

    def comparison(self, other: str, extension: str) -> Path:
        """`create-plots OTHER THIS --compare`: its table (csv, md) and plot (png, svg)."""
        return self.path / f"compare-{other}.{extension}"


@dataclass(frozen=True)
class JobTree:
    path: Path

    @property
    def key(self) -> str:
        return self.path.name

    @property
    def config_file(self) -> Path:
        return self.path / "config.json"

    @property
    def status_file(self) -> Path:
        return self.path / "status.json"

    @property
    def claim_file(self) -> Path:
        return self.path / ".claim"

    @property
    def claim_takeover_lock(self) -> Path:
        return self.path / ".claim.takeover"

    def variant(self, name: str) -> "VariantTree":
        return VariantTree(self.path / name)

    def sibling(self, key: str) -> "JobTree":
        """Another job of the same experiment."""
        return JobTree(self.path.parent / key)


@dataclass(frozen=True)
class VariantTree:
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def results_file(self) -> Path:
        return self.path / "results.json"

    @property
    def best_weights(self) -> Path:
        return self.path / "weights" / "best.pt"

    @property
    def last_checkpoint(self) -> Path:
        return self.path / "weights" / "last.pt"

    @property
    def tensorboard_dir(self) -> Path:
        """TensorBoard's event files, in one run folder named by the grid values (results/events.py)."""
        return self.path / "tensorboard"

    @property
    def curves_plot(self) -> Path:
        """The live curves a running variant redraws."""
        return self.path / "curves.png"

    @property
    def reconstruction(self) -> Path:
        """image_fit: the model's rendering of the whole image."""
        return self.path / "reconstruction.png"

    @property
    def target_image(self) -> Path:
        """image_fit: the image the model fits, at the resolution it is fitted at."""
        return self.path / "target.png"

    @property
    def analysis(self) -> "AnalysisFiles":
        return AnalysisFiles(self.path / "analysis")

    def is_done(self) -> bool:
        return self.results_file.is_file()


@dataclass(frozen=True)
class AnalysisFiles:
    """What the experts did, written next to each variant's results (see train/analysis.py)."""

    path: Path

    @property
    def inference(self) -> Path:
        return self.path / "inference.json"

    @property
    def utilisation(self) -> Path:
        return self.path / "utilisation.csv"

    @property
    def gates_per_batch(self) -> Path:
        return self.path / "gates_per_batch.csv"

    @property
    def test_routing(self) -> Path:
        return self.path / "test_routing.csv"

    @property
    def class_expert(self) -> Path:
        return self.path / "class_expert.csv"

    @property
    def token_type_expert(self) -> Path:
        """Language models: test tokens of each byte type routed first to each expert, per MoE layer."""
        return self.path / "token_type_expert.csv"

    @property
    def expert_class_accuracy(self) -> Path:
        return self.path / "expert_class_accuracy.csv"

    @property
    def confusion(self) -> Path:
        return self.path / "confusion.csv"

    @property
    def roc(self) -> Path:
        """One-vs-rest ROC curve points of every class (classification)."""
        return self.path / "roc.csv"


def job_files_signature(job: JobTree, variant_names) -> tuple:
    """The io.file_signature of every file a job's state and progress are read from (config.json,
    status.json, each variant's results.json and metrics.jsonl), None for an absent one, and last
    whether a claim file exists. Taken before reading them, an equal signature later means none was
    replaced or appended to since (each is written atomically or appended): what was read from them
    still holds. Of the claim only its existence: its holder touches it every heartbeat, and whether
    it is alive is a question of time (claims.is_claimed). Built on plain strings, not Paths: a
    dashboard takes it for every job of a large tree."""
    base = str(job.path)
    names = ["config.json", "status.json"]
    for variant in variant_names:
        names += [f"{variant}/results.json", f"{variant}/metrics.jsonl"]
    return (*(file_signature(f"{base}/{name}") for name in names), os.path.lexists(f"{base}/.claim"))


def set_aside(path: Path) -> Path:
    """Rename a damaged record (file or folder) to `<name>.damaged-<UTC stamp>` beside it, kept for
    a look instead of deleted, so that what replaces it is written fresh; returns the new path."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    path.rename(aside)
    return aside
